"""What the journal remembers about an item's dual-running: when it last caught up, how far behind it was,
since when it has been dual-running, and what the last cycle did. One place for these keys.

The journal name is the item's (forward) or `<item>.reverse` (reverse replication after cutover).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from migrate.state.journal import Journal, now

_SYNCED_AT = "synced_at"  # start of the last clean cycle (or the load's baseline): nothing older is missing
_LAG = "lag_seconds"  # lag measured by that cycle
_DUAL_RUN_SINCE = "dual_run_since"  # start of the first clean cycle after the load (reset by a rollback)
_LAST_SYNC = "last_sync"  # summary of the last cycle, clean or not
_LOAD_BASELINE = "load_baseline"  # when the first attempt of the load began (before its watermark/listing)


class SyncState:
    """Typed access to one item's dual-running state in the journal."""

    def __init__(self, journal: Journal, item: str) -> None:
        self.journal = journal
        self.item = item

    def caught_up(self, at: datetime, lag_seconds: float) -> None:
        """Everything written on the source before `at` (less `lag_seconds`) is on the target."""
        self.journal.put(self.item, _SYNCED_AT, at.isoformat())
        self.journal.put(self.item, _LAG, lag_seconds)

    def cycle_done(self, started: datetime, summary: dict[str, Any], clean: bool, lag_seconds: float) -> None:
        if clean:
            self.caught_up(started, lag_seconds)
            if self.dual_run_since is None:
                self.journal.put(self.item, _DUAL_RUN_SINCE, started.isoformat())
        self.journal.put(self.item, _LAST_SYNC, {"at": started.isoformat(), **summary})

    def load_starting(self, at: datetime) -> datetime:
        """Record when the load first began (kept across resumed attempts) and return it: the load copies what
        the source held from then on, so once it is done, nothing older than this is missing."""
        value = self.journal.get(self.item, _LOAD_BASELINE)
        if value:
            return datetime.fromisoformat(value)
        self.journal.put(self.item, _LOAD_BASELINE, at.isoformat())
        return at

    def restart_dual_run(self) -> None:
        self.journal.put(self.item, _DUAL_RUN_SINCE, None)

    @property
    def synced_at(self) -> datetime | None:
        value = self.journal.get(self.item, _SYNCED_AT)
        return datetime.fromisoformat(value) if value else None

    @property
    def dual_run_since(self) -> datetime | None:
        value = self.journal.get(self.item, _DUAL_RUN_SINCE)
        return datetime.fromisoformat(value) if value else None

    @property
    def last_sync(self) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self.journal.get(self.item, _LAST_SYNC)
        return value

    def lag_bound(self) -> float | None:
        """Upper bound of how far the target is behind: the lag the last clean cycle measured plus the time
        since it started (anything written since may not be copied yet); None before any baseline."""
        synced_at = self.synced_at
        if synced_at is None:
            return None
        since = (now() - synced_at).total_seconds()
        return float(self.journal.get(self.item, _LAG, 0.0) or 0.0) + max(since, 0.0)
