"""Operator paths: questions on a real pseudo-terminal, refusals without one."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from helpers import build_tree, cli_process

PLAN = """
version: 1
component: ops
connections:
  src: {path: src}
  dst: {path: dst}
blobs:
  - {name: files, source: src, target: dst}
cutover:
  gates: {max_lag: null, verified: false}
  steps:
    - {name: freeze writes, run: "runbooks/freeze.sh"}
    - {name: switch to Azure, run: "runbooks/switch.sh"}
rollback:
  steps:
    - {name: point back on premises, run: "runbooks/back.sh"}
"""


def make_plan(tmp_path: Path) -> Path:
    build_tree(tmp_path, {
        "plan.yaml": PLAN,
        "src/a.txt": "hello\n",
        "runbooks/freeze.sh": f"#!/bin/sh\ntouch {tmp_path}/froze\n",
        "runbooks/switch.sh": f"#!/bin/sh\ntouch {tmp_path}/switched\n",
        "runbooks/back.sh": f"#!/bin/sh\ntouch {tmp_path}/went-back\n",
    })
    done = cli_process("run", str(tmp_path / "plan.yaml"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "plan.yaml"


class Terminal:
    """`python -m migrate ARGS` on a pseudo-terminal (stdin, stdout and stderr), read as a person would."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "migrate", *args], stdin=slave, stdout=slave,
                                     stderr=slave, close_fds=True, env={**os.environ, "TERM": "xterm",
                                                                        "COLUMNS": "120"})
        os.close(slave)
        self.screen = ""

    def read(self, seconds: float) -> str:
        """Whatever arrives within `seconds`."""
        got = ""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                break
            try:
                chunk = os.read(self.master, 65536).decode("utf-8", errors="replace")
            except OSError:  # the program ended and closed the terminal
                break
            if not chunk:
                break
            got += chunk
        self.screen += got
        return got

    def expect(self, text: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while text not in self.screen:
            assert time.monotonic() < deadline, f"{text!r} never appeared in {self.screen!r}"
            self.read(0.1)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def finish(self, seconds: float = 60) -> int:
        deadline = time.monotonic() + seconds
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.read(0.1)
        self.read(0.2)
        os.close(self.master)
        return self.proc.wait(timeout=5)


def test_cutover_question_comes_after_the_display_stops_and_no_exits_0(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    term = Terminal("cutover", str(plan))
    term.expect("Run these cutover steps now?")
    before = term.screen
    assert before.index("freeze writes") < before.index("switch to Azure") < before.index("Run these cutover")
    assert "final sync to zero lag" in before
    assert term.read(1.0) == ""  # nothing draws over the question while it waits (no live display)
    term.send("n\r")
    code = term.finish()
    assert code == 0, term.screen
    assert "cutover not confirmed: nothing was run" in term.screen
    assert "internal error" not in term.screen and "Traceback" not in term.screen
    assert not (tmp_path / "froze").exists() and not (tmp_path / "switched").exists()


def test_cutover_yes_on_a_terminal_runs_the_steps(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    term = Terminal("cutover", str(plan))
    term.expect("Run these cutover steps now?")
    term.send("y\r")
    assert term.finish() == 0, term.screen
    assert "cutover complete" in term.screen
    assert (tmp_path / "froze").exists() and (tmp_path / "switched").exists()


def test_rollback_asks_on_a_terminal_and_needs_yes_without_one(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    assert cli_process("cutover", str(plan), "--yes").returncode == 0
    no_tty = subprocess.run([sys.executable, "-m", "migrate", "rollback", str(plan)], stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120, check=False)
    assert no_tty.returncode == 2, no_tty.stderr
    assert "rollback needs confirmation: no terminal to ask on, so pass --yes" in no_tty.stderr
    assert not (tmp_path / "went-back").exists()

    term = Terminal("rollback", str(plan))
    term.expect("Roll back now?")
    assert "point back on premises" in term.screen
    term.send("n\r")
    assert term.finish() == 0
    assert "rollback not confirmed: nothing was run" in term.screen
    assert not (tmp_path / "went-back").exists()

    term = Terminal("rollback", str(plan))
    term.expect("Roll back now?")
    term.send("y\r")
    assert term.finish() == 0, term.screen
    assert (tmp_path / "went-back").exists()


def test_cutover_without_a_terminal_or_yes_exits_2(tmp_path: Path) -> None:
    plan = make_plan(tmp_path)
    done = subprocess.run([sys.executable, "-m", "migrate", "cutover", str(plan)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "pass --yes" in done.stderr
    assert not (tmp_path / "froze").exists()
