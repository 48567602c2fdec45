"""Runbook steps: plan-named scripts run with a timeout, their output kept (redacted) in the journal."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass

from migrate.errors import StepFailed
from migrate.plan.loader import LoadedPlan
from migrate.plan.model import Step
from migrate.redact import redact

OUTPUT_KEPT = 4000  # characters of a step's output kept in the journal


@dataclass(frozen=True)
class StepOutcome:
    name: str
    returncode: int
    seconds: float
    output: str


def run_step(loaded: LoadedPlan, step: Step, phase: str) -> StepOutcome:
    """Run one step; raise StepFailed (with the output tail) when it fails or times out."""
    try:
        argv, cwd = loaded.step_command(step)
    except FileNotFoundError as exc:
        raise StepFailed(f"step {step.name!r}: script {exc} not found") from None
    env = {**os.environ, "MIGRATE_PLAN": str(loaded.path), "MIGRATE_COMPONENT": loaded.plan.component,
           "MIGRATE_STEP": step.name, "MIGRATE_PHASE": phase}
    started = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=step.timeout,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise StepFailed(f"step {step.name!r} timed out after {step.timeout:.0f}s") from None
    except OSError as exc:
        raise StepFailed(f"step {step.name!r} could not start: {redact(exc)}") from None
    output = redact((done.stdout or "") + (done.stderr or ""))[-OUTPUT_KEPT:]
    outcome = StepOutcome(step.name, done.returncode, round(time.monotonic() - started, 3), output)
    if done.returncode != 0:
        last = output.strip().splitlines()[-1] if output.strip() else "no output"
        raise StepFailed(f"step {step.name!r} exited {done.returncode}: {last}")
    return outcome
