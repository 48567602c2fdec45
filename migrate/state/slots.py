"""The replication slot of an item as the journal last saw it (written by sync's logical-decoding source, read
by status, the gates and reports without connecting to the source)."""

from __future__ import annotations

from typing import Any

from migrate.state.journal import Journal

SLOT_KEY = "logical:slot"  # item state: the slot's name, where it lives, and its last reading


def slot_summary(journal: Journal, item: str) -> dict[str, Any] | None:
    value = journal.get(item, SLOT_KEY)
    return value if isinstance(value, dict) else None
