"""Claimable tasks for several runners over one plan (`migrate worker`): a small work table in a shared
PostgreSQL journal, apart from the path and chunk records.

- **A claim is one short transaction**: `UPDATE ... SET owner, lease_until, fence = fence + 1 WHERE id IN
  (SELECT ... FOR UPDATE SKIP LOCKED LIMIT k)`, judged by the journal database's clock. Nothing is held between
  transactions (PgBouncer in transaction mode works). Two runners never claim one task at once; a task whose
  lease expired (its runner died or froze) is claimable again, with a higher fence.
- **Fencing**: every later write about a task (heartbeat, done, failed) names the fence its claim got and
  changes nothing once a newer claim exists: a runner that froze past its lease cannot mark done a task someone
  else finished. The task's effect on the target is fenced separately (see `migrate.databases.load`).
- **Order**: tasks are claimed by a hash of their name (sequential names would put neighbouring work, such as
  small blob writes, on one storage partition at once), a runner's shard (`--shard i/N`) first: shards are
  only affinity, claims are the truth.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from migrate.errors import UsageError
from migrate.state.journal import Journal, create_tables

BUCKETS = 1 << 16

work_metadata = MetaData()  # made in a journal only when workers use it
tasks_t = Table(
    "tasks",
    work_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item", String(128), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("task", String(1024), nullable=False),
    Column("bucket", Integer, nullable=False),  # hash of the task's name: the claim order
    Column("status", String(16), nullable=False),  # pending | leased | done | failed
    Column("owner", String(255)),
    Column("lease_until", DateTime(timezone=True)),
    Column("fence", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("units", Integer, nullable=False, default=0),
    Column("error", Text),
    Column("spec", Text),  # what the task covers when its name cannot say it (a blob chunk's path range)
    Column("claimed_at", DateTime(timezone=True)),  # the latest claim, on the journal's clock (rates, ETA)
    Column("done_at", DateTime(timezone=True)),
    Index("ix_tasks_item_stage_task", "item", "stage", "task", unique=True),
    Index("ix_tasks_claim", "item", "stage", "status", "bucket"),
)


@dataclass(frozen=True)
class Claim:
    """A task this runner holds: its id, name and the fence its claim got."""

    id: int
    item: str
    stage: str
    task: str
    fence: int
    spec: str | None = None


@dataclass(frozen=True)
class Split:
    """What a task that cuts its work into smaller tasks returns instead of units: those tasks, as
    (name, spec), added in the transaction that marks it done (`WorkTable.split`)."""

    tasks: list[tuple[str, str | None]]


ChunkRecord = tuple[str, str, str, str, int, "dict[str, Any] | None"]  # (item, stage, chunk, status, units, detail)


@dataclass(frozen=True)
class Journaled:
    """What a task returns whose findings are journal records (a part of a verification or a sync cycle): its
    units, and the records, written in the transaction that marks it done, so a runner whose claim was superseded
    (one frozen past its lease and resumed) writes nothing."""

    units: int
    records: list[ChunkRecord]


@dataclass(frozen=True)
class Progress:
    """A stage's tasks by state (`leased` counts live leases; expired ones count as pending)."""

    pending: int = 0
    leased: int = 0
    done: int = 0
    failed: int = 0
    units: int = 0

    @property
    def finished(self) -> bool:
        """Nothing left to claim or wait for (failed tasks included: the stage then failed)."""
        return self.pending == 0 and self.leased == 0


def bucket_of(task: str) -> int:
    return int.from_bytes(hashlib.blake2b(task.encode(), digest_size=4).digest(), "big") % BUCKETS


def parse_shard(value: str) -> tuple[int, int]:
    """`i/N` (0 <= i < N) as (i, N)."""
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise UsageError(f"bad shard {value!r}: expected i/N, such as 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"bad shard {value!r}: i must be at least 0 and below N")
    return index, count


class WorkTable:
    """The claimable tasks of one plan's journal (PostgreSQL only)."""

    def __init__(self, journal: Journal, owner: str, ttl: float = 60.0,
                 shard: tuple[int, int] = (0, 1), max_attempts: int = 3) -> None:
        if journal.engine.dialect.name != "postgresql":
            raise UsageError("workers share a PostgreSQL journal; this plan's journal is "
                             f"{journal.engine.dialect.name}",
                             hint="set `state: postgresql+psycopg://...` in the plan (see the README, Scale-out)")
        create_tables(journal.engine, work_metadata)
        with journal.engine.begin() as conn:  # work tables made before these existed; blob chunks' path ranges
            missing = conn.execute(text(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'tasks'::regclass AND "
                "attname = 'done_at'), to_regclass('ix_chunks_code_point') IS NULL")).one()
            if any(missing):  # (asked first: ALTER and CREATE INDEX lock their tables even when nothing is to do)
                conn.execute(text("SELECT pg_advisory_xact_lock(7256340101)"))
                conn.execute(text("ALTER TABLE tasks ADD COLUMN IF NOT EXISTS spec text, ADD COLUMN IF NOT EXISTS "
                                  "claimed_at timestamptz, ADD COLUMN IF NOT EXISTS done_at timestamptz"))
                conn.execute(text("CREATE INDEX IF NOT EXISTS ix_chunks_code_point ON chunks "
                                  '(item, stage, chunk COLLATE "C")'))
        self.journal = journal
        self.owner = owner
        self.ttl = ttl
        self.shard = shard
        self.max_attempts = max_attempts

    def add(self, item: str, stage: str, tasks: Sequence[str | tuple[str, str | None]]) -> int:
        """Add tasks not yet known (a second runner adding the same ones changes nothing), each a name or
        (name, spec); returns how many were new."""
        with self.journal.connect() as conn:
            return self._add(conn, item, stage, tasks)

    @staticmethod
    def _add(conn: Connection, item: str, stage: str, tasks: Sequence[str | tuple[str, str | None]]) -> int:
        if not tasks:
            return 0
        named = [(t, None) if isinstance(t, str) else t for t in tasks]
        rows = [{"item": item, "stage": stage, "task": t, "bucket": bucket_of(t), "status": "pending",
                 "fence": 0, "attempts": 0, "units": 0, "spec": spec} for t, spec in named]
        statement = postgresql_insert(tasks_t).on_conflict_do_nothing(
            index_elements=[tasks_t.c.item, tasks_t.c.stage, tasks_t.c.task]).returning(tasks_t.c.id)
        return len(conn.execute(statement, rows).all())

    def split(self, claim: Claim, tasks: Sequence[tuple[str, str | None]]) -> bool:
        """Mark a task done and add the tasks that replace it, in one transaction: both, or (when a newer
        claim superseded this one) neither, so a task reclaimed after its runner died cannot leave two
        different sets of replacements. A split moves nothing itself: its units are 0."""
        with self.journal.connect() as conn:
            if not conn.execute(update(tasks_t).where(self._held(claim)).values(
                    status="done", units=0, lease_until=None, done_at=func.clock_timestamp())).rowcount:
                return False  # nothing was written
            self._add(conn, claim.item, claim.stage, tasks)
        return True

    def claim(self, item: str, stage: str, limit: int = 1) -> list[Claim]:
        """Up to `limit` claimable tasks (pending, or leased with an expired lease, and tried fewer than
        `max_attempts` times), this runner's shard first, then by hash; each with its new fence."""
        index, count = self.shard
        order = f"(bucket % {count}) <> {index}, bucket, id" if count > 1 else "bucket, id"
        with self.journal.connect() as conn:
            rows = conn.execute(text(
                "UPDATE tasks SET status = 'leased', owner = :owner, fence = fence + 1, attempts = attempts + 1, "
                "lease_until = clock_timestamp() + make_interval(secs => :ttl), claimed_at = clock_timestamp() "
                "WHERE id IN (SELECT id FROM tasks WHERE item = :item AND stage = :stage AND attempts < :most "
                "AND (status = 'pending' OR status = 'leased' AND lease_until < clock_timestamp()) "
                f"ORDER BY {order} LIMIT :limit FOR UPDATE SKIP LOCKED) RETURNING id, task, fence, bucket, spec"),
                {"owner": self.owner, "ttl": self.ttl, "item": item, "stage": stage, "most": self.max_attempts,
                 "limit": limit}).all()
        rows = sorted(rows, key=lambda r: (r[3] % count != index, r[3], r[0]))  # RETURNING keeps no order
        return [Claim(int(r[0]), item, stage, str(r[1]), int(r[2]), r[4]) for r in rows]

    def heartbeat(self, claims: Sequence[Claim]) -> list[Claim]:
        """Extend these claims' leases; returns the claims this runner no longer holds (a newer claim exists)."""
        lost = []
        with self.journal.connect() as conn:
            for claim in claims:
                held = conn.execute(update(tasks_t).where(self._held(claim)).values(
                    lease_until=func.clock_timestamp() + text(f"make_interval(secs => {float(self.ttl)})"))).rowcount
                if not held:
                    lost.append(claim)
        return lost

    def done(self, claim: Claim, units: int = 0, records: Sequence[ChunkRecord] = ()) -> bool:
        """Mark the task done and write its journal records, in one transaction; False (and nothing written) when
        a newer claim superseded this one."""
        with self.journal.connect() as conn:
            if not conn.execute(update(tasks_t).where(self._held(claim)).values(
                    status="done", units=units, lease_until=None, done_at=func.clock_timestamp())).rowcount:
                return False
            for item, stage, chunk, status, count, detail in records:
                self.journal.mark_chunks(item, stage, [(chunk, status, count, detail)], conn=conn)
        return True

    def failed(self, claim: Claim, error: str, final: bool = False) -> bool:
        """Give the task back after a failure: claimable again until `max_attempts`, then failed (at once when
        `final`: another attempt would fail the same way)."""
        most = 0 if final else int(self.max_attempts)
        with self.journal.connect() as conn:
            return bool(conn.execute(update(tasks_t).where(self._held(claim)).values(
                status=text(f"CASE WHEN attempts >= {most} THEN 'failed' ELSE 'pending' END"),
                error=error[:2000], lease_until=None)).rowcount)

    def errors(self, item: str, stage: str) -> list[str]:
        """The errors of the stage's failed tasks (each once)."""
        with self.journal.connect() as conn:
            return [str(r[0]) for r in conn.execute(select(tasks_t.c.error).where(and_(
                tasks_t.c.item == item, tasks_t.c.stage == stage, tasks_t.c.status == "failed",
                tasks_t.c.error.is_not(None))).distinct().order_by(tasks_t.c.error))]

    def done_tasks(self, item: str, stage: str) -> list[tuple[str, str | None]]:
        """(name, spec) of the stage's tasks done (a blob load's chunks, which a verification in parts reuses)."""
        with self.journal.connect() as conn:
            return [(str(r[0]), r[1]) for r in conn.execute(select(tasks_t.c.task, tasks_t.c.spec).where(and_(
                tasks_t.c.item == item, tasks_t.c.stage == stage, tasks_t.c.status == "done")))]

    def retry(self, item: str) -> int:
        """A new run retries: the item's failed tasks are claimable again, `max_attempts` more times each."""
        with self.journal.connect() as conn:
            return int(conn.execute(update(tasks_t).where(and_(tasks_t.c.item == item, tasks_t.c.status == "failed"))
                                    .values(status="pending", attempts=0)).rowcount or 0)

    def forget(self, item: str, stages: Sequence[str]) -> None:
        """Drop an item's tasks of these stages (a finished verification's, before the next one's are added);
        a runner still holding one of them is refused when it marks it done."""
        with self.journal.connect() as conn:
            conn.execute(tasks_t.delete().where(and_(tasks_t.c.item == item, tasks_t.c.stage.in_(stages))))

    def release(self, claims: Sequence[Claim]) -> None:
        """Give these tasks back unfinished (a worker asked to stop): claimable at once, the attempt not counted."""
        with self.journal.connect() as conn:
            for claim in claims:
                conn.execute(update(tasks_t).where(self._held(claim)).values(
                    status="pending", lease_until=None, attempts=tasks_t.c.attempts - 1))

    def holder(self, item: str, stage: str, task: str) -> tuple[str | None, int, str]:
        """(owner, fence, status) of one task as the journal has it."""
        with self.journal.connect() as conn:
            row = conn.execute(select(tasks_t.c.owner, tasks_t.c.fence, tasks_t.c.status).where(and_(
                tasks_t.c.item == item, tasks_t.c.stage == stage, tasks_t.c.task == task))).one()
        return row[0], int(row[1]), str(row[2])

    def progress(self, item: str, stage: str) -> Progress:
        with self.journal.connect() as conn:
            row = conn.execute(text(
                "SELECT count(*) FILTER (WHERE status = 'pending' OR status = 'leased' AND lease_until < "
                "clock_timestamp() AND attempts < :most), "
                "count(*) FILTER (WHERE status = 'leased' AND lease_until >= clock_timestamp()), "
                "count(*) FILTER (WHERE status = 'done'), "
                "count(*) FILTER (WHERE status = 'failed' OR status = 'leased' AND lease_until < clock_timestamp() "
                "AND attempts >= :most), "
                "coalesce(sum(units) FILTER (WHERE status = 'done'), 0) "
                "FROM tasks WHERE item = :item AND stage = :stage"),
                {"item": item, "stage": stage, "most": self.max_attempts}).one()
        return Progress(*(int(v) for v in row))

    def _held(self, claim: Claim) -> ColumnElement[bool]:
        return and_(tasks_t.c.id == claim.id, tasks_t.c.fence == claim.fence, tasks_t.c.owner == self.owner,
                    tasks_t.c.status == "leased")


def live_leases(journal: Journal) -> list[tuple[str, str, str]]:
    """(owner, item, task) of every live lease in a journal that workers use (none elsewhere): cutover refuses
    while any exists."""
    if not _has_work_table(journal):
        return []
    with journal.connect() as conn:
        return [(str(r[0]), str(r[1]), str(r[2])) for r in conn.execute(text(
            "SELECT owner, item, task FROM tasks WHERE status = 'leased' AND lease_until >= clock_timestamp() "
            "ORDER BY owner, item, task"))]


def runners(journal: Journal, item: str) -> list[dict[str, object]]:
    """Per worker that claimed any of the item's tasks, computed in the journal database: tasks done, the units
    its load tasks moved, the rows its verify parts checked and the paths its current sync cycle's parts compared,
    live leases and when the latest one ends (for `status`). Empty without workers."""
    rows = _per_item(journal, item, (
        "SELECT owner, count(*) FILTER (WHERE status = 'done'), coalesce(sum(units) FILTER (WHERE status = "
        "'done' AND stage = 'load'), 0), count(*) FILTER (WHERE status = 'leased' AND lease_until >= "
        "clock_timestamp()), max(lease_until) FILTER (WHERE status = 'leased' AND lease_until >= "
        "clock_timestamp()), coalesce(sum(units) FILTER (WHERE status = 'done' AND stage = 'verify'), 0), "
        "coalesce(sum(units) FILTER (WHERE status = 'done' AND stage = 'sync'), 0), "
        "extract(epoch FROM max(done_at) - min(claimed_at)) "
        "FROM tasks WHERE item = :item AND owner IS NOT NULL GROUP BY owner ORDER BY owner"))
    return [{"owner": r[0], "done": int(r[1]), "units": int(r[2]), "leased": int(r[3]),
             "lease_until": r[4].isoformat() if r[4] else None, "verified": int(r[5]), "synced": int(r[6]),
             "units_per_second": _rate(int(r[2]) + int(r[5]) + int(r[6]), r[7])} for r in rows]


def stages(journal: Journal, item: str) -> list[dict[str, object]]:
    """Per stage of the item's claimable work, computed in the journal database: tasks done of all, pending and
    leased, failed, units done, units per second since the first claim and, while tasks remain, an ETA at the
    pace so far (tasks done per second of wall time, all workers together). Empty without workers."""
    rows = _per_item(journal, item, (
        "SELECT stage, count(*), count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status IN "
        "('pending', 'leased')), count(*) FILTER (WHERE status = 'failed'), coalesce(sum(units) FILTER "
        "(WHERE status = 'done'), 0), extract(epoch FROM max(done_at) - min(claimed_at)), "
        "extract(epoch FROM clock_timestamp() - min(claimed_at)) "
        "FROM tasks WHERE item = :item GROUP BY stage ORDER BY min(id)"))
    out: list[dict[str, object]] = []
    for stage, total, done, left, failed, units, busy, since in rows:
        eta = None
        if left and done and since:  # at the pace so far: wall time per task done, all workers together
            eta = round(float(since) / int(done) * int(left), 1)
        out.append({"stage": stage, "tasks": int(total), "done": int(done), "left": int(left),
                    "failed": int(failed), "units": int(units), "units_per_second": _rate(int(units), busy),
                    "eta_seconds": eta})
    return out


def _per_item(journal: Journal, item: str, sql: str) -> list[Any]:
    """The rows of one aggregate over an item's tasks (none where no worker made the work table)."""
    if not _has_work_table(journal):
        return []
    with journal.connect() as conn:
        return list(conn.execute(text(sql), {"item": item}).all())


def _rate(units: int, seconds: Any) -> float | None:
    return round(units / float(seconds), 1) if units and seconds and float(seconds) > 0 else None


def _has_work_table(journal: Journal) -> bool:
    """A PostgreSQL journal in which workers made the work table (none elsewhere)."""
    if journal.engine.dialect.name != "postgresql":
        return False
    with journal.connect() as conn:
        return conn.execute(text("SELECT to_regclass('tasks')")).scalar() is not None
