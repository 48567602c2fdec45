"""Work made in parts by `migrate worker` (one part per claimed task): a verification, or a sync cycle. What
each part found is journaled under its round's id (the verification's, the cycle's) with the part's done-mark,
and the task closing the round adds the parts up.

A part is a chunk record named `<round>/<task>` (stage `verify-part` or `sync-part`): a runner of an older round,
frozen past its lease and finishing late, writes under that older id and never mixes in (and a runner whose claim
was superseded writes nothing); the records of earlier rounds go when the next one opens (`forget`)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from migrate.errors import Difference
from migrate.stages.engine import VerifyResult
from migrate.state.claims import Journaled
from migrate.state.journal import Journal

VERIFY_PART, SYNC_PART = "verify-part", "sync-part"  # the records of a verification's parts, a sync cycle's
KEPT = 1000  # differences a part journals in full (all are counted)


def journaled(item: str, stage: str, round_id: str, task: str, units: int, detail: dict[str, Any]) -> Journaled:
    """A part's outcome: its units, and its record, journaled with its done-mark (`WorkTable.done`)."""
    return Journaled(units, [(item, stage, f"{round_id}/{task}", "done", units, detail)])


def of_round(journal: Journal, item: str, stage: str, round_id: str) -> list[dict[str, Any]]:
    """The records of one round's parts."""
    return [detail for _, _, detail in journal.chunks(item, stage, lo=f"{round_id}/", hi=f"{round_id}0").values()]


def forget(journal: Journal, item: str, stage: str) -> None:
    """Before a new round: the part records of earlier ones go."""
    journal.clear_chunks(item, stage)


def record(item: str, verification: str, task: str, started: datetime, checked: int, found: list[Difference],
           group: str = "", **counts: int) -> Journaled:
    """One verify part's outcome: the units it checked, and what it found, with counts to add up per `group`
    (such as a table)."""
    return journaled(item, VERIFY_PART, verification, task, checked, {
        "started": started.isoformat(), "group": group, "checked": checked, "differences": len(found),
        "found": [asdict(d) for d in found[:KEPT]], "counts": counts})


def add_up(journal: Journal, item: str, verification: str, by: str | None = None) -> VerifyResult:
    """The verification its parts add up to, with `metrics["since"]`: when its earliest part started (the moment
    it vouches for). The parts' counts are summed into the metrics, per group under `by` when given."""
    parts = of_round(journal, item, VERIFY_PART, verification)
    result = VerifyResult(item)
    groups: dict[str, dict[str, int]] = {}
    for part in parts:
        result.checked += part["checked"]
        result.differences += [Difference(**d) for d in part["found"]]
        result.more += part["differences"] - len(part["found"])
        sums = groups.setdefault(part["group"], {"parts": 0, "differences": 0})
        sums["parts"] += 1
        sums["differences"] += part["differences"]
        for key, value in part["counts"].items():
            sums[key] = sums.get(key, 0) + value
    result.differences.sort(key=lambda d: (d.key, d.kind))
    earliest = min((datetime.fromisoformat(p["started"]) for p in parts), default=datetime.now(UTC))
    metrics: dict[str, Any] = {"verification": verification, "parts": len(parts), "since": earliest.isoformat()}
    if by is not None:
        metrics[by] = groups
    else:
        metrics.update({k: v for sums in groups.values() for k, v in sums.items() if k not in ("parts", "differences")})
    result.metrics = metrics
    return result
