"""What was not migrated or not verified, said plainly for the board.

Each source of such entries is one function `(plan, journal) -> list[Limit]` in `LIMIT_SOURCES`; adding a
source (a fidelity inventory of objects not moved, say) is one more function in that list.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from migrate.databases.inventory import NOT_MOVED, not_moved, recorded
from migrate.plan.model import BlobItem, DatabaseItem, Plan
from migrate.state.journal import Journal


@dataclass(frozen=True)
class Limit:
    item: str
    what: str  # what is not migrated or not verified
    why: str  # the stated reason, and what covers it where something does
    blocks: bool = False  # an object not moved that the plan does not acknowledge: the report is never READY


def stated_limits(plan: Plan, journal: Journal) -> list[Limit]:
    """Limits that follow from the plan itself: change sources, filters, deletes, untested dialects."""
    out: list[Limit] = []
    for item in plan.items:
        if isinstance(item, DatabaseItem):
            watermarked = [t.name for t in item.tables if t.incremental] or (
                ["every table"] if item.incremental else [])
            if watermarked:
                column = item.incremental.column if item.incremental else "its watermark column"
                out.append(Limit(item.name, f"sync of {', '.join(watermarked)} (watermark {column})",
                                 "watermark blind spot: a row changed without its watermark column moving is not "
                                 "copied by sync cycles; the cutover's final verify compares every row by "
                                 "checksum and refuses on any difference"))
            if not item.delete:
                out.append(Limit(item.name, "deletes on the source", "not mirrored during sync (delete: false)"))
            for side in (item.source, item.target):
                connection = plan.connections[side]
                if connection.backend == "mssql":
                    out.append(Limit(item.name, f"SQL Server path ({side})",
                                     "not exercised against a real SQL Server in this tool's test suite; rehearse "
                                     "it on a copy before the change"))
        elif isinstance(item, BlobItem):
            if item.include or item.exclude:
                out.append(Limit(item.name, "files outside the include/exclude filters",
                                 f"not migrated and not verified (include {item.include or ['**']}, "
                                 f"exclude {item.exclude or []})"))
            if not item.delete:
                out.append(Limit(item.name, "deletes on the source", "not mirrored during sync (delete: false)"))
    return out


def verification_gaps(plan: Plan, journal: Journal) -> list[Limit]:
    """Items never verified, or whose last verification found differences."""
    out = []
    for item in plan.items:
        last = journal.last_verification(item.name)
        if last is None:
            out.append(Limit(item.name, "everything", "never verified"))
        elif not last.clean:
            out.append(Limit(item.name, f"{last.differences} difference(s)",
                             f"found by the last verification ({last.at:%Y-%m-%d %H:%M:%S} UTC)"))
    return out


def objects_not_moved(plan: Plan, journal: Journal) -> list[Limit]:
    """The inventory's source objects not moved (journaled by each run's preflight), by `kind:schema.name`;
    those the item's `not_migrated_ok` does not acknowledge block READY."""
    out = []
    for item in plan.databases:
        entries = recorded(journal, item.name) or []
        unacknowledged = not_moved(entries, item.not_migrated_ok)
        for entry in entries:
            if entry.fate == NOT_MOVED:
                blocks = entry in unacknowledged
                out.append(Limit(item.name, entry.ref, entry.detail if blocks
                                 else f"{entry.detail} (acknowledged by not_migrated_ok)", blocks))
    return out


LIMIT_SOURCES: list[Callable[[Plan, Journal], list[Limit]]] = [verification_gaps, objects_not_moved,
                                                                stated_limits]


def not_migrated_or_verified(plan: Plan, journal: Journal) -> list[Limit]:
    return [limit for source in LIMIT_SOURCES for limit in source(plan, journal)]
