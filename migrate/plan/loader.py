"""Load a plan: YAML with line numbers kept, `${VAR}` from the environment, pydantic, then semantic checks.

Every problem is reported as `file:line:col: key.path: message`, all of them at once.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import shlex
import warnings
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLFutureWarning, YAMLWarning
from ruamel.yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    Event,
    MappingStartEvent,
    ScalarEvent,
)
from ruamel.yaml.reader import ReaderError

from migrate.errors import PlanError, PlanProblem
from migrate.plan.model import ENV_REF_PATTERN, Plan, Step
from migrate.plan.places import place
from migrate.redact import redact, register_secret

_ENV_REF = re.compile(ENV_REF_PATTERN)
PLAN_SUFFIXES = (".yaml", ".yml")
BUILTIN_PREFIX = "migrate:"
BUILTIN_STEPS = ("migrate:final-sync", "migrate:final-verify", "migrate:sequences")


@dataclass(frozen=True)
class LoadedPlan:
    """A validated plan together with where it came from."""

    plan: Plan
    path: Path
    fingerprint: str  # sha256 of the file as written (before interpolation, so no secret feeds it)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def state_url(self) -> str:
        if self.plan.state:
            return self.plan.state
        return f"sqlite:///{self.base_dir / '.migrate' / (self.plan.component + '.db')}"

    def resolve(self, relative: str) -> Path:
        """A path written in the plan, relative to the plan's folder."""
        path = Path(relative).expanduser()
        return path if path.is_absolute() else (self.base_dir / path)

    def step_command(self, step: Step) -> tuple[list[str], Path]:
        """The argv and working folder of a runbook step (see `find_step_script`)."""
        argv = shlex.split(step.run)
        script, cwd = find_step_script(self.base_dir, argv[0])
        return [str(script), *argv[1:]], cwd


def find_step_script(base_dir: Path, first_word: str) -> tuple[Path, Path]:
    """Resolve a step's script: relative to the plan's folder, then its parent (plans/ beside runbooks/).

    Returns (script, working folder); raises FileNotFoundError when neither holds it.
    """
    candidate = Path(first_word).expanduser()
    if candidate.is_absolute():
        if candidate.exists():
            return candidate, candidate.parent
        raise FileNotFoundError(first_word)
    for root in (base_dir, base_dir.parent):
        if (root / candidate).exists():
            return (root / candidate).resolve(), root.resolve()
    if "/" not in first_word:  # a command on PATH, like `true` or `echo`
        import shutil

        found = shutil.which(first_word)
        if found:
            return Path(found), base_dir
    raise FileNotFoundError(first_word)


def plan_files(paths: list[Path]) -> list[Path]:
    """Expand folders into the plan files they hold (sorted); keep files as given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix in PLAN_SUFFIXES and p.is_file()))
        else:
            out.append(path)
    return out


def load_plan(path: Path | str, env: dict[str, str] | None = None, require_env: bool = True) -> LoadedPlan:
    """Load and fully validate one plan file; raise PlanError listing every problem.

    With `require_env=False` an unset `${VAR}` is not an error (CI linting plans without their secrets).
    """
    path = Path(path)
    env = dict(os.environ) if env is None else env
    shown = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PlanError([PlanProblem(shown, 0, 0, "", "no such plan file")]) from None
    except OSError as exc:
        raise PlanError([PlanProblem(shown, 0, 0, "", f"cannot read plan: {exc}")]) from None
    try:  # newlines as `read_text` gives them, so the fingerprint of a plan is what it always was
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8")
        line, col = _line_and_column(before, len(before))
        raise PlanError([PlanProblem(shown, line, col, "", f"byte 0x{data[exc.start]:02x} is not UTF-8 text: "
                                     "save the plan as UTF-8")]) from None
    try:
        with warnings.catch_warnings():  # the library's advice (a reused &anchor, YAML 1.1 floats) is not ours
            warnings.simplefilter("ignore", YAMLWarning)
            warnings.simplefilter("ignore", YAMLFutureWarning)
            _refuse_hostile_yaml(text, shown)
            tree = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise PlanError([PlanProblem(shown, line, col, "", f"YAML syntax: {exc.problem or exc}")]) from None
    except ReaderError as exc:  # a character YAML does not allow anywhere (NUL, most control characters)
        line, col = _line_and_column(text, exc.position)
        raise PlanError([PlanProblem(shown, line, col, "", f"YAML syntax: character {chr(exc.character)!r} "
                                     "is not allowed in a YAML file")]) from None
    if not isinstance(tree, CommentedMap):
        raise PlanError([PlanProblem(shown, 1, 1, "", "a plan is a YAML mapping (version, component, ...)")])

    checker = _PlanChecker(tree, shown, env, require_env)
    data = checker.interpolate(tree, ())
    plan: Plan | None = None
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        standing_in = checker.stand_ins_refused(exc)
        if not standing_in:
            checker.add_validation_errors(exc)
        else:  # an unset ${VAR} stood in for a number, boolean or choice: check the rest with defaults there
            try:
                plan = Plan.model_validate(_without(data, standing_in))
            except ValidationError as again:
                checker.add_validation_errors(again)
    if plan is not None:
        checker.check_semantics(plan, path.parent)
    if checker.problems:
        raise PlanError(sorted(checker.problems, key=lambda p: (p.line, p.column)))
    assert plan is not None
    return LoadedPlan(plan=plan, path=path.resolve(), fingerprint=hashlib.sha256(text.encode()).hexdigest())


_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # as the YAML reader counts lines


def _line_and_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of the character at `index`, counted as the YAML library counts them."""
    breaks = list(_LINE_BREAK.finditer(text, 0, index))
    return len(breaks) + 1, index - (breaks[-1].end() if breaks else 0) + 1


MAX_NESTING = 64  # a plan is a few levels deep; deeper input is hostile (or a mistake) and costly to parse


def _refuse_hostile_yaml(text: str, shown: str) -> None:
    """Refuse, in linear time and before the YAML constructor sees it, what would make loading hang or crash:
    nesting deeper than MAX_NESTING (flow brackets, indentation or `- - -` on one line); aliases (`*name`: a few
    lines of nested aliases expand to billions of nodes); a mapping or list used as a key (nested ones take
    exponential time to hash); and tags (`!!set`, `!!python/object`, `!!str`, `!custom`), which a plan never
    needs and which reach corners of the YAML library that crash or hand back objects of its own."""
    depth, quote = 0, ""
    line, col = 1, 0
    for char in text:
        col += 1
        if char == "\n":
            line, col, quote = line + 1, 0, ""
        elif quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#":
            quote = "\n"  # a comment runs to the end of the line
        elif char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                raise PlanError([PlanProblem(shown, line, col, "", f"nested deeper than {MAX_NESTING} levels")])
        elif char in "]}":
            depth = max(0, depth - 1)
    for number, row in enumerate(text.split("\n"), start=1):
        indent = len(row) - len(row.lstrip(" "))
        if indent > 2 * MAX_NESTING:
            raise PlanError([PlanProblem(shown, number, 1, "", f"nested deeper than {MAX_NESTING} levels")])
    open_nodes: list[list[int]] = []  # per open mapping or list: [is a mapping, nodes seen in it]
    for event in YAML(typ="safe").parse(text):  # the events alone: the faster parser will do
        message = _hostile_event(event, open_nodes)
        if message:
            mark = event.start_mark
            raise PlanError([PlanProblem(shown, mark.line + 1, mark.column + 1, "", message)])


def _hostile_event(event: Event, open_nodes: list[list[int]]) -> str | None:
    """Why this parser event has no place in a plan, if it has none; keeps `open_nodes` up to date."""
    if isinstance(event, AliasEvent):
        return "YAML aliases (*name) are not allowed in a plan: write the value out"
    if isinstance(event, CollectionStartEvent | ScalarEvent) and event.tag is not None:
        return (f"YAML tags ({event.tag.replace('tag:yaml.org,2002:', '!!')}) are not allowed in a plan: write the "
                "value plainly (in quotes for text)")
    if isinstance(event, CollectionStartEvent):
        if open_nodes and open_nodes[-1][0] and open_nodes[-1][1] % 2 == 0:
            return "a key must be a name, not a mapping or a list"
        open_nodes.append([isinstance(event, MappingStartEvent), 0])
        if len(open_nodes) > MAX_NESTING:
            return f"nested deeper than {MAX_NESTING} levels"
    elif isinstance(event, CollectionEndEvent | ScalarEvent):
        if isinstance(event, CollectionEndEvent):
            open_nodes.pop()
        if open_nodes:
            open_nodes[-1][1] += 1
    return None


def _key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _encoded_for(template: str, ref: re.Match[str], value: str) -> str:
    """`value` as it must be written where `ref` sits: percent-encoded in a URL's user:password part and in its
    query (a password with `@`, `#` or `/` would otherwise change what the URL means, and leak as a host name),
    verbatim anywhere else. The encoded form is a secret too."""
    before, after = template[:ref.start()], template[ref.end():]
    if "://" not in before:
        return value
    authority_before = before.split("://", 1)[1]
    in_userinfo = not re.search(r"[/?#@]", authority_before) and "@" in re.split(r"[/?#]", after, maxsplit=1)[0]
    if not (in_userinfo or "?" in authority_before):
        return value
    encoded = quote(value, safe="")
    register_secret(encoded)
    return encoded


class _PlanChecker:
    """Collects every problem of one plan file, each located to its line and column."""

    def __init__(self, tree: CommentedMap, shown: str, env: dict[str, str], require_env: bool = True) -> None:
        self.tree = tree
        self.shown = shown
        self.env = env
        self.require_env = require_env
        self.problems: list[PlanProblem] = []
        self.unset: set[tuple] = set()  # where an unset ${VAR} was replaced by its stand-in

    def add(self, loc: tuple, message: str, at_key: bool = False) -> None:
        line, col = self.locate(loc, at_key)
        self.problems.append(PlanProblem(self.shown, line, col, _key_path(loc), redact(message)))

    def locate(self, loc: tuple, at_key: bool = False) -> tuple[int, int]:
        """1-based line and column of the node at `loc`, or of its nearest existing parent."""
        node: Any = self.tree
        line, col = 0, 0
        for i, part in enumerate(loc):
            if isinstance(node, CommentedMap) and part in node:
                line, col = node.lc.key(part) if (at_key and i == len(loc) - 1) else node.lc.value(part)
                node = node[part]
            elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
                line, col = node.lc.item(part)
                node = node[part]
        return line + 1, col + 1

    # -- ${VAR} --

    def interpolate(self, node: Any, loc: tuple) -> Any:
        if isinstance(node, CommentedMap):
            return {k: self.interpolate(v, (*loc, k)) for k, v in node.items()}
        if isinstance(node, CommentedSeq):
            return [self.interpolate(v, (*loc, i)) for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            return _ENV_REF.sub(lambda m: _encoded_for(node, m, self._env_value(m.group(1), loc)), node)
        return node

    def _env_value(self, name: str, loc: tuple) -> str:
        if name not in self.env:
            if self.require_env:
                self.add(loc, f"environment variable {name} is not set")
            self.unset.add(loc)
            return f"unset-{name}"  # a stand-in that keeps later checks from piling on
        register_secret(self.env[name])
        return self.env[name]

    # -- pydantic --

    def stand_ins_refused(self, exc: ValidationError) -> set[tuple]:
        """Where the model refused the stand-in of an unset variable (with `--skip-env`, `chunk_rows: ${CHUNK_ROWS}`
        is no mistake): those places, each a mapping key."""
        if self.require_env:
            return set()
        locs = [tuple(error["loc"]) for error in exc.errors(include_input=False, include_url=False)]
        return {at for at in self.unset if at and not isinstance(at[-1], int)
                and any(loc[:len(at)] == at for loc in locs)}

    def add_validation_errors(self, exc: ValidationError) -> None:
        for error in exc.errors(include_input=False, include_url=False):
            loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
            if error["type"] == "extra_forbidden":
                self.add(loc, _unknown_key_message(loc), at_key=True)
            elif error["type"] == "missing":
                self.add(loc[:-1], f"missing required key `{loc[-1]}`")
            else:
                message = error["msg"].removeprefix("Value error, ")
                self.add(loc, message[:1].lower() + message[1:])

    # -- meaning --

    def check_semantics(self, plan: Plan, base_dir: Path) -> None:
        for fields in plan.connections.values():
            if fields.password:  # field form: a secret however it was written, also as a URL spells it
                register_secret(fields.password)
                register_secret(quote(fields.password, safe=""))
        seen: dict[str, str] = {}
        for section in ("databases", "blobs"):
            wanted = "database" if section == "databases" else ("folder", "blob")
            for index, item in enumerate(getattr(plan, section)):
                loc = (section, index)
                if item.name in seen:
                    self.add((*loc, "name"), f"duplicate item name {item.name!r} (also in {seen[item.name]})")
                seen.setdefault(item.name, f"{section}[{index}]")
                for end in ("source", "target"):
                    connection = plan.connections.get(getattr(item, end))
                    if connection is None:
                        known = ", ".join(sorted(plan.connections)) or "none"
                        self.add((*loc, end), f"unknown connection {getattr(item, end)!r} (known: {known})")
                    elif connection.kind not in wanted:
                        self.add((*loc, end), f"connection {getattr(item, end)!r} is a {connection.kind}, "
                                 f"not usable by {section}")
                if item.source == item.target:
                    self.add((*loc, "target"), "source and target are the same connection")
                elif (where := _same_place(plan, base_dir, item.source, item.target)) is not None:
                    self.add((*loc, "target"), f"source and target are the same place ({where}), spelled "
                             "differently: the load would overwrite the source")
        top = plan.throttle
        for index, item in enumerate(plan.databases):  # a probe scales limits, the item's or the plan's
            spec = item.throttle
            limits = [x for t in (top, spec) if t for x in (t.rows_per_second, t.bytes_per_second) if x]
            if spec is not None and spec.probe is not None and not limits:
                self.add(("databases", index, "throttle", "probe"), "a probe scales the limits: give "
                         "rows_per_second or bytes_per_second too (on the item or in the plan's throttle)")
        if top is not None and top.probe is not None and not (top.rows_per_second or top.bytes_per_second):
            self.add(("throttle", "probe"), "a probe scales the limits: give rows_per_second or bytes_per_second")
        for index, component in enumerate(plan.depends_on):
            if component == plan.component:
                self.add(("depends_on", index), "a component cannot depend on itself")
        for section, steps in (("cutover", plan.cutover.steps), ("rollback", plan.rollback.steps)):
            for index, step in enumerate(steps):
                if step.run.startswith(BUILTIN_PREFIX):
                    if step.run not in BUILTIN_STEPS or section != "cutover":
                        self.add((section, "steps", index, "run"),
                                 f"unknown built-in step {step.run!r} (cutover knows: {', '.join(BUILTIN_STEPS)})")
                    continue
                try:
                    first = shlex.split(step.run)[0]
                    find_step_script(base_dir, first)
                except (ValueError, IndexError):
                    self.add((section, "steps", index, "run"), "cannot parse the command")
                except FileNotFoundError:
                    self.add((section, "steps", index, "run"),
                             f"step script {first!r} not found (looked beside the plan and in its parent folder)")
        if plan.cutover.runbook and not _exists_near(base_dir, plan.cutover.runbook):
            self.add(("cutover", "runbook"), f"runbook {plan.cutover.runbook!r} not found")


def _without(data: dict, places: set[tuple]) -> dict:
    """A copy of the interpolated plan without the keys at `places`, so their defaults apply."""
    out = deepcopy(data)
    for where in places:
        node: Any = out
        for part in where[:-1]:
            node = node[part]
        del node[where[-1]]
    return out


def _exists_near(base_dir: Path, relative: str) -> bool:
    path = Path(relative)
    return path.exists() if path.is_absolute() else any((r / path).exists() for r in (base_dir, base_dir.parent))


def _same_place(plan: Plan, base_dir: Path, a: str, b: str) -> str | None:
    """The place both connections point at, when they do (see `migrate.plan.places`)."""
    ca, cb = plan.connections.get(a), plan.connections.get(b)
    if ca is None or cb is None:
        return None
    pa = place(ca, base_dir)
    return redact(pa) if pa is not None and pa == place(cb, base_dir) else None


def _unknown_key_message(loc: tuple) -> str:
    allowed = _allowed_keys(loc[:-1])
    message = f"unknown key `{loc[-1]}`"
    if allowed:
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        message += f" (did you mean `{close[0]}`?)" if close else f" (allowed: {', '.join(allowed)})"
    return message


def _allowed_keys(loc: tuple) -> list[str]:
    """The keys the model accepts at `loc`, found by walking the model's field annotations."""
    model: Any = Plan
    keyed = False  # the next part is a key of a dict[str, Model] (a connection's name), not a field
    for part in loc:
        if isinstance(part, int) or keyed or not (isinstance(model, type) and issubclass(model, BaseModel)):
            keyed = False
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        keyed = getattr(field.annotation, "__origin__", None) is dict
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _model_in(annotation: Any) -> Any:
    """The first pydantic model inside an annotation like `list[X]`, `dict[str, X]`, `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or getattr(annotation, "__metadata__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    origin = getattr(annotation, "__origin__", None)
    return _model_in(origin) if origin is not None and origin is not annotation else None
