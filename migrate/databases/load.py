"""Full load, chunked by key range: each chunk deletes its range on the target and inserts it again in ONE
target transaction, and is journaled only after that commits, so re-running any chunk is harmless and a
`kill -9` at any moment resumes without loss or duplicates.

Fast paths: PostgreSQL to PostgreSQL streams COPY TO STDOUT out of the source into COPY on the target; any
other source into PostgreSQL uses COPY FROM STDIN; SQL Server takes the driver's bulk copy; SQLite
executemany. Rows stream through in batches: a table is never held in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
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
OPENING_MAX_ROWS = 1_000_000  # rows' worth of chunks an opening transaction copies (what a kill in it costs)


def copy_range(pair: TablePair, rng: KeyRange, mode: str = REPLACE) -> int:
    """Replace the target's rows in `rng` (source values) with the source's, in one target transaction;
    return rows written.

    `mode` FRESH skips the delete (the journal proves no row of this range was ever written); FREEZE empties
    the whole table in the same transaction (`TRUNCATE`) and copies with `COPY ... FREEZE`: rows arrive
    frozen and the pages all-visible, so neither the index builds nor the first VACUUM rewrite every page.
    The caller gives FREEZE only to the first chunk of a table we own of which no chunk is done.
    """
    src, tgt = pair.source, pair.target
    query = select(*pair.source_columns()).where(src.order.where(rng))
    target_range = pair.range_on(tgt, rng, src)
    freeze = mode == FREEZE
    with tgt.endpoint.errors(f"load of {pair.label} keys {rng} failed"), tgt.endpoint.engine.connect() as tconn:
        tconn.begin()  # explicit: the fast paths write through the driver connection, unseen by SQLAlchemy
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
            written = (tgt.ops.write_rows(tconn, tgt.clause, pair.columns, rows, freeze=True)  # type: ignore[call-arg]
                       if freeze else tgt.ops.write_rows(tconn, tgt.clause, pair.columns, rows))
        tconn.commit()
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


_majors: dict[int, int] = {}  # id(endpoint) -> its server's major version


def _same_major(source: Any, tconn: Connection) -> bool:
    """Binary COPY is only promised to read back on the same major version (text always is)."""
    if id(source) not in _majors:
        with source.engine.connect() as conn:
            _majors[id(source)] = int(conn.connection.driver_connection.info.server_version) // 10000
    target = int(tconn.connection.driver_connection.info.server_version) // 10000  # type: ignore[union-attr]
    return _majors[id(source)] == target


@dataclass
class TableLoad:
    """One table's share of the load.

    `chunks`: (index, range, mode) still to copy, in key order. When the first is FREEZE, the table is opened
    by one transaction that empties it and copies its first `opening` chunks (their ranges are contiguous)
    with COPY ... FREEZE, alone; the other chunks follow it in parallel and need no delete. `after`: the
    table's post-load work once every chunk of it is done, phases in order, the jobs of a phase in parallel
    (index builds, then ANALYZE); each job returns a line saying what it did."""

    pair: TablePair
    chunks: list[tuple[int, KeyRange, str]]
    after: Callable[[], list[list[Callable[[], str]]]] = lambda: []
    opening: int = 1
    _phases: list[list[Callable[[], str]]] = field(default_factory=list)
    _left: int = 0  # jobs of the current phase still running


def size_openings(tables: list[TableLoad], chunk_rows: int) -> None:
    """How many chunks each table's opening transaction copies: the first OPENING_MAX_ROWS rows' worth, so
    all of a table up to that size (copied whole and frozen, as pgcopydb copies a table it does not split),
    and of a larger one its first part, the rest following in parallel chunks. Tables are copied side by
    side either way."""
    cap = max(1, OPENING_MAX_ROWS // max(1, chunk_rows))
    for table in tables:
        table.opening = max(1, min(cap, len(table.chunks)))


@dataclass
class _Job:
    table: TableLoad
    run: Callable[[], Any]
    chunks: list[int] = field(default_factory=list)  # chunk indexes it copies; empty: a post-load job


class LoadScheduler:
    """Runs every table's chunks and post-load jobs on one pool of `workers` threads: tables in parallel as
    well as the chunks of one table, and a table's index builds as soon as its rows are in, beside other
    tables' copies. Each job holds at most one connection to each side, so the load never has more than
    `workers` working connections on either side (plus the caller's own).

    In the calling thread: `start` journals chunks as pending before they are submitted (a few at a time, in
    one transaction); `done` journals chunks whose transactions committed (after the next jobs are submitted,
    so workers do not wait on the journal)."""

    def __init__(self, tables: list[TableLoad], workers: int,
                 start: Callable[[list[tuple[TablePair, int]]], None],
                 done: Callable[[list[tuple[TablePair, int, int]]], None], throttle: Any = None,
                 after_ready: Future[Any] | None = None) -> None:
        self.tables = tables
        # post-load work needs this first (pg_dump's post-data, dumped meanwhile): tables whose rows are in
        # wait for it in `_parked` while the workers go on copying
        self.after_ready = after_ready
        self._parked: list[TableLoad] = []
        self.workers = max(1, workers)
        self.start = start
        self.done = done
        self.throttle = throttle
        self.notes: list[str] = []
        self._ready: deque[_Job] = deque()
        self._marked: set[tuple[int, int]] = set()  # (id(table), chunk) journaled as pending

    def run(self) -> int:
        """Copy and build everything; return the rows written."""
        total = 0
        for table in self.tables:
            self._release(table)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            running: dict[Future[Any], _Job] = {}
            self._fill(pool, running)
            try:
                while running or self._parked:
                    waiting: list[Future[Any]] = list(running)
                    if self._parked and self.after_ready is not None:
                        waiting.append(self.after_ready)
                    finished, _ = wait(waiting, return_when=FIRST_COMPLETED)
                    batch: list[tuple[TablePair, int, int]] = []
                    if self._parked and (self.after_ready is None or self.after_ready.done()):
                        parked, self._parked = self._parked, []
                        for table in parked:
                            self._release(table)
                    for future in finished:
                        if future not in running:
                            continue
                        job = running.pop(future)
                        result = future.result()
                        if job.chunks:  # the rows count once, on the first chunk of an opening transaction
                            total += result
                            batch += [(job.table.pair, index, result if n == 0 else 0)
                                      for n, index in enumerate(job.chunks)]
                            self._chunks_done(job)
                        else:
                            self.notes.append(result)
                            self._job_done(job.table)
                    if batch and self.throttle is not None:  # new chunks wait while over the rate or paused
                        self.throttle.rows(sum(rows for _, _, rows in batch))
                    self._fill(pool, running)
                    if batch:
                        self.done(batch)
            except BaseException:
                for future in running:
                    future.cancel()
                raise
        return total

    def _release(self, table: TableLoad) -> None:
        """Queue what the table can do now: its opening transaction alone, else its chunks, else its post-load."""
        if table.chunks and table.chunks[0][2] == FREEZE:
            opening = table.chunks[: max(1, table.opening)]
            whole = KeyRange(opening[0][1].lo, opening[-1][1].hi)
            self._ready.append(_Job(table, partial(_copy, table.pair, whole, FREEZE), [i for i, _, _ in opening]))
        elif table.chunks:
            self._ready.extend(_Job(table, partial(_copy, table.pair, rng, mode), [index])
                               for index, rng, mode in table.chunks)
        elif self.after_ready is not None and not self.after_ready.done():
            self._parked.append(table)
        else:
            table._phases = table.after()
            self._next_phase(table)

    def _chunks_done(self, job: _Job) -> None:
        table = job.table
        opened = table.chunks[0][2] == FREEZE
        table.chunks = [c for c in table.chunks if c[0] not in job.chunks]
        if opened:  # emptied by us in that transaction: the other chunks' ranges hold no row
            table.chunks = [(i, r, FRESH) for i, r, _ in table.chunks]
            self._release(table)
        elif not table.chunks:
            self._release(table)

    def _job_done(self, table: TableLoad) -> None:
        table._left -= 1
        if table._left == 0:
            self._next_phase(table)

    def _next_phase(self, table: TableLoad) -> None:
        while table._phases:
            phase = table._phases.pop(0)
            if phase:  # ahead of the copies still queued: a loaded table gets its indexes beside them
                table._left = len(phase)
                self._ready.extendleft(reversed([_Job(table, job) for job in phase]))
                return

    def _fill(self, pool: ThreadPoolExecutor, running: dict[Future[Any], _Job]) -> None:
        while len(running) < self.workers and self._ready:
            job = self._ready.popleft()
            if any((id(job.table), c) not in self._marked for c in job.chunks):
                upcoming = [(j.table, c) for j in [job, *self._ready] for c in j.chunks
                            if (id(j.table), c) not in self._marked][: max(len(job.chunks), self.workers * 4)]
                self.start([(table.pair, chunk) for table, chunk in upcoming])
                self._marked.update((id(table), chunk) for table, chunk in upcoming)
            running[pool.submit(job.run)] = job


def _copy(pair: TablePair, rng: KeyRange, mode: str) -> int:
    return copy_range(pair, rng, mode)  # looked up when called: tests wrap it
