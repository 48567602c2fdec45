"""Full load, one chunk at a time: a chunk replaces its key range on the target in ONE target transaction
(delete the range, copy it), and is journaled only after that commits, so re-running any chunk is harmless
and a `kill -9` at any moment resumes without loss or duplicates. A table's opening (FREEZE) empties the
table instead and copies with `COPY ... FREEZE`; a FRESH chunk needs no delete. `scheduler.py` decides which
chunk runs when.

Fast paths: PostgreSQL to PostgreSQL streams COPY TO STDOUT out of the source into COPY on the target (a big
opening reads it through psql: `copypipe.py`); any other source into PostgreSQL uses COPY FROM STDIN; SQL
Server takes the driver's bulk copy; SQLite executemany. Rows stream through in batches: a table is never
held in memory.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from migrate.databases import copypipe
from migrate.databases.keyranges import KeyRange, split
from migrate.databases.sampledranges import histogram_bounds
from migrate.databases.tables import TablePair

STAGE = "load"
STREAM_BATCH = 5000


def chunk_id(label: str, index: int) -> str:
    return f"{label}#{index}"


def ranges_key(label: str) -> str:
    """The journal key of a table's load key ranges (journaled before its first chunk starts)."""
    return f"ranges:{label}"


def new_ranges(pair: TablePair, chunk_rows: int) -> list[KeyRange]:
    """Key ranges of about `chunk_rows` rows each for a table whose load has not started (the caller journals
    them before any chunk starts, so a resumed load works on exactly these)."""
    src = pair.source
    with src.endpoint.errors("cannot plan chunks"), src.endpoint.engine.connect() as conn:
        bounds = histogram_bounds(pair, conn, chunk_rows)  # PostgreSQL's statistics, where they serve
        return split(bounds if bounds is not None else src.order.boundaries(conn, chunk_rows))


def _source_rows(pair: TablePair, query: Any, rng: KeyRange) -> Iterator[tuple[Any, ...]]:
    src = pair.source
    with src.endpoint.errors(f"read of {pair.label} keys {rng} failed"), src.endpoint.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(query)
        if pair.cross:
            for row in result:
                yield pair.convert_row(row)
        else:
            for row in result:
                yield tuple(row)


REPLACE = "replace"  # delete the chunk's key range, then copy it
FRESH = "fresh"  # the range cannot hold a row (never started on a table we own with no key yet): copy only
FREEZE = "freeze"  # the table's opening chunk: TRUNCATE, then COPY ... FREEZE (PostgreSQL targets)


def copy_range(pair: TablePair, rng: KeyRange, mode: str = REPLACE, fence: int | None = None) -> int:
    """Replace the target's rows in `rng` (source values) with the source's, in one target transaction;
    return rows written.

    `mode` FRESH skips the delete (the journal proves no row of this range was ever written); FREEZE empties
    the whole table in the same transaction (`TRUNCATE`) and copies with `COPY ... FREEZE`: rows arrive
    frozen and the pages all-visible, so neither the index builds nor the first VACUUM rewrite every page.
    The caller gives FREEZE only to the first chunk of a table we own of which no chunk is done.
    `fence` (`migrate worker`): the chunk first takes this lock on the target (`lock_chunk`: PostgreSQL's
    transaction-scoped advisory lock, SQL Server's session-owned application lock), so two runners copying one
    chunk (one of them frozen past its claim's lease) run one after the other and the second replaces the
    first's rows instead of adding to them (the target has no key during the load).
    """
    src, tgt = pair.source, pair.target
    query = select(*pair.source_columns()).where(src.order.where(rng))
    target_range = pair.range_on(tgt, rng, src)
    freeze = mode == FREEZE
    with tgt.endpoint.errors(f"load of {pair.label} keys {rng} failed"), tgt.endpoint.engine.connect() as tconn:
        tconn.begin()  # explicit: the fast paths write through the driver connection, unseen by SQLAlchemy
        if fence is not None:
            tgt.ops.lock_chunk(tconn, fence)
        try:
            if freeze:
                tconn.exec_driver_sql(f"TRUNCATE {tgt.ops.qualified(tgt.clause)}")
            elif mode != FRESH:
                tconn.execute(delete(tgt.clause).where(tgt.order.where(target_range)))
                if tgt.ops.name == "mssql":
                    tconn.commit()  # bulk copy uses its own channel; the delete must be visible to it
                    tconn.begin()
            if src.dialect == tgt.dialect == "postgresql":
                written = _copy_postgres(pair, tconn, query, rng, freeze)  # no index yet: any order will do
            else:
                query = query.order_by(*src.order.columns)
                rows = _source_rows(pair, query, rng)
                opening = {"freeze": True} if freeze else {}  # (COPY ... FREEZE: PostgreSQL's write_rows)
                written = tgt.ops.write_rows(tconn, tgt.clause, pair.columns, rows, **opening)
            tconn.commit()
        finally:
            if fence is not None:
                tgt.ops.unlock_chunk(tconn, fence)
    return written


def _copy_postgres(pair: TablePair, tconn: Connection, query: Any, rng: KeyRange, freeze: bool) -> int:
    src = pair.source
    literal = copypipe.literal_select(query, src.endpoint) \
        if freeze and pair.rows_estimate >= copypipe.MIN_ROWS else None
    if literal is not None:  # a big opening: psql reads the source's COPY in C (copypipe.py)
        ops = pair.target.ops
        fmt = "BINARY" if _same_major(src.endpoint, tconn) else "TEXT"
        names = ", ".join(ops.quote(c) for c in pair.columns)
        with src.endpoint.errors(f"read of {pair.label} keys {rng} failed"):
            return copypipe.copy_through_psql(
                src.endpoint, tconn, literal,
                f"COPY {ops.qualified(pair.target.clause)} ({names}) FROM STDIN (FORMAT {fmt}, FREEZE)", fmt)
    with src.endpoint.errors(f"read of {pair.label} keys {rng} failed"), src.endpoint.engine.connect() as sconn:
        compiled = query.compile(dialect=sconn.dialect)
        written = pair.target.ops.copy_between(  # type: ignore[attr-defined]
            sconn, tconn, str(compiled), compiled.params, pair.target.clause, pair.columns, freeze=freeze)
        sconn.rollback()
    return int(written)


_majors: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()  # endpoint -> server major version


def _same_major(source: Any, tconn: Connection) -> bool:
    """Binary COPY is only promised to read back on the same major version (text always is)."""
    if source not in _majors:
        with source.engine.connect() as conn:
            _majors[source] = int(conn.connection.driver_connection.info.server_version) // 10000
    target = int(tconn.connection.driver_connection.info.server_version) // 10000  # type: ignore[union-attr]
    return _majors[source] == target


def chunk_lock(label: str, index: int) -> int:
    """The target lock of one chunk (a signed 64-bit key)."""
    digest = hashlib.blake2b(f"migrate:load:{label}#{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
