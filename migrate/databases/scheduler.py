"""The load's one pool of workers: tables side by side as well as the chunks of one table, each table opened
by a frozen transaction where it may be, and a table's index builds and ANALYZE as soon as its rows are in,
beside other tables' copies. Journaling stays in the calling thread (`start`, `done`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from migrate.databases import load as loading
from migrate.databases.keyranges import KeyRange
from migrate.databases.tables import TablePair

OPENING_MAX_ROWS = 1_000_000  # rows' worth of chunks an opening transaction copies (what a kill in it costs)


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


def size_openings(tables: list[TableLoad], chunk_rows: int, throttled: bool = False) -> None:
    """How many chunks each table's opening transaction copies: the first OPENING_MAX_ROWS rows' worth, so
    all of a table up to that size (copied whole and frozen, as pgcopydb copies a table it does not split),
    and of a larger one its first part, the rest following in parallel chunks. Tables are copied side by
    side either way. `throttled` (the item has limits): one chunk, so rates and pauses hold chunk by chunk."""
    cap = 1 if throttled else max(1, OPENING_MAX_ROWS // max(1, chunk_rows))
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
        if table.chunks and table.chunks[0][2] == loading.FREEZE:
            opening = table.chunks[: max(1, table.opening)]
            whole = KeyRange(opening[0][1].lo, opening[-1][1].hi)
            self._ready.append(_Job(table, partial(_copy, table.pair, whole, loading.FREEZE),
                                    [i for i, _, _ in opening]))
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
        opened = table.chunks[0][2] == loading.FREEZE
        table.chunks = [c for c in table.chunks if c[0] not in job.chunks]
        if opened:  # emptied by us in that transaction: the other chunks' ranges hold no row
            table.chunks = [(i, r, loading.FRESH) for i, r, _ in table.chunks]
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
    return loading.copy_range(pair, rng, mode)  # looked up when called: tests wrap it
