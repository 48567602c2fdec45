"""Typed facade over the journal for runbook steps: which step process group is running, and each step's
kept evidence (start, end, seconds, exit status, redacted output tail).

Keys live under the plan item (`_plan`), in one place:
- `step_running:<phase>`: the step whose process group may still be alive (written BEFORE waiting on it);
- `step_run:<phase>:<run>:<index>`: one step's record (rewritten when it ends);
- `step_runs:<phase>`: the last run number used for `phase` (cutover attempt or rollback run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from sqlalchemy import and_, select

from migrate.state.journal import Journal, kv_t

PLAN_ITEM = "_plan"


@dataclass
class StepRun:
    """One run of one step: where its process group ran and, once it ended, what it left."""

    phase: str  # cutover | rollback
    run: int  # the cutover attempt, or the rollback run, this step belongs to
    index: int  # position in the phase's sequence (0-based)
    name: str
    started_at: str
    host: str = ""
    pgid: int | None = None  # None for built-in steps (no process)
    timeout: float | None = None
    status: str = "running"  # running | done | failed | timed_out | interrupted
    ended_at: str | None = None
    seconds: float | None = None
    exit_status: int | None = None
    output: str = ""
    orphan: str | None = None  # what happened to an interrupted earlier run's group: waited | killed | gone

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepRun:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class StepLog:
    """Step records of one plan's journal (the only code that knows their keys)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def next_run(self, phase: str) -> int:
        """A new run number for `phase` (rollback runs; cutover uses its attempt number)."""
        run = int(self.journal.get(PLAN_ITEM, f"step_runs:{phase}", 0)) + 1
        self.journal.put(PLAN_ITEM, f"step_runs:{phase}", run)
        return run

    def started(self, record: StepRun) -> None:
        """Record a step as running, with its process group, before anything waits on it."""
        self.journal.put(PLAN_ITEM, f"step_running:{record.phase}", asdict(record))
        self._save(record)

    def finished(self, record: StepRun) -> None:
        """Store the step's outcome and output; it no longer counts as running."""
        self._save(record)
        self.journal.put(PLAN_ITEM, f"step_running:{record.phase}", None)

    def running(self, phase: str) -> StepRun | None:
        """The step of `phase` that was started and never recorded as ended (a killed runner's)."""
        data = self.journal.get(PLAN_ITEM, f"step_running:{phase}")
        return StepRun.from_json(data) if data else None

    def runs(self, phase: str, run: int) -> list[StepRun]:
        """Every step record of one run of `phase`, in sequence order."""
        prefix = f"step_run:{phase}:{run}:"
        with self.journal.connect() as conn:
            rows = conn.execute(select(kv_t.c.value).where(
                and_(kv_t.c.item == PLAN_ITEM, kv_t.c.key.like(prefix + "%")))).scalars().all()
        records = [StepRun.from_json(json.loads(v)) for v in rows]
        return sorted(records, key=lambda r: r.index)

    def _save(self, record: StepRun) -> None:
        self.journal.put(PLAN_ITEM, f"step_run:{record.phase}:{record.run}:{record.index}", asdict(record))
