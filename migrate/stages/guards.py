"""The mass-delete guard: a sync cycle never deletes most of a table's rows or a blob set's files on its own.

A source that lost its rows (a TRUNCATE, a restore gone wrong, an unmounted share) looks, to a key diff, exactly
like a source whose rows were deleted on purpose. So a cycle whose deletes would remove more than half of what the
side being written holds, and more than 100 keys, or everything while the side being read is empty, is refused
before anything is deleted, unless the operator says `--allow-mass-delete`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from migrate.errors import MassDeleteRefused

MASS_DELETE_SHARE = 0.5  # refuse a cycle that would delete more than this share of a table or blob set ...
MASS_DELETE_MIN = 100  # ... and more than this many keys


@dataclass(frozen=True)
class PlannedDeletes:
    """What one cycle would delete from one table or blob set."""

    what: str  # "table patients" | "blob set letters"
    deleting: int
    held: int  # rows or files the written side holds now
    source_empty: bool = False  # the side being read holds nothing at all

    def refusal(self) -> str | None:
        if self.deleting == 0:
            return None
        if self.source_empty:
            return f"{self.what}: the source is empty while the target holds {self.held:,}; all would be deleted"
        if self.deleting > MASS_DELETE_MIN and self.deleting > self.held * MASS_DELETE_SHARE:
            return f"{self.what}: {self.deleting:,} of {self.held:,} would be deleted " \
                   f"({self.deleting / max(self.held, 1):.0%})"
        return None


def check_deletes(planned: Iterable[PlannedDeletes], allow: bool) -> None:
    """Raise (nothing deleted yet) when any planned delete is a mass delete and the operator did not allow it."""
    refusals = [why for p in planned if (why := p.refusal())]
    if refusals and not allow:
        raise MassDeleteRefused(
            "mass delete refused, nothing was deleted: " + "; ".join(refusals),
            hint="check the source (an emptied table, a failed restore, an unmounted share); if the deletes are "
                 "meant, rerun with --allow-mass-delete")


def guarded_deletes(what: str, deletes: list[Any], *, source_files: int, listing_problems: int, target_files: int,
                    allow: bool) -> tuple[list[Any], list[str], MassDeleteRefused | None]:
    """A blob cycle's deletes as its guards leave them, with why any were held back: none when the source lists no
    file at all (an unmounted share looks empty) or its listing had problems (a file that could not be listed is
    not gone); none, and the refusal, when they are a mass delete the operator did not allow."""
    if not deletes:
        return deletes, [], None
    if not source_files:
        return [], [f"the source lists no file at all: refusing to delete {len(deletes)} files on the target (an "
                    "unmounted share looks empty; delete by hand if meant)"], None
    if listing_problems:
        return [], [f"the source listing had problems: deleting none of {len(deletes)} files on the target this "
                    "cycle (a file that could not be listed is not gone)"], None
    try:
        check_deletes([PlannedDeletes(what, len(deletes), target_files)], allow)
    except MassDeleteRefused as exc:
        return [], [], exc
    return deletes, [], None
