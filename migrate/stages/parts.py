"""A verification made in parts by `migrate worker` (one part per claimed task): what each part found is
journaled under the verification's id, and the task finishing the last part adds them up.

A part is a chunk record (stage `verify-part`) named `<verification>/<task>`: a runner of an older verification,
frozen past its lease and finishing late, writes under that older id and never mixes in; the records of earlier
verifications go when the next one starts (`forget`)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from migrate.errors import Difference
from migrate.stages.engine import VerifyResult
from migrate.state.claims import Journaled
from migrate.state.journal import Journal

STAGE = "verify-part"
KEPT = 1000  # differences a part journals in full (all are counted)


def record(item: str, verification: str, task: str, started: datetime, checked: int, found: list[Difference],
           group: str = "", **counts: int) -> Journaled:
    """One part's outcome: the units it checked, and its record (what it found, counts to add up per `group`,
    such as a table), journaled with its done-mark, so a superseded runner's part never overwrites it."""
    return Journaled(checked, [(item, STAGE, f"{verification}/{task}", "done", checked, {
        "started": started.isoformat(), "group": group, "checked": checked, "differences": len(found),
        "found": [asdict(d) for d in found[:KEPT]], "counts": counts})])


def add_up(journal: Journal, item: str, verification: str, by: str | None = None) -> VerifyResult:
    """The verification its parts add up to, with `metrics["since"]`: when its earliest part started (the moment
    it vouches for). The parts' counts are summed into the metrics, per group under `by` when given."""
    parts = [detail for _, _, detail in journal.chunks(item, STAGE, lo=f"{verification}/",
                                                        hi=f"{verification}0").values()]
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


def forget(journal: Journal, item: str) -> None:
    """Before a new verification in parts: the parts of earlier ones go."""
    journal.clear_chunks(item, STAGE)
