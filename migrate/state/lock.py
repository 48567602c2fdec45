"""One lock per plan: owner, host, pid, heartbeat, expiry. A second runner is refused and told who holds it.

A lock whose owner is a dead process on this host, or whose heartbeat has expired, is stale and taken over.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from migrate.errors import LockHeld, MigrateError
from migrate.state.journal import Journal, as_utc, lock_t, now, who

DEFAULT_TTL = 120.0  # seconds without a heartbeat before a lock counts as stale


@dataclass(frozen=True)
class LockInfo:
    owner: str
    host: str
    pid: int
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime

    def describe(self) -> str:
        return (f"{self.owner} (pid {self.pid} on {self.host}, since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"last heartbeat {self.heartbeat_at:%H:%M:%S} UTC)")

    def is_stale(self) -> bool:
        if self.expires_at < now():
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PlanLock:
    """Context manager holding the plan lock, with a heartbeat thread while held."""

    def __init__(self, journal: Journal, name: str, ttl: float = DEFAULT_TTL) -> None:
        self.journal = journal
        self.name = name
        self.ttl = ttl
        self.token = secrets.token_hex(16)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PlanLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        user, host, pid = who()
        owner = f"{user}@{host}"
        at = now()
        values = dict(owner=owner, host=host, pid=pid, token=self.token, acquired_at=at, heartbeat_at=at,
                      expires_at=at + timedelta(seconds=self.ttl))
        with self.journal.connect() as conn:
            try:
                conn.execute(insert(lock_t).values(name=self.name, **values))
                inserted = True
            except IntegrityError:
                inserted = False
        if not inserted:
            held = current_lock(self.journal, self.name)
            if held is not None and not held.is_stale():
                raise LockHeld(f"plan is locked by {held.describe()}",
                               hint="wait for it to finish, or `migrate unlock PLAN` if that run is gone")
            with self.journal.connect() as conn:  # take over the stale lock: compare-and-swap on its token
                condition = lock_t.c.name == self.name
                if held is not None:
                    old_token = conn.execute(select(lock_t.c.token).where(condition)).scalar()
                    condition = and_(condition, lock_t.c.token == old_token)
                taken = conn.execute(update(lock_t).where(condition).values(**values)).rowcount
            if not taken:
                held = current_lock(self.journal, self.name)
                raise LockHeld(f"plan is locked by {held.describe() if held else 'another runner'}")
            self.journal.event("lock", f"took over a stale lock held by {held.describe() if held else '?'}",
                               outcome="warn")
        self._thread = threading.Thread(target=self._heartbeat, name="migrate-lock-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        interval = max(self.ttl / 4, 0.5)
        while not self._stop.wait(interval):
            at = now()
            try:
                with self.journal.connect() as conn:
                    conn.execute(update(lock_t).where(and_(lock_t.c.name == self.name, lock_t.c.token == self.token))
                                 .values(heartbeat_at=at, expires_at=at + timedelta(seconds=self.ttl)))
            except Exception:  # noqa: BLE001 - a missed heartbeat is retried next tick; expiry covers the rest
                continue

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.journal.connect() as conn:
            conn.execute(delete(lock_t).where(and_(lock_t.c.name == self.name, lock_t.c.token == self.token)))


def current_lock(journal: Journal, name: str) -> LockInfo | None:
    with journal.engine.connect() as conn:
        row = conn.execute(select(lock_t).where(lock_t.c.name == name)).mappings().first()
    if row is None:
        return None
    return LockInfo(owner=row["owner"], host=row["host"], pid=row["pid"], acquired_at=as_utc(row["acquired_at"]),
                    heartbeat_at=as_utc(row["heartbeat_at"]), expires_at=as_utc(row["expires_at"]))


def break_lock(journal: Journal, name: str, force: bool = False) -> LockInfo | None:
    """Remove the plan's lock if stale (or always, with force); return what was removed."""
    held = current_lock(journal, name)
    if held is None:
        return None
    if not held.is_stale() and not force:
        raise MigrateError(f"the lock is live: held by {held.describe()}",
                           hint="use --force only if you are sure that run is gone")
    with journal.connect() as conn:
        conn.execute(delete(lock_t).where(lock_t.c.name == name))
    journal.event("unlock", f"released lock held by {held.describe()}", outcome="warn" if force else "ok")
    return held
