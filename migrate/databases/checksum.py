"""Count and checksum per key range, computed inside each database, bisected down to the rows that differ.

A range's checksum is the sum over its rows of the low 60 bits of md5(row text), where the row text is
built from each column's canonical text (see values.py) by the database itself. PostgreSQL on both sides uses
its own 64-bit `hashtextextended` of the row text instead of md5 (same idea, half the cost), or, where both
servers hash every column's type alike (PostgreSQL 14+, same base types, see `record_hash_types`), the row's
own hash without building its text (`hash_record_extended`, about a third of that). Ranges whose count and
checksum agree on both sides are equal; the others are split (by the keys of the side with more rows) until
they are small enough to compare row by row.

A comparison can be narrowed to the rows a condition selects on each side (`where`): sync compares the rows of
its watermark overlap that way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, literal_column, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from migrate.databases.dialects import raw_sql
from migrate.databases.dialects.postgresql import record_hash_types
from migrate.databases.keyranges import Key, KeyRange, split
from migrate.databases.tables import Side, TablePair
from migrate.databases.values import same_value

LEAF_ROWS = 2000  # compare row by row at or below this many rows
FANOUT = 8  # sub-ranges per bisection step
STREAM_BATCH = 5000


@dataclass
class RowDifference:
    """One differing row: its kind, its key as text, the differing columns, and its raw key per side."""

    kind: str  # missing_on_target | missing_on_source | different
    key_text: str
    columns: list[str] = field(default_factory=list)
    source_key: Key | None = None
    target_key: Key | None = None


@dataclass
class RangeSums:
    count: int
    sums: tuple[int, ...]


@dataclass
class CompareStats:
    ranges: int = 0
    bisected: int = 0
    leaves: int = 0
    rows_compared: int = 0
    source_rows: int = 0
    target_rows: int = 0


class KeyRangeChecksum:
    """Compares one table's two sides range by range; `key_only` compares which keys exist, not values."""

    bucket_scans = True  # one grouped scan per side where the dialect allows (see _bucket_sums)

    def __init__(self, pair: TablePair, *, key_only: bool = False, workers: int = 2,
                 leaf_rows: int = LEAF_ROWS, where: Callable[[Side], ColumnElement[bool]] | None = None) -> None:
        self.pair = pair
        self.key_only = key_only
        self.workers = max(1, workers)
        self.leaf_rows = leaf_rows
        self.names = pair.key if key_only else pair.columns
        self.stats = CompareStats()
        self._where = {id(side): where(side) if where else None for side in (pair.source, pair.target)}
        self._sql = {id(side): self._sums_sql(side) for side in (pair.source, pair.target)}

    def _narrow(self, query: Any, side: Side) -> Any:
        condition = self._where[id(side)]
        return query if condition is None else query.where(condition)

    # -- aggregates --

    def _sums_sql(self, side: Side) -> list[str]:
        if self.key_only and len(self.pair.key) == 1 and side.kinds[self.pair.key[0]].kind == "int":
            col = side.ops.quote(self.pair.key[0])
            sums = side.ops.native_int_key_sums_sql(col) if not self.pair.cross else None
            return sums or side.ops.int_key_sums_sql(col)
        if not self.key_only and record_hash(self.pair):
            return [side.ops.record_hash_sum_sql([side.ops.quote(n) for n in self.names])]  # type: ignore[attr-defined]
        row_text = side.row_text(self.names)
        hashed = side.ops.native_hash_sum_sql(row_text) if not self.pair.cross else None
        return [hashed or side.ops.hash_sum_sql(row_text)]

    def filtered_sums(self, side: Side) -> list[Any]:
        """Count and checksum(s) of the whole table on one side as aggregates narrowed by `where` (FILTER), to
        share one scan with other aggregates (`first_pass`; PostgreSQL, whose sums are each one SUM)."""
        condition = self._where[id(side)]
        aggregates: list[Any] = [func.count(), *[func.sum(literal_column(_summed(s))) for s in self._sql[id(side)]]]
        return [a.filter(condition) for a in aggregates] if condition is not None else aggregates

    def sums(self, side: Side, conn: Connection, rng: KeyRange) -> RangeSums:
        """Count and checksum(s) of one side's rows in `rng` (rng in that side's values)."""
        query = select(func.count(), *[raw_sql(s) for s in self._sql[id(side)]]).select_from(side.clause)
        row = conn.execute(self._narrow(query.where(side.order.where(rng)), side)).one()
        return RangeSums(int(row[0]), tuple(int(v or 0) for v in row[1:]))

    # -- comparison --

    def compare(self, ranges: list[KeyRange], top: bool = True,
                totals: tuple[RangeSums, RangeSums] | None = None) -> Iterator[RowDifference]:
        """Every row difference in `ranges` (given in source values), in no particular order. `totals`: the
        whole table's (source, target) sums when already read (`first_pass`), for ranges covering it."""
        pair = self.pair
        whole = top and ranges[0].lo is None and ranges[-1].hi is None
        if whole and (len(ranges) > 1 or totals is not None):
            # the whole table first: one plain aggregate (parallel, no grouping) per side; equal totals mean
            # equal tables (ranges' sums add up to them), which is the common case
            if totals is None:
                with ThreadPoolExecutor(max_workers=2) as pool:
                    src_total = pool.submit(self._all_sums, pair.source, [KeyRange(None, None)])
                    tgt_total = pool.submit(self._all_sums, pair.target, [KeyRange(None, None)])
                    totals = src_total.result()[0], tgt_total.result()[0]
            src, tgt = totals
            self.stats.ranges += 1
            if src.count == tgt.count and src.sums == tgt.sums:
                self.stats.source_rows += src.count
                self.stats.target_rows += tgt.count
                return
            if len(ranges) == 1:
                self.stats.source_rows += src.count
                self.stats.target_rows += tgt.count
                yield from self._descend(ranges[0], src, tgt)
                return
        self.stats.ranges += len(ranges)
        with ThreadPoolExecutor(max_workers=2) as pool:
            src_future = pool.submit(self._all_sums, pair.source, ranges)
            tgt_future = pool.submit(self._all_sums, pair.target, ranges)
            src_sums, tgt_sums = src_future.result(), tgt_future.result()
        for rng, src, tgt in zip(ranges, src_sums, tgt_sums, strict=True):
            if top:
                self.stats.source_rows += src.count
                self.stats.target_rows += tgt.count
            if src.count != tgt.count or src.sums != tgt.sums:
                yield from self._descend(rng, src, tgt)

    def _all_sums(self, side: Side, ranges: list[KeyRange]) -> list[RangeSums]:
        """Sums of every range on one side: one grouped scan where the dialect can, else a query per range."""
        bucketed = self._bucket_sums(side, ranges)
        if bucketed is not None:
            return bucketed
        with ThreadPoolExecutor(max_workers=max(1, self.workers // 2)) as pool:
            return list(pool.map(lambda rng: self._side_sums(side, rng), ranges))

    def _bucket_sums(self, side: Side, ranges: list[KeyRange]) -> list[RangeSums] | None:
        """PostgreSQL, one integer key, ranges covering every key: a single scan grouped by width_bucket(),
        which PostgreSQL can run with parallel workers (instead of one index range scan per range)."""
        pair = self.pair
        if (not self.bucket_scans or side.dialect != "postgresql" or len(pair.key) != 1
                or side.kinds[pair.key[0]].kind != "int" or len(ranges) < 2
                or ranges[0].lo is not None or ranges[-1].hi is not None):
            return None
        bounds = []
        for rng in ranges[:-1]:
            hi = pair.key_on(side, rng.hi, pair.source)
            if hi is None or not isinstance(hi[0], int):
                return None
            bounds.append(hi[0] + 1)  # (lo, hi] == [lo + 1, hi + 1) for integers
        if bounds != sorted(bounds):
            return None
        col = side.ops.quote(pair.key[0])
        bucket = text(f"width_bucket({col}::bigint, CAST(:bounds AS bigint[]))").bindparams(bounds=bounds)
        query = self._narrow(select(bucket, func.count(), *[raw_sql(s) for s in self._sql[id(side)]])
                             .select_from(side.clause), side).group_by(text("1"))
        found: dict[int, RangeSums] = {}
        with side.endpoint.errors(f"checksum of {self.pair.label} failed"), side.endpoint.engine.connect() as conn:
            for row in conn.execute(query):
                found[int(row[0])] = RangeSums(int(row[1]), tuple(int(v or 0) for v in row[2:]))
        empty = RangeSums(0, tuple(0 for _ in self._sql[id(side)]))
        return [found.get(i, empty) for i in range(len(ranges))]

    def _side_sums(self, side: Side, rng: KeyRange) -> RangeSums:
        with side.endpoint.errors(f"checksum of {self.pair.label} failed"), side.endpoint.engine.connect() as conn:
            return self.sums(side, conn, self.pair.range_on(side, rng, self.pair.source))

    def _descend(self, rng: KeyRange, src: RangeSums, tgt: RangeSums) -> Iterator[RowDifference]:
        pair = self.pair
        if src.count == 0 or tgt.count == 0:
            yield from self._one_sided(rng, pair.source if tgt.count == 0 else pair.target)
            return
        if max(src.count, tgt.count) <= self.leaf_rows:
            yield from self._leaf(rng)
            return
        self.stats.bisected += 1
        bigger = pair.source if src.count >= tgt.count else pair.target
        count = max(src.count, tgt.count)
        step = max(1, math.ceil(count / FANOUT))
        with bigger.endpoint.errors(f"checksum of {self.pair.label} failed"), bigger.endpoint.engine.connect() as conn:
            bounds = bigger.order.boundaries(conn, step, pair.range_on(bigger, rng, pair.source), FANOUT - 1)
        bounds = [pair.key_on(pair.source, b, bigger) for b in bounds]  # type: ignore[misc]
        subranges = split(bounds, rng)
        if len(subranges) <= 1:
            yield from self._leaf(rng)
            return
        yield from self.compare(subranges, top=False)

    def _rows(self, side: Side, conn: Connection, rng: KeyRange, columns: list[str]) -> Iterator[Any]:
        key_cols = [side.col(k) for k in self.pair.key]
        norms = [raw_sql(side.norm(n)) for n in columns]
        query = (self._narrow(select(*key_cols, *norms).select_from(side.clause).where(side.order.where(rng)), side)
                 .order_by(*side.order.columns))
        result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(query)
        yield from result

    def _one_sided(self, rng: KeyRange, side: Side) -> Iterator[RowDifference]:
        """Every key of a range that has rows on one side only."""
        pair = self.pair
        kind = "missing_on_target" if side is pair.source else "missing_on_source"
        nkey = len(pair.key)
        self.stats.leaves += 1
        with side.endpoint.errors(f"checksum of {self.pair.label} failed"), side.endpoint.engine.connect() as conn:
            for row in self._rows(side, conn, pair.range_on(side, rng, pair.source), list(pair.key)):
                raw = tuple(row[:nkey])
                text = self._key_text(tuple(row[nkey:]))
                yield RowDifference(kind, text, source_key=raw if side is pair.source else None,
                                    target_key=raw if side is pair.target else None)

    def _fetch(self, side: Side, rng: KeyRange, columns: list[str]) -> dict[tuple[Any, ...], tuple[Key, tuple]]:
        pair = self.pair
        nkey = len(pair.key)
        out: dict[tuple[Any, ...], tuple[Key, tuple]] = {}
        key_pos = [columns.index(k) for k in pair.key]
        with side.endpoint.errors(f"compare of {pair.label} keys {rng} failed"), \
                side.endpoint.engine.connect() as conn:
            for row in self._rows(side, conn, pair.range_on(side, rng, pair.source), columns):
                values = tuple(row[nkey:])
                out[tuple(values[i] for i in key_pos)] = (tuple(row[:nkey]), values)
        return out

    def _leaf(self, rng: KeyRange) -> Iterator[RowDifference]:
        """Row-by-row comparison of a small range, by canonical key."""
        pair = self.pair
        self.stats.leaves += 1
        columns = list(self.names)
        with ThreadPoolExecutor(max_workers=2) as pool:
            fs = pool.submit(self._fetch, pair.source, rng, columns)
            ft = pool.submit(self._fetch, pair.target, rng, columns)
            src, tgt = fs.result(), ft.result()
        self.stats.rows_compared += len(src) + len(tgt)
        kinds = pair.source.kinds
        for ident, (raw, values) in src.items():
            other = tgt.get(ident)
            if other is None:
                yield RowDifference("missing_on_target", self._key_text(ident), source_key=raw)
                continue
            differing = [n for n, a, b in zip(columns, values, other[1], strict=True)
                         if not same_value(kinds[n], a, b, pair.tolerance)]
            if differing:
                yield RowDifference("different", self._key_text(ident), differing, raw, other[0])
        for ident, (raw, _values) in tgt.items():
            if ident not in src:
                yield RowDifference("missing_on_source", self._key_text(ident), target_key=raw)

    def _key_text(self, ident: tuple[Any, ...]) -> str:
        parts = ", ".join(f"{k}={v if v is not None else 'NULL'}" for k, v in zip(self.pair.key, ident, strict=True))
        return f"{self.pair.label}:{parts}"


@dataclass
class FirstPass:
    """One scan per side (`first_pass`): each checker's whole-table (source, target) sums, and the maximum of
    a column on each side."""

    totals: list[tuple[RangeSums, RangeSums]]
    maxima: tuple[Any, Any] = (None, None)


def first_pass(pair: TablePair, checkers: list[KeyRangeChecksum], maximum: str | None = None) -> FirstPass | None:
    """PostgreSQL on both sides: the whole-table count and sums of every checker, each narrowed by its own
    `where` (FILTER), and the maximum of `maximum`, in one scan per side, both sides at once: sync's overlap
    comparison, its key comparison and its lag read the table once instead of three times. None elsewhere."""
    if not (pair.source.dialect == pair.target.dialect == "postgresql") or not checkers:
        return None

    def scan(side: Side) -> tuple[list[RangeSums], Any]:
        columns: list[Any] = []
        for checker in checkers:
            columns += checker.filtered_sums(side)
        if maximum is not None:
            columns.append(func.max(side.col(maximum)))
        with side.endpoint.errors(f"checksum of {pair.label} failed"), side.endpoint.engine.connect() as conn:
            row = conn.execute(select(*columns).select_from(side.clause)).one()
        out, at = [], 0
        for checker in checkers:
            width = 1 + len(checker._sql[id(side)])
            values = row[at:at + width]
            out.append(RangeSums(int(values[0]), tuple(int(v or 0) for v in values[1:])))
            at += width
        return out, row[at] if maximum is not None else None

    # every PostgreSQL checksum is one SUM(...) (see dialects/postgresql.py), so each can take a FILTER
    if not all(_summed(s) for c in checkers for side in (pair.source, pair.target) for s in c._sql[id(side)]):
        return None
    with ThreadPoolExecutor(max_workers=2) as pool:
        src_future, tgt_future = pool.submit(scan, pair.source), pool.submit(scan, pair.target)
        (src, src_max), (tgt, tgt_max) = src_future.result(), tgt_future.result()
    return FirstPass(list(zip(src, tgt, strict=True)), (src_max, tgt_max))


def _summed(aggregate: str) -> str:
    """What `SUM(x)` sums (x), or "" where the aggregate is anything else (`SUM(a) + SUM(b)`, another function)."""
    if not (aggregate.startswith("SUM(") and aggregate.endswith(")")):
        return ""
    depth = 0
    for char in aggregate[4:-1]:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return ""
    return aggregate[4:-1] if depth == 0 else ""


def record_hash(pair: TablePair) -> bool:
    """Both sides PostgreSQL 14+ with the same hashable base types in every moved column, and floats compared
    exactly: a row's own hash (`hash_record_extended`) may stand for its text. Asked once per table."""
    if pair.record_hash is None:
        pair.record_hash = False
        if pair.source.dialect == pair.target.dialect == "postgresql" and pair.tolerance is None:
            types = []
            for side in (pair.source, pair.target):
                with side.endpoint.errors(f"cannot inspect {pair.label}"), side.endpoint.engine.connect() as conn:
                    types.append(record_hash_types(conn, side.ops.qualified(side.clause), pair.columns))
            pair.record_hash = types[0] is not None and types[0] == types[1]
    return pair.record_hash
