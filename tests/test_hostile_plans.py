"""Hostile or broken input gets one clear, located message and exit 2 (or the verb's own code), quickly, and
never a traceback: alias bombs, deep nesting, bad ports, missing files, markup in data."""

from __future__ import annotations

import sqlite3
import textwrap
import time
from pathlib import Path

from helpers import cli_process

LAUGHS = "version: 1\ncomponent: x\n" + "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi", strict=True))


def validate(tmp_path: Path, text: str, name: str = "plan.yaml") -> tuple[int, str, float]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    started = time.monotonic()
    done = cli_process("validate", str(path), timeout=30)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    code, out, seconds = validate(tmp_path, LAUGHS)
    assert code == 2 and f"{tmp_path / 'plan.yaml'}:4:" in out and "aliases" in out and "Traceback" not in out
    assert seconds < 5  # start-up included; the check itself is linear in the file


def test_deep_nesting_is_refused_at_once(tmp_path: Path) -> None:
    for text in ("version: 1\ncomponent: x\nz: " + "[" * 5000 + "]" * 5000 + "\n",
                 "version: 1\ncomponent: x\n" + "".join(" " * (2 * i) + f"k{i}:\n" for i in range(300))):
        code, out, seconds = validate(tmp_path, text)
        assert code == 2 and "nested deeper than 64 levels" in out and "internal error" not in out
        assert seconds < 5


def test_a_port_that_is_not_a_number_is_a_located_plan_error(tmp_path: Path) -> None:
    code, out, _ = validate(tmp_path, textwrap.dedent("""\
        version: 1
        component: port-test
        connections:
          src: {url: "postgresql+psycopg://u@localhost:abc/db"}
          dst: {url: "sqlite:///t.db"}
        databases:
          - {name: epr, source: src, target: dst}
        """))
    assert code == 2 and ":4:" in out and "numeric port" in out and "internal error" not in out


def test_a_missing_plan_file_is_named_without_a_made_up_location(tmp_path: Path) -> None:
    done = cli_process("validate", str(tmp_path / "nope.yaml"))
    assert done.returncode == 2 and f"{tmp_path / 'nope.yaml'}: no such plan file" in done.stderr
    assert ":0:0" not in done.stderr


def test_markup_in_keys_is_shown_as_written(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "source.db") as conn:
        conn.execute("CREATE TABLE notes (ref TEXT PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes VALUES (?, ?)", [("x[/y]", "a"), ("[bold]b[/bold]", "b"), ("c", "c")])
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        version: 1
        component: markup
        connections:
          src: {url: "sqlite:///source.db"}
          dst: {url: "sqlite:///target.db"}
        databases:
          - {name: notes, source: src, target: dst, tables: ["*"]}
        """), encoding="utf-8")
    assert cli_process("run", str(plan)).returncode == 0
    with sqlite3.connect(tmp_path / "target.db") as conn:
        conn.execute("DELETE FROM notes WHERE ref IN ('x[/y]', '[bold]b[/bold]')")
    verified = cli_process("verify", str(plan))
    assert verified.returncode == 3, verified.stderr
    assert "ref=x[/y]" in verified.stderr and "ref=[bold]b[/bold]" in verified.stderr
    assert "Traceback" not in verified.stderr and "internal error" not in verified.stderr


def test_plan_reports_every_failing_check_and_exits_1(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "letters").mkdir()
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        component: many-checks
        connections:
          src: {{url: "postgresql+psycopg://u@127.0.0.1:{port}/epr"}}
          dst: {{url: "sqlite:///t.db"}}
          gone: {{path: no-such-share}}
          there: {{path: azure-letters}}
        databases:
          - {{name: epr, source: src, target: dst}}
        blobs:
          - {{name: letters, source: gone, target: there}}
        """), encoding="utf-8")
    for args in ((), ("--detailed-exitcode",)):
        planned = cli_process("plan", str(plan), *args)
        assert planned.returncode == 1, planned.stderr  # a failed check is an error, not "changes pending"
        assert "problem epr:" in planned.stderr and "problem letters:" in planned.stderr  # both, not the first
        assert "2 check(s) failed" in planned.stderr and "Traceback" not in planned.stderr
