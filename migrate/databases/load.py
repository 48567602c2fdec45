"""Full load, chunked by key range: each chunk deletes its range on the target and inserts it again in ONE
target transaction, and is journaled only after that commits, so re-running any chunk is harmless and a
`kill -9` at any moment resumes without loss or duplicates.

Fast paths: PostgreSQL to PostgreSQL streams COPY TO STDOUT out of the source into COPY on the target; any
other source into PostgreSQL uses COPY FROM STDIN; SQL Server takes the driver's bulk copy; SQLite
executemany. Rows stream through in batches: a table is never held in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from migrate.databases.keyranges import KeyRange, decode_ranges, encode_ranges, split
from migrate.databases.tables import TablePair
from migrate.state.journal import Journal

STAGE = "load"
STREAM_BATCH = 5000


def chunk_id(label: str, index: int) -> str:
    return f"{label}#{index}"


def plan_ranges(pair: TablePair, journal: Journal, item: str, chunk_rows: int) -> list[KeyRange]:
    """The load's key ranges for a table: from the journal when a load already started, else planned now."""
    stored = journal.get(item, f"ranges:{pair.label}")
    if stored is not None:
        return decode_ranges(stored)
    src = pair.source
    with src.endpoint.errors("cannot plan chunks"), src.endpoint.engine.connect() as conn:
        bounds = src.order.boundaries(conn, chunk_rows)
    ranges = split(bounds)
    journal.put(item, f"ranges:{pair.label}", encode_ranges(ranges))
    return ranges


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


def copy_range(pair: TablePair, rng: KeyRange, fresh: bool = False, fence: int | None = None) -> int:
    """Replace the target's rows in `rng` (source values) with the source's; return rows written.

    `fresh`: the journal proves no row of this range was ever written (the chunk was never started on a table
    we own that has no key yet), so the delete is skipped. `fence` (PostgreSQL targets): the transaction first
    takes this transaction-scoped lock on the target, so two runners copying one chunk (one of them frozen past
    its claim's lease) run one after the other and the second replaces the first's rows instead of adding to
    them (the target has no key during the load).
    """
    src, tgt = pair.source, pair.target
    query = select(*pair.source_columns()).where(src.order.where(rng))
    target_range = pair.range_on(tgt, rng, src)
    with tgt.endpoint.errors(f"load of {pair.label} keys {rng} failed"), tgt.endpoint.engine.connect() as tconn:
        tconn.begin()  # explicit: the fast paths write through the driver connection, unseen by SQLAlchemy
        if fence is not None:
            tconn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": fence})
        if not fresh:
            tconn.execute(delete(tgt.clause).where(tgt.order.where(target_range)))
            if tgt.ops.name == "mssql":
                tconn.commit()  # bulk copy uses its own channel; the delete must be visible to it
                tconn.begin()
        if src.dialect == tgt.dialect == "postgresql":
            written = _copy_postgres(pair, tconn, query, rng)  # the target has no index yet: any order will do
        else:
            query = query.order_by(*src.order.columns)
            written = tgt.ops.write_rows(tconn, tgt.clause, pair.columns, _source_rows(pair, query, rng))
        tconn.commit()
    return written


def _copy_postgres(pair: TablePair, tconn: Connection, query: Any, rng: KeyRange) -> int:
    src = pair.source
    with src.endpoint.errors(f"read of {pair.label} keys {rng} failed"), src.endpoint.engine.connect() as sconn:
        compiled = query.compile(dialect=sconn.dialect)
        written = pair.target.ops.copy_between(  # type: ignore[attr-defined]
            sconn, tconn, str(compiled), compiled.params, pair.target.clause, pair.columns)
        sconn.rollback()
    return int(written)


def run_chunks(work: list[tuple[TablePair, int, KeyRange, bool]], workers: int,
               start: Callable[[list[tuple[TablePair, int]]], None],
               done: Callable[[list[tuple[TablePair, int, int]]], None],
               throttle: Any = None) -> int:
    """Copy every (pair, index, range, fresh) with `workers` threads.

    In this thread, `start` journals chunks as pending before they are submitted (a few at a time, in one
    transaction) and `done` journals the chunks whose transactions have committed.
    """
    workers = max(1, workers)
    total = 0
    queue = list(work)
    marked = 0  # queue[:marked] are journaled as pending
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running: dict[Future[int], tuple[TablePair, int]] = {}

        def submit_upto(limit: int) -> None:
            nonlocal marked
            submitted = len(running)
            while submitted < limit and queue:
                if marked == 0:
                    marked = min(len(queue), workers * 4)
                    start([(p, i) for p, i, _, _ in queue[:marked]])
                pair, index, rng, fresh = queue.pop(0)
                marked -= 1
                running[pool.submit(copy_range, pair, rng, fresh)] = (pair, index)
                submitted += 1

        submit_upto(workers * 2)
        try:
            while running:
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                batch = []
                for future in finished:
                    pair, index = running.pop(future)
                    rows = future.result()
                    total += rows
                    batch.append((pair, index, rows))
                done(batch)
                if throttle is not None:  # new chunks wait while the item is over its rate or paused
                    throttle.rows(sum(rows for _, _, rows in batch))
                submit_upto(workers * 2)
        except BaseException:
            for future in running:
                future.cancel()
            raise
    return total


def chunk_lock(label: str, index: int) -> int:
    """The target lock of one chunk (a signed 64-bit key)."""
    digest = hashlib.blake2b(f"migrate:load:{label}#{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
