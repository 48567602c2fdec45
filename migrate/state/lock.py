"""One lock per plan: holder, host, pid, heartbeat, expiry, and a token that fences the holder's journal writes.

- A second runner is refused (or, with a timeout, waits) and told which command holds the lock and when it
  expires.
- A lock whose heartbeat has expired (judged by the journal database's clock on PostgreSQL), or whose holder is a
  dead process on this host, is stale. Take-over is a compare-and-swap on the token read when judging staleness:
  of two runners racing for one stale lock exactly one wins.
- While held, every journal write first checks the token (`Journal.fence`): a runner whose lock was taken over,
  or whose heartbeat could not be written until the lock expired, stops at its next write with `LockLost`.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from migrate.errors import LockHeld, MigrateError
from migrate.state.journal import Fence, Journal, as_utc, lock_t, who

DEFAULT_TTL = 120.0  # seconds without a heartbeat before a lock counts as stale
WAIT_POLL = 1.0  # seconds between tries while waiting for a held lock


@dataclass(frozen=True)
class LockInfo:
    owner: str  # "migrate <command> by <user>@<host>"
    host: str
    pid: int
    acquired_at: datetime
    heartbeat_at: datetime
    expires_at: datetime
    token: str = ""

    def describe(self) -> str:
        return (f"{self.owner} (pid {self.pid} on {self.host}, since {self.acquired_at:%Y-%m-%d %H:%M:%S} UTC, "
                f"last heartbeat {self.heartbeat_at:%H:%M:%S} UTC, expires {self.expires_at:%H:%M:%S} UTC "
                "unless renewed)")

    def is_stale(self, at: datetime) -> bool:
        """Expired at `at` (the journal's clock), or held by a process of this host that no longer exists."""
        if self.expires_at < at:
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
    """Context manager holding the plan lock, with a heartbeat thread and the journal fenced while held.

    `timeout` (seconds) waits for a held lock instead of failing at once; `on_wait(holder, waited)` hears of each
    try that found it held.
    """

    def __init__(self, journal: Journal, name: str, ttl: float = DEFAULT_TTL, *, timeout: float | None = None,
                 on_wait: Callable[[LockInfo | None, float], None] | None = None) -> None:
        self.journal = journal
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self.on_wait = on_wait
        self.token = secrets.token_hex(16)
        self.fence = Fence(name, self.token)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PlanLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        started = time.monotonic()
        while True:
            try:
                self._try_acquire()
                break
            except LockHeld as exc:
                waited = time.monotonic() - started
                if self.timeout is None or waited >= self.timeout:
                    if self.timeout:
                        exc.message += f"; waited {self.timeout:g}s for it"
                    raise
                if self.on_wait is not None:
                    self.on_wait(current_lock(self.journal, self.name), waited)
                time.sleep(min(WAIT_POLL, self.timeout - waited))
        self.journal.fence = self.fence
        self._thread = threading.Thread(target=self._heartbeat, name="migrate-lock-heartbeat", daemon=True)
        self._thread.start()

    def _values(self, at: datetime) -> dict[str, object]:
        user, host, pid = who()
        return dict(owner=f"migrate {self.journal.command} by {user}@{host}", host=host, pid=pid, token=self.token,
                    acquired_at=at, heartbeat_at=at, expires_at=at + timedelta(seconds=self.ttl))

    def _try_acquire(self) -> None:
        at = self.journal.clock()
        try:
            with self.journal.connect() as conn:
                conn.execute(insert(lock_t).values(name=self.name, **self._values(at)))
            return
        except IntegrityError:
            pass
        held = current_lock(self.journal, self.name)
        if held is None:  # released between our insert and our read: try again
            raise LockHeld("the plan's lock changed hands while it was being taken")
        if not held.is_stale(at):
            raise LockHeld(f"plan is locked by {held.describe()}",
                           hint="wait for it to finish (`--lock-timeout DURATION` waits), or `migrate unlock PLAN` "
                                "if that run is gone")
        with self.journal.connect() as conn:  # compare-and-swap on the token we judged stale
            taken = conn.execute(update(lock_t).where(and_(lock_t.c.name == self.name, lock_t.c.token == held.token))
                                 .values(**self._values(at))).rowcount
        if not taken:
            winner = current_lock(self.journal, self.name)
            raise LockHeld(f"plan is locked by {winner.describe() if winner else 'another runner'} "
                           "(it took over the stale lock first)")
        self.journal.event("lock", f"took over a stale lock held by {held.describe()}", outcome="warn")

    def _heartbeat(self) -> None:
        """Renew the expiry every ttl/4. A renewal that matches no row means the lock was taken over; renewals
        that keep failing until the lock would have expired mean it may be: either way the journal's fence
        stops this runner at its next write."""
        interval = max(self.ttl / 4, 0.5)
        last_renewed = time.monotonic()
        while not self._stop.wait(interval):
            try:
                at = self.journal.clock()
                with self.journal.connect() as conn:
                    renewed = conn.execute(
                        update(lock_t).where(and_(lock_t.c.name == self.name, lock_t.c.token == self.token))
                        .values(heartbeat_at=at, expires_at=at + timedelta(seconds=self.ttl))).rowcount
            except SQLAlchemyError as exc:
                if time.monotonic() - last_renewed > self.ttl:
                    self.fence.lost = (f"the lock's heartbeat failed for longer than its {self.ttl:g}s expiry "
                                       f"({type(exc).__name__}); another runner may hold it now")
                    return
                continue
            if not renewed:
                self.fence.lost = "another runner took over the plan's lock; this run stopped at its next journal write"
                return
            last_renewed = time.monotonic()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.journal.fence = None
        with self.journal.connect() as conn:
            conn.execute(delete(lock_t).where(and_(lock_t.c.name == self.name, lock_t.c.token == self.token)))


def current_lock(journal: Journal, name: str) -> LockInfo | None:
    with journal.engine.connect() as conn:
        row = conn.execute(select(lock_t).where(lock_t.c.name == name)).mappings().first()
    if row is None:
        return None
    return LockInfo(owner=row["owner"], host=row["host"], pid=row["pid"], acquired_at=as_utc(row["acquired_at"]),
                    heartbeat_at=as_utc(row["heartbeat_at"]), expires_at=as_utc(row["expires_at"]),
                    token=row["token"])


def break_lock(journal: Journal, name: str, force: bool = False) -> LockInfo | None:
    """Remove the plan's lock if stale (or always, with force); return what was removed."""
    held = current_lock(journal, name)
    if held is None:
        return None
    if not held.is_stale(journal.clock()) and not force:
        raise MigrateError(f"the lock is live: held by {held.describe()}",
                           hint="use --force only if you are sure that run is gone")
    with journal.connect() as conn:
        conn.execute(delete(lock_t).where(and_(lock_t.c.name == name, lock_t.c.token == held.token)))
    journal.event("unlock", f"released lock held by {held.describe()}", outcome="warn" if force else "ok")
    return held
