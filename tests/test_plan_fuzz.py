"""Fuzzing `migrate validate --skip-env`: whatever text a plan file holds, the answer is exit 0, or exit 2 with
every problem located as `path:line:col:` (line and column from 1), quickly, and never a traceback or an
"internal error". Inputs are generated YAML documents, raw text full of YAML's sharp edges, and the shipped
plans with lines deleted, duplicated, swapped, values retyped and garbage inserted.

Derandomized, so CI runs the same examples every time; regressions found here are pinned in test_plan_loader."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from ruamel.yaml import YAML
from typer.testing import CliRunner

from helpers import cli_process
from migrate.cli import app
from migrate.plan.model import Plan

ROOT = Path(__file__).parent.parent
SHIPPED = [p.read_text(encoding="utf-8") for p in
           [*sorted((ROOT / "plans").glob("*.yaml")), ROOT / "migrate" / "demo" / "plan.yaml"]]
SECONDS_PER_CALL = 2.0
HUGE = "1" + "0" * 400  # more than a float holds
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

PLAN_KEYS = ["version", "component", "description", "change", "state", "connections", "databases", "blobs",
             "vms", "dual_run", "cutover", "rollback", "depends_on", "url", "path", "container", "azure", "name",
             "source", "target", "tables", "key", "incremental", "column", "overlap", "interval", "gates",
             "max_lag", "steps", "run", "timeout", "health", "status", "window", "chunk_rows", "delete",
             "max_retained_wal", "throttle", "bytes_per_second", "rows_per_second", "port", "concurrency"]
SHARP = ["\t", "&a ", "*a", "&", "*", "!!python/object:os.system ", "!!python/object/apply:os.system ", "!!binary ",
         "!!set ", "!!omap ", "!!timestamp ", "!ruby ", "? ", ": ", "- ", "-", ":", "{", "}", "[", "]", ",", "#",
         "'", '"', "|", ">", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "---\n", "...\n", "\n", "  ", "\ufeff",
         "\x00", "\x01", "\x07", "\x1b[31m", "\x7f", "\x85", "\u2028", "\ud7ff", "\ufffe", "${", "}", "${X}",
         "\\", "~", "null", "yes", "1e999", ".nan", "0x1F", "<<: ", "k" * 3000]


def scalars() -> st.SearchStrategy[object]:
    return st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.sampled_from([10**400, -10**400]), st.text(max_size=20),
                     st.sampled_from(["30s", "-5m", "${X}", "*", "sqlite:///x.db", "1", "10 GiB", HUGE + "s"]))


def keys() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(PLAN_KEYS), st.text(max_size=12), st.just("k" * 2000))


def documents() -> st.SearchStrategy[object]:
    """Nested mappings, lists and scalars, often starting like a plan so that they reach the model."""
    tree = st.recursive(scalars(), lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys(), inner,
                                                                                               max_size=5),
                        max_leaves=25)
    planlike = st.fixed_dictionaries({"version": st.sampled_from([1, 1, "1", 2]), "component": st.text(max_size=8)},
                                     optional={k: tree for k in PLAN_KEYS[2:12]})
    return st.one_of(planlike, tree)


def tricky_scalars() -> st.SearchStrategy[object]:
    """What a value may be written as, right or wrong: numbers too large for a float, not finite, negative;
    durations and sizes, right and overflowing; `${VAR}`; the wrong shape."""
    return st.one_of(scalars(), st.sampled_from([float("inf"), float("-inf"), float("nan"), -1, 0, 2**63, HUGE,
                                                 f"{HUGE} GiB", f"{HUGE}ms", "1.5", "mon-fri", "22:00-04:00",
                                                 "Europe/London", "postgresql", [], {}, [1], {"a": 1}]))


def values_for(annotation: Any) -> st.SearchStrategy[object]:
    """Values for a field of the plan model, its own shape mostly, any scalar at the leaves (so new fields are
    fuzzed as soon as the model has them)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return st.fixed_dictionaries({}, optional={name: st.deferred(lambda f=field: values_for(f.annotation))
                                                   for name, field in annotation.model_fields.items()})
    if origin is Annotated:
        return values_for(args[0])
    if origin is list:
        return st.lists(values_for(args[0]), max_size=2) | tricky_scalars()
    if origin is dict:
        return st.dictionaries(st.sampled_from(["a", "b"]), values_for(args[1]), max_size=2) | tricky_scalars()
    if origin in (Union, UnionType):
        return st.one_of([values_for(a) for a in args if a is not type(None)] + [tricky_scalars()])
    return tricky_scalars()


def rendered(document: object) -> str:
    import io

    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(document, out)
    return out.getvalue()


raw_texts = st.lists(st.one_of(st.sampled_from(SHARP), st.sampled_from(PLAN_KEYS), st.text(max_size=6),
                               st.tuples(st.sampled_from(["- ", "[", "{", "? ", "  ", "a: "]), st.integers(1, 1500)
                                         ).map(lambda t: t[0] * t[1])),
                     max_size=40).map("".join)

VALUES = ["[]", "{}", "1", "-1", "0", "true", "null", "~", '"x"', "''", "1.5e300", ".nan", ".inf", "-.inf", HUGE,
          f"'{HUGE} GiB'", f"{HUGE}ms", "10 GiB", "${X}", "${",
          "&a x", "*a", "!!python/object:os.system x", "[a, b]", "{a: 1}", "30", "30s", "99999999999999999999999",
          "2024-01-01", "|\n  text", "'unterminated", "\t", "k" * 500]


@st.composite
def mutated_plans(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(SHIPPED)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        at = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "retype", "garbage", "indent", "add"]))
        if kind == "delete":
            del lines[at]
        elif kind == "duplicate":
            lines.insert(at, lines[at])
        elif kind == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif kind == "retype" and ": " in lines[at]:
            head = lines[at].rsplit(": ", 1)[0]
            lines[at] = f"{head}: {draw(st.sampled_from(VALUES))}"
        elif kind == "garbage":
            column = draw(st.integers(0, len(lines[at])))
            garbage = draw(st.one_of(st.sampled_from(SHARP), st.text(min_size=1, max_size=4)))
            lines[at] = lines[at][:column] + garbage + lines[at][column:]
        elif kind == "add":  # a key beside this line's, with any value
            indent = lines[at][:len(lines[at]) - len(lines[at].lstrip(" -"))].replace("-", " ")
            lines.insert(at + 1, f"{indent}{draw(st.sampled_from(PLAN_KEYS))}: {draw(st.sampled_from(VALUES))}")
        elif kind == "indent":
            lines[at] = draw(st.sampled_from([" ", "  ", "\t", "    "])) + lines[at]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each input is written: in a plans/ folder beside the real runbooks, as a shipped plan sits."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "plans").mkdir()
    (root / "runbooks").symlink_to(ROOT / "runbooks")
    return root / "plans" / "fuzz.yaml"


def check_answer(path: Path, code: int, output: str, seconds: float, limit: float = SECONDS_PER_CALL) -> None:
    """The contract every input must meet, whatever it holds."""
    assert "Traceback" not in output and "internal error" not in output, output
    assert code in (0, 2), output
    assert seconds < limit, f"{seconds:.1f}s"
    lines = output.splitlines()
    summary = re.fullmatch(r"1 plan\(s\), (\d+) problem\(s\)", lines[-1]) if lines else None
    assert summary, output
    problems = lines[:-1]
    if code == 0:
        assert summary.group(1) == "0" and len(problems) == 1 and problems[0].startswith("ok   "), output
        return
    assert int(summary.group(1)) == len(problems) >= 1, output  # one line per problem: no message spans lines
    located = re.compile(re.escape(str(path)) + r":(\d+):(\d+): .")
    for problem in problems:
        match = located.match(problem)
        assert match and int(match.group(1)) >= 1 and int(match.group(2)) >= 1, problem


def validate_in_process(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    started, cpu_started = time.monotonic(), time.process_time()
    with warnings.catch_warnings(record=True) as warned:  # pytest would keep them out of the output
        warnings.simplefilter("always")
        result = CliRunner().invoke(app, ["validate", "--skip-env", str(path)], catch_exceptions=True)
    cpu_seconds = time.process_time() - cpu_started  # the bound, unmoved by other jobs on a busy machine
    assert time.monotonic() - started < 5 * SECONDS_PER_CALL  # and nothing waits
    assert not warned, [str(w.message) for w in warned]  # a real run would print them among the problems
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    check_answer(path, result.exit_code, result.stdout + result.stderr, cpu_seconds)


@pytest.mark.slow
@FUZZ
@given(document=documents())
def test_generated_yaml_documents(plan_file: Path, document: object) -> None:
    validate_in_process(plan_file, rendered(document))


@pytest.mark.slow
@FUZZ
@given(document=values_for(Plan).map(lambda fields: {**fields, "version": 1, "component": "fuzz"}))
def test_every_field_of_the_model_with_any_value(plan_file: Path, document: dict[str, object]) -> None:
    validate_in_process(plan_file, rendered(document))


@pytest.mark.slow
@FUZZ
@given(text=raw_texts)
def test_raw_text_with_yaml_sharp_edges(plan_file: Path, text: str) -> None:
    validate_in_process(plan_file, text)


@pytest.mark.slow
@FUZZ
@given(content=st.binary(max_size=60).map(lambda b: b"version: 1\ncomponent: x\n" + b))
def test_bytes_that_are_not_utf8(plan_file: Path, content: bytes) -> None:
    validate_in_process(plan_file, content)


@pytest.mark.slow
@settings(FUZZ, max_examples=300)
@given(text=mutated_plans())
def test_mutated_shipped_plans(plan_file: Path, text: str) -> None:
    validate_in_process(plan_file, text)


@pytest.mark.parametrize("text", [
    "\ufeffversion: 1\ncomponent: x\x07\nconnections: {a: {path: a}}\n\t- !!python/object:os.system [ls]\n",
    SHIPPED[0].replace("interval: 30s", "interval: &a [30s]").replace("max_lag: 60s", "max_lag: &a 60s"),
])  # (a library warning printed among the problems shows only in a real process)
def test_a_real_process_keeps_the_contract(plan_file: Path, text: str) -> None:
    plan_file.write_text(text, encoding="utf-8")
    started = time.monotonic()
    done = cli_process("validate", "--skip-env", str(plan_file), timeout=30)
    check_answer(plan_file, done.returncode, done.stdout + done.stderr, time.monotonic() - started,
                 limit=SECONDS_PER_CALL + 8.0)  # with the interpreter's start-up
