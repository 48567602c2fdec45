"""Runbook steps: plan-named scripts, each in its own process group (session), with a timeout that ends the
whole group, and the last 64 KiB of their output kept (redacted).

A step's process group id is handed to `on_start` before anything waits on it, so a runner killed with
`kill -9` leaves behind enough for the next runner to find a still-running group (`settle_orphan`) and wait
for it or end it before running the step again: never two copies at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from migrate.errors import StepFailed
from migrate.plan.loader import LoadedPlan
from migrate.plan.model import Step
from migrate.redact import redact

OUTPUT_KEPT = 64 * 1024  # bytes of a step's (redacted) output kept in the journal
_RAW_KEPT = OUTPUT_KEPT + 8 * 1024  # a little more raw text, so a secret cut at the edge is still masked
TERM_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a step's group is ended
INTERRUPT_GRACE = 0.5  # the same after Ctrl-C: the operator wants the prompt back within a second
DRAIN_AFTER_EXIT = 2.0  # seconds to keep reading output that a step's background children still write


@dataclass(frozen=True)
class StepOutcome:
    name: str
    returncode: int
    seconds: float
    output: str  # redacted, at most OUTPUT_KEPT bytes of UTF-8: the end of what the step printed
    started_at: str = ""
    ended_at: str = ""
    pgid: int | None = None
    timed_out: bool = False


class StepExited(StepFailed):
    """A step exited non-zero or timed out; carries what it left (output, seconds, exit status)."""

    def __init__(self, message: str, outcome: StepOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


class _Tail:
    """The last bytes written to a pipe, read by a thread (bounded memory whatever the step prints)."""

    def __init__(self, pipe: object) -> None:
        self.data = bytearray()
        self.thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self.thread.start()

    def _read(self, pipe: object) -> None:
        read = pipe.read1  # type: ignore[attr-defined]
        with contextlib.suppress(OSError, ValueError):
            while chunk := read(65536):
                self.data += chunk
                if len(self.data) > 2 * _RAW_KEPT:
                    del self.data[:-_RAW_KEPT]

    def text(self) -> str:
        raw = bytes(self.data[-_RAW_KEPT:])
        clean = redact(raw.decode("utf-8", errors="replace")).encode("utf-8")
        return clean[-OUTPUT_KEPT:].decode("utf-8", errors="ignore")


def run_step(loaded: LoadedPlan, step: Step, phase: str, *, on_start: Callable[[int], None] | None = None,
             timeout: float | None = None) -> StepOutcome:
    """Run one step in a new session; raise StepExited (with its output) when it fails or times out.

    `on_start(pgid)` runs right after the process starts and before it is waited on (the cutover journals
    the group there). `timeout` overrides `step.timeout` (a resumed step gets what is left of it)."""
    try:
        argv, cwd = loaded.step_command(step)
    except FileNotFoundError as exc:
        raise StepFailed(f"step {step.name!r}: script {exc} not found") from None
    env = {**os.environ, "MIGRATE_PLAN": str(loaded.path), "MIGRATE_COMPONENT": loaded.plan.component,
           "MIGRATE_STEP": step.name, "MIGRATE_PHASE": phase}
    limit = step.timeout if timeout is None else timeout
    started_at, started = _stamp(), time.monotonic()
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        raise StepFailed(f"step {step.name!r} could not start: {redact(exc)}") from None
    pgid = proc.pid  # a new session's leader: its pid is the group id
    tail = _Tail(proc.stdout)
    timed_out = False
    try:
        if on_start is not None:
            on_start(pgid)
        proc.wait(timeout=max(0.0, limit - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        timed_out = True
        end_group(pgid, TERM_GRACE)
        proc.wait()
    except BaseException:  # Ctrl-C or a failing journal write: never leave the group running unrecorded
        end_group(pgid, INTERRUPT_GRACE)
        proc.wait()
        raise
    finally:
        tail.thread.join(DRAIN_AFTER_EXIT)
        if proc.stdout is not None:
            proc.stdout.close()
    outcome = StepOutcome(step.name, proc.returncode, round(time.monotonic() - started, 3), tail.text(),
                          started_at, _stamp(), pgid, timed_out)
    if timed_out:
        raise StepExited(f"step {step.name!r} timed out after {limit:.0f}s; its process group was ended", outcome)
    if proc.returncode != 0:
        last = outcome.output.strip().splitlines()[-1] if outcome.output.strip() else "no output"
        raise StepExited(f"step {step.name!r} exited {proc.returncode}: {last}", outcome)
    return outcome


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies, already dead, do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def end_group(pgid: int, grace: float) -> None:
    """SIGTERM the whole group, give it `grace` seconds, then SIGKILL whatever is left."""
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.05)
    if group_alive(pgid):
        _signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.05)


def settle_orphan(pgid: int, wait: float, poll: float = 0.2) -> str:
    """Before a step runs again: wait up to `wait` seconds for an interrupted run's group to end, else end it.

    Returns what happened: `gone` (nothing was running), `waited` (it ended by itself) or `killed`."""
    if not group_alive(pgid):
        return "gone"
    deadline = time.monotonic() + max(0.0, wait)
    while time.monotonic() < deadline:
        time.sleep(poll)
        if not group_alive(pgid):
            return "waited"
    end_group(pgid, TERM_GRACE)
    return "killed"


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _stamp() -> str:
    return datetime.now(UTC).isoformat()
