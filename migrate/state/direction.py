"""Which side of a component is authoritative: the one the application writes to, whose changes win.

- `source` until a cutover's switch begins (the first plan step after the built-in final verify);
- `target` from then on, also while a cutover is interrupted or a rollback is under way;
- `source` again only after a rollback has brought the target's changes home (or was told to discard them).

Forward sync (source → target) runs only while the source is authoritative; once the target is, the only
replication is reverse (target → source). The record lives in the journal under the plan's own item, so every
runner of the plan (and a resumed one after `kill -9`) sees the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from migrate.state.journal import Journal, now

PLAN_ITEM = "_plan"  # journal item holding plan-wide state (cutover progress, direction, provisioning)
_KEY = "direction"

Authority = Literal["source", "target"]


@dataclass(frozen=True)
class Direction:
    authority: Authority = "source"
    since: str | None = None  # ISO time of the last change of authority
    reason: str = ""

    @property
    def target_authoritative(self) -> bool:
        return self.authority == "target"


def read_direction(journal: Journal) -> Direction:
    stored = journal.get(PLAN_ITEM, _KEY)
    if not stored:
        # a journal from before direction was recorded: a cutover that completed, or was cut short, may have
        # switched the application, so the target is taken to be authoritative (the safe reading)
        cutover = journal.get(PLAN_ITEM, "cutover") or {}
        if cutover.get("status") in ("done", "running", "rolling_back"):
            return Direction("target", reason=f"inferred from the cutover state ({cutover['status']})")
        return Direction()
    return Direction(authority=stored["authority"], since=stored.get("since"), reason=stored.get("reason", ""))


def _write(journal: Journal, record: Direction) -> None:
    journal.put(PLAN_ITEM, _KEY, {"authority": record.authority, "since": record.since, "reason": record.reason})


def set_authority(journal: Journal, authority: Authority, reason: str) -> Direction:
    """Record which side is authoritative now (durable before the caller acts on it) and log the change."""
    current = read_direction(journal)
    if current.authority == authority:
        if not journal.get(PLAN_ITEM, _KEY):  # make the inferred state explicit, silently
            _write(journal, Direction(authority, current.since, current.reason or reason))
        return current
    record = Direction(authority=authority, since=now().isoformat(), reason=reason)
    _write(journal, record)
    journal.event("direction", f"the {authority} is now authoritative: {reason}", outcome="warn"
                  if authority == "target" else "ok")
    return record
