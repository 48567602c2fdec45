"""The state journal: runs, item stages, chunks of work, key/value state and an append-only event log.

SQLAlchemy Core over SQLite (default, beside the plan) or PostgreSQL (shared between runners). Every write
commits before the caller moves on, so what the journal says is done is durable.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, overload

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import (
    text as sql_text,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from migrate.errors import LockLost, StateError
from migrate.redact import redact

FORMAT_VERSION = 1
log = logging.getLogger("migrate")

metadata = MetaData()

meta_t = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
runs_t = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("command", String(64), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("outcome", String(32)),
    Column("user", String(128), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("fingerprint", String(64), nullable=False),
)
items_t = Table(
    "items",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("stage", String(16), nullable=False),  # the stage last started or finished
    Column("status", String(16), nullable=False),  # running | done | failed
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("fingerprint", String(64)),  # plan fingerprint when the load finished
    Column("detail", Text),
)
stages_t = Table(
    "stage_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item", String(128), nullable=False, index=True),
    Column("stage", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("run_id", Integer),
    Column("detail", Text),
)
chunks_t = Table(
    "chunks",
    metadata,
    Column("item", String(128), primary_key=True),
    Column("stage", String(16), primary_key=True),
    Column("chunk", String(1024), primary_key=True),
    Column("status", String(16), nullable=False),  # pending | done | failed
    Column("units", Integer, nullable=False, default=0),  # rows or bytes
    Column("detail", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
kv_t = Table(
    "item_state",
    metadata,
    Column("item", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
events_t = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("user", String(128), nullable=False),
    Column("host", String(255), nullable=False),
    Column("command", String(64), nullable=False),
    Column("item", String(128)),
    Column("kind", String(32), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", Text),
)
lock_t = Table(
    "locks",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(255), nullable=False),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("token", String(64), nullable=False),
    Column("acquired_at", DateTime(timezone=True), nullable=False),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
verifications_t = Table(
    "verifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("item", String(128), nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("clean", Boolean, nullable=False),
    Column("checked", Integer, nullable=False),
    Column("differences", Integer, nullable=False),
    Column("detail", Text),
)


def now() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive; everything the journal writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def who() -> tuple[str, str, int]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return user, socket.gethostname(), os.getpid()


_LIFE = {"preflight": 0, "schema": 1, "load": 2, "verify": 3, "rollback": 3.5, "sync": 4, "cutover": 5}


def standing(log: list[dict[str, Any]]) -> tuple[str, str, datetime] | None:
    """(stage, status, at) of an item from its stage log: the furthest stage it finished (a later stage moves it
    on; re-running an earlier one, such as a verify while dual-running, does not; a rollback always does),
    unless the last entry is still running or failed, which is shown as it is."""
    if not log:
        return None
    settled: dict[str, Any] | None = None
    for entry in log:
        if entry["status"] == "done" and (settled is None or entry["stage"] == "rollback"
                                          or _LIFE.get(entry["stage"], 0) >= _LIFE.get(settled["stage"], 0)):
            settled = entry
    shown = log[-1] if log[-1]["status"] != "done" or settled is None else settled
    return shown["stage"], shown["status"], shown["at"]


@dataclass(frozen=True)
class ItemRecord:
    name: str
    kind: str
    stage: str
    status: str
    updated_at: datetime
    fingerprint: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class VerificationRecord:
    item: str
    at: datetime
    clean: bool
    checked: int
    differences: int
    detail: dict[str, Any]


@dataclass
class Fence:
    """The lock this journal's writes are fenced by: its name, the holder's token, and why it was lost, if it was."""

    name: str
    token: str
    lost: str | None = None


class Journal:
    """Durable record of what has been done for one plan."""

    def __init__(self, url: str, command: str = "api") -> None:
        self.url = url
        self.command = command
        self.fence: Fence | None = None  # set by the plan lock while this process holds it
        try:
            self.engine = _make_engine(url)
            create_tables(self.engine, metadata)
            with self.engine.begin() as conn:
                row = conn.execute(select(meta_t.c.value).where(meta_t.c.key == "format")).first()
                if row is None:
                    try:
                        conn.execute(insert(meta_t).values(key="format", value=str(FORMAT_VERSION)))
                    except IntegrityError:
                        pass
                elif int(row[0]) != FORMAT_VERSION:
                    raise StateError(f"state journal format {row[0]} is not {FORMAT_VERSION}; upgrade migrate")
        except (SQLAlchemyError, OSError) as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StateError(f"cannot open the state journal {redact(url)}: {redact(reason)}") from exc

    def close(self) -> None:
        self.engine.dispose()

    # -- runs and events --

    def begin_run(self, fingerprint: str) -> int:
        user, host, pid = who()
        with self._write() as conn:
            result = conn.execute(
                insert(runs_t).values(command=self.command, started_at=now(), user=user, host=host, pid=pid,
                                      fingerprint=fingerprint)
            )
            key = result.inserted_primary_key
            assert key is not None  # always set after an insert
            return int(key[0])

    def end_run(self, run_id: int, outcome: str) -> None:
        with self._write() as conn:
            conn.execute(update(runs_t).where(runs_t.c.id == run_id).values(ended_at=now(), outcome=outcome))

    def event(self, kind: str, message: str, *, item: str | None = None, outcome: str = "ok",
              data: dict[str, Any] | None = None) -> None:
        """Append to the event log (never updated, never deleted); said at INFO (`migrate -v`) too."""
        log.info("%s%s", f"{item}: " if item else "", message)
        user, host, _ = who()
        with self._write() as conn:
            conn.execute(insert(events_t).values(
                at=now(), user=user, host=host, command=self.command, item=item, kind=kind, outcome=outcome,
                message=redact(message), data=redact(json.dumps(data, default=str)) if data else None,
            ))

    def events(self, item: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        query = select(events_t).order_by(events_t.c.id)
        if item is not None:
            query = query.where(events_t.c.item == item)
        if limit:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return [
            {**row, "at": as_utc(row["at"]), "data": json.loads(row["data"]) if row["data"] else None}
            for row in rows
        ]

    # -- items and stages --

    def item(self, name: str) -> ItemRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(items_t).where(items_t.c.name == name)).mappings().first()
        if row is None:
            return None
        return ItemRecord(name=row["name"], kind=row["kind"], stage=row["stage"], status=row["status"],
                          updated_at=as_utc(row["updated_at"]), fingerprint=row["fingerprint"],
                          detail=json.loads(row["detail"]) if row["detail"] else {})

    def standing(self, name: str) -> tuple[str, str, datetime] | None:
        """Where an item stands in its life, for people (`status`, reports): see `standing`."""
        return standing(self.stage_log(name))

    def set_stage(self, item: str, kind: str, stage: str, status: str, *, run_id: int | None = None,
                  detail: dict[str, Any] | None = None, fingerprint: str | None = None) -> None:
        """Record a stage transition: the item row and the stage log, in one transaction."""
        log.info("%s: %s %s", item, stage, status)
        at = now()
        text = redact(json.dumps(detail, default=str)) if detail else None
        values: dict[str, Any] = {"kind": kind, "stage": stage, "status": status, "updated_at": at,
                                  "detail": text}
        if fingerprint is not None:
            values["fingerprint"] = fingerprint
        with self._write() as conn:
            changed = conn.execute(update(items_t).where(items_t.c.name == item).values(**values)).rowcount
            if not changed:
                conn.execute(insert(items_t).values(name=item, **values))
            conn.execute(insert(stages_t).values(item=item, stage=stage, status=status, at=at, run_id=run_id,
                                                 detail=text))

    def stage_log(self, item: str | None = None) -> list[dict[str, Any]]:
        query = select(stages_t).order_by(stages_t.c.id)
        if item is not None:
            query = query.where(stages_t.c.item == item)
        with self.engine.connect() as conn:
            return [{**r, "at": as_utc(r["at"])} for r in conn.execute(query).mappings().all()]

    def last_done(self, item: str, stage: str) -> datetime | None:
        """When `stage` last finished for `item`, or None."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.max(stages_t.c.at)).where(
                    and_(stages_t.c.item == item, stages_t.c.stage == stage, stages_t.c.status == "done")
                )
            ).scalar()
        return as_utc(value)

    # -- chunks --

    def chunks(self, item: str, stage: str, lo: str | None = None,
               hi: str | None = None) -> dict[str, tuple[str, int, dict[str, Any]]]:
        """chunk -> (status, units, detail) for one item and stage; with `lo`, only the chunks named in
        [lo, hi) by code point (a blob worker's chunk of paths; hi None: no end)."""
        where = [chunks_t.c.item == item, chunks_t.c.stage == stage]
        if lo is not None:
            name = chunks_t.c.chunk.collate("C") if self.engine.dialect.name == "postgresql" else chunks_t.c.chunk
            where.append(name >= lo)
            if hi is not None:
                where.append(name < hi)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(chunks_t.c.chunk, chunks_t.c.status, chunks_t.c.units, chunks_t.c.detail).where(and_(*where))
            ).all()
        return {r[0]: (r[1], r[2], json.loads(r[3]) if r[3] else {}) for r in rows}

    def chunk_totals(self, item: str, stage: str) -> dict[str, tuple[int, int]]:
        """status -> (chunks, units) for one item and stage, counted in the journal database (a blob item's
        records are one per file: millions, which `status` must not read one by one)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(chunks_t.c.status, func.count(), func.coalesce(func.sum(chunks_t.c.units), 0))
                .where(and_(chunks_t.c.item == item, chunks_t.c.stage == stage)).group_by(chunks_t.c.status)
            ).all()
        return {str(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def mark_chunks(self, item: str, stage: str, chunks: list[tuple[str, str, int, dict[str, Any] | None]],
                    conn: Any = None) -> None:
        """Upsert many (chunk, status, units, detail) rows in one transaction (one statement on SQLite and
        PostgreSQL: tens of thousands of files a second; a row at a time elsewhere); `conn`: in the caller's
        transaction (a worker's done-mark)."""
        if not chunks:
            return
        at = now()
        values = [{"item": item, "stage": stage, "chunk": chunk, "status": status, "units": units,
                   "detail": json.dumps(detail, default=str) if detail else None, "updated_at": at}
                  for chunk, status, units, detail in chunks]
        dialect = self.engine.dialect.name
        with self._write() if conn is None else nullcontext(conn) as conn:
            if dialect in ("sqlite", "postgresql"):
                upsert: Any = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(chunks_t)
                conn.execute(upsert.on_conflict_do_update(
                    index_elements=[chunks_t.c.item, chunks_t.c.stage, chunks_t.c.chunk],
                    set_={c: upsert.excluded[c] for c in ("status", "units", "detail", "updated_at")},
                ), values)
                return
            for row in values:
                key = and_(chunks_t.c.item == item, chunks_t.c.stage == stage, chunks_t.c.chunk == row["chunk"])
                if not conn.execute(update(chunks_t).where(key).values(**row)).rowcount:
                    conn.execute(insert(chunks_t).values(**row))

    def mark_chunk(self, item: str, stage: str, chunk: str, status: str, units: int = 0,
                   detail: dict[str, Any] | None = None) -> None:
        self.mark_chunks(item, stage, [(chunk, status, units, detail)])

    def clear_chunks(self, item: str, stage: str) -> None:
        with self._write() as conn:
            conn.execute(chunks_t.delete().where(and_(chunks_t.c.item == item, chunks_t.c.stage == stage)))

    # -- per-item key/value state (watermarks, inventories' summaries, continuation tokens) --

    def get(self, item: str, key: str, default: Any = None) -> Any:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(kv_t.c.value).where(and_(kv_t.c.item == item, kv_t.c.key == key))
            ).scalar()
        return default if value is None else json.loads(value)

    def values(self, item: str) -> dict[str, Any]:
        """Every key/value of an item."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(kv_t.c.key, kv_t.c.value).where(kv_t.c.item == item)).all()
        return {str(r[0]): json.loads(r[1]) for r in rows}

    def put(self, item: str, key: str, value: Any) -> None:
        text = json.dumps(value, default=str)
        with self._write() as conn:
            changed = conn.execute(update(kv_t).where(and_(kv_t.c.item == item, kv_t.c.key == key)).values(
                value=text, updated_at=now())).rowcount
            if not changed:
                conn.execute(insert(kv_t).values(item=item, key=key, value=text, updated_at=now()))

    def put_once(self, item: str, key: str, value: Any) -> Any:
        """Store `value` unless the key holds one already, and return what it holds: of runners storing at once,
        the first one's value wins and every one of them reads it back."""
        text = json.dumps(value, default=str)
        dialect = self.engine.dialect.name
        with self._write() as conn:
            row = {"item": item, "key": key, "value": text, "updated_at": now()}
            if dialect in ("sqlite", "postgresql"):
                conn.execute((sqlite_insert if dialect == "sqlite" else postgresql_insert)(kv_t)
                             .on_conflict_do_nothing(index_elements=[kv_t.c.item, kv_t.c.key]).values(**row))
            elif conn.execute(select(kv_t.c.key).where(and_(kv_t.c.item == item, kv_t.c.key == key))).first() is None:
                conn.execute(insert(kv_t).values(**row))
        return self.get(item, key)

    def put_many(self, item: str, values: dict[str, Any]) -> None:
        """`put` of several keys in one transaction (one durable write instead of one per key)."""
        if not values:
            return
        with self._write() as conn:
            for key, value in values.items():
                text = json.dumps(value, default=str)
                changed = conn.execute(update(kv_t).where(and_(kv_t.c.item == item, kv_t.c.key == key)).values(
                    value=text, updated_at=now())).rowcount
                if not changed:
                    conn.execute(insert(kv_t).values(item=item, key=key, value=text, updated_at=now()))

    def forget_item(self, item: str) -> None:
        """Drop an item's chunks and key/value state (its stage log, events and verifications stay)."""
        with self._write() as conn:
            conn.execute(chunks_t.delete().where(chunks_t.c.item == item))
            conn.execute(kv_t.delete().where(kv_t.c.item == item))

    # -- verifications --

    def record_verification(self, item: str, clean: bool, checked: int, differences: int,
                            detail: dict[str, Any] | None = None, at: datetime | None = None) -> None:
        """`at`: what moment the verification vouches for (its start; by default now)."""
        with self._write() as conn:
            conn.execute(insert(verifications_t).values(
                item=item, at=at or now(), clean=clean, checked=checked, differences=differences,
                detail=redact(json.dumps(detail, default=str)) if detail else None))

    def last_verification(self, item: str) -> VerificationRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(verifications_t).where(verifications_t.c.item == item)
                               .order_by(verifications_t.c.id.desc()).limit(1)).mappings().first()
        if row is None:
            return None
        return VerificationRecord(item=row["item"], at=as_utc(row["at"]), clean=bool(row["clean"]),
                                  checked=row["checked"], differences=row["differences"],
                                  detail=json.loads(row["detail"]) if row["detail"] else {})

    def verifications(self, item: str) -> list[VerificationRecord]:
        """Every verification of `item`, oldest first (the board's history of what was found and fixed)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(verifications_t).where(verifications_t.c.item == item)
                                .order_by(verifications_t.c.id)).mappings().all()
        return [VerificationRecord(item=r["item"], at=as_utc(r["at"]), clean=bool(r["clean"]), checked=r["checked"],
                                   differences=r["differences"], detail=json.loads(r["detail"]) if r["detail"] else {})
                for r in rows]

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A transaction without the fence (the lock's own bookkeeping and reads)."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction. While a lock holder owns this journal (`fence`), the transaction first touches the
        lock row with the holder's token: zero rows means the lock was taken over, and nothing is written. The
        touch also holds the row (PostgreSQL row lock, SQLite's single writer) until commit, so a take-over
        cannot slip in between the check and the write."""
        with self.engine.begin() as conn:
            if self.fence is not None:
                if self.fence.lost:
                    raise LockLost(self.fence.lost)
                held = conn.execute(update(lock_t).where(and_(lock_t.c.name == self.fence.name,
                                                              lock_t.c.token == self.fence.token))
                                    .values(token=self.fence.token)).rowcount
                if not held:
                    self.fence.lost = ("another runner took over the plan's lock; this run stopped at its next "
                                       "journal write and wrote nothing more")
                    raise LockLost(self.fence.lost)
            yield conn

    def clock(self) -> datetime:
        """Now, by the journal database's clock on a shared server (PostgreSQL): lock expiry is judged by one
        clock, not by each runner's own. A SQLite journal is local, so the local clock is the journal's."""
        if self.engine.dialect.name != "postgresql":
            return now()
        with self.engine.connect() as conn:
            return as_utc(conn.execute(sql_text("SELECT clock_timestamp()")).scalar_one())


def create_tables(engine: Engine, tables: MetaData) -> None:
    """Create what is missing. On a shared PostgreSQL journal several runners may start at once: the creation
    is serialized by a transaction lock (two CREATE TABLEs of one name would collide in the catalog)."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sql_text("SELECT pg_advisory_xact_lock(7256340101)"))  # 'migrate' journal creation
        tables.create_all(conn)


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except (SQLAlchemyError, ImportError) as exc:
        raise StateError(f"bad state URL {redact(url)}: {redact(exc)}") from exc

