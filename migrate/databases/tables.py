"""A moved table seen from both sides: which columns move, how each compares, and how key values and rows
cross from one dialect to the other."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Text, cast, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, TableClause, sqltypes

from migrate.databases.dialects import DialectOps, ops_for
from migrate.databases.endpoint import Endpoint
from migrate.databases.keyranges import Key, KeyOrder, KeyRange
from migrate.databases.schema import TableInfo
from migrate.databases.typemap import stored_as_text
from migrate.databases.values import ColumnKind, Converter, converter, float_digits
from migrate.plan.model import Incremental


@dataclass
class Side:
    """One side of a table: its endpoint, dialect operations, columns and how it compares its values."""

    endpoint: Endpoint
    ops: DialectOps
    info: TableInfo
    columns: list[str]  # the moved columns, in source order
    kinds: dict[str, ColumnKind]  # compare kinds on this side
    order: KeyOrder

    @property
    def dialect(self) -> str:
        return self.endpoint.dialect

    @property
    def clause(self) -> TableClause:
        return self.order.clause

    def col(self, name: str) -> ColumnElement[Any]:
        return self.clause.c[name]

    def norm(self, name: str) -> str:
        """SQL for the canonical text of a column."""
        return self.ops.norm_sql(self.ops.quote(name), self.kinds[name])

    def row_text(self, names: Sequence[str]) -> str:
        return self.ops.row_text_sql([(n, self.kinds[n]) for n in names])

    def max_of(self, conn: Connection, name: str) -> Any:
        return conn.execute(select(func.max(self.col(name)))).scalar()


@dataclass(frozen=True)
class Watermark:
    """A table's watermark column, which every write advances, and how far behind it sync re-reads."""

    column: str
    overlap: float


@dataclass
class TablePair:
    """Source and target of one table."""

    label: str
    source: Side
    target: Side
    key: list[str]
    columns: list[str]
    watermark: Watermark | None
    tolerance: float | None  # None: floats compared exactly
    to_target: list[Converter | None]  # per moved column
    key_to_target: list[Converter | None]
    key_to_source: list[Converter | None]
    as_text: frozenset[str] = frozenset()  # columns with no target type: read from the source as its text
    sync_text: frozenset[str] = frozenset()  # same dialect: values a driver reads but cannot write back as read
    unique_on_target: bool | None = None  # the target enforces the key (ON CONFLICT works); None: not looked yet
    record_hash: bool | None = None  # both sides hash rows alike (checksum.record_hash); None: not looked yet
    throttle: Any = None  # the item's limiter during sync (migrate.throttle.Throttle)
    rows_read: int = 0  # rows a sync cycle read from the source to write (not the rows it only compared)
    rows_estimate: int = 0  # the source's estimate, set by the load (big openings copy through psql)

    @property
    def cross(self) -> bool:
        return self.source.dialect != self.target.dialect

    def source_columns(self) -> list[ColumnElement[Any]]:
        """The moved columns as the source is read: a column without a target type comes as the source's own
        text of it (so the stored text equals what the source's checksum hashes)."""
        return [cast(self.source.col(n), Text) if n in self.as_text else self.source.col(n) for n in self.columns]

    def sync_columns(self, side: Side) -> list[ColumnElement[Any]]:
        """The moved columns as a sync cycle reads `side` to compare and write rows: as `source_columns()`, and
        JSON as its own text (a driver cannot write back the dicts and lists it reads)."""
        texts = self.sync_text | (self.as_text if side is self.source else frozenset())
        return [cast(side.col(n), Text) if n in texts else side.col(n) for n in self.columns]

    def convert_row(self, row: Sequence[Any]) -> tuple[Any, ...]:
        if not self.cross:
            return tuple(row)
        return tuple(v if f is None else f(v) for v, f in zip(row, self.to_target, strict=True))

    def key_on(self, side: Side, key: Key | None, origin: Side) -> Key | None:
        """A key written in `origin`'s values, as `side` stores it."""
        if key is None or side is origin or not self.cross:
            return key
        funcs = self.key_to_target if side is self.target else self.key_to_source
        return tuple(v if f is None else f(v) for v, f in zip(key, funcs, strict=True))

    def range_on(self, side: Side, rng: KeyRange, origin: Side) -> KeyRange:
        return KeyRange(self.key_on(side, rng.lo, origin), self.key_on(side, rng.hi, origin))


def compare_kinds(source: TableInfo, side: TableInfo | None, names: Sequence[str], tolerance: float | None,
                  singles: frozenset[str] = frozenset()) -> dict[str, ColumnKind]:
    """Kinds used for comparison: the source's kind and scale, this side's time-zone awareness; floats exact
    without a tolerance (`singles`: float4 columns, compared as 32-bit values)."""
    digits = float_digits(tolerance)
    out: dict[str, ColumnKind] = {}
    for name in names:
        base = source.column(name).kind
        own = side.column(name).kind if side is not None and name in side.names else base
        scale = digits if base.kind == "float" else base.scale
        native = base.kind == "decimal" and own.kind == "decimal" and scale is not None and own.scale == scale
        out[name] = ColumnKind(base.kind, scale, own.tz, native, single=name in singles)
    return out


DEFAULT_FLOAT_TOLERANCE = 1e-9
EXACT_FLOAT_DIALECTS = {"postgresql", "sqlite"}  # both print a float's shortest exact text (see float_text)


def make_pair(source_ep: Endpoint, target_ep: Endpoint, source: TableInfo, target: TableInfo,
              watermark: Incremental | None, tolerance: float | None) -> TablePair:
    """Both sides of a table, with the converters a row or key needs to cross dialects."""
    names = source.names
    key = list(source.key)
    cross = source_ep.dialect != target_ep.dialect
    if tolerance is None and not {source_ep.dialect, target_ep.dialect} <= EXACT_FLOAT_DIALECTS:
        tolerance = DEFAULT_FLOAT_TOLERANCE  # SQL Server cannot print a float exactly: compare within 1e-9
    singles = frozenset(n for n in names if source_ep.dialect == "postgresql"
                        and isinstance(source.column(n).type, sqltypes.REAL))
    src_kinds = compare_kinds(source, source, names, tolerance, singles)
    tgt_kinds = compare_kinds(source, target, names, tolerance, singles)
    text_keys = [k for k in key if src_kinds[k].kind == "text"]
    src_ops = ops_for(source_ep.dialect, source_ep.engine.dialect)
    tgt_ops = ops_for(target_ep.dialect, target_ep.engine.dialect)
    clause_t = target.clause()
    src_side = Side(source_ep, src_ops, source, names, src_kinds,
                    KeyOrder(src_ops, source.clause(), key, text_keys))
    tgt_side = Side(target_ep, tgt_ops, target, names, tgt_kinds,
                    KeyOrder(tgt_ops, clause_t, key, text_keys))
    to_target = [converter(src_kinds[n], source_ep.dialect, target_ep.dialect, tgt_kinds[n]) for n in names]
    key_to_target = [converter(src_kinds[k], source_ep.dialect, target_ep.dialect, tgt_kinds[k]) for k in key]
    key_to_source = [converter(tgt_kinds[k], target_ep.dialect, source_ep.dialect, src_kinds[k]) for k in key]
    # read as the source's own text: columns with no target type, and PostgreSQL char(n), whose text has no pad
    # (a target of another dialect would store the spaces, and never compare equal)
    as_text = frozenset(n for n in names if cross and (
        stored_as_text(source.column(n).type, source_ep.dialect)
        or source_ep.dialect == "postgresql" and type(source.column(n).type) in (sqltypes.CHAR, sqltypes.NCHAR)))
    # within one dialect, some values travel through sync as their own text: JSON (a driver hands back dicts and
    # lists, which it cannot write again, and a list would be taken for an array), PostgreSQL time (no Python
    # time holds '24:00:00') and interval (a timedelta has no months: '1 year' would come back as '365 days')
    sync_text = frozenset(n for n in names if not cross and (
        isinstance(source.column(n).type, sqltypes.JSON) or source_ep.dialect == "postgresql"
        and isinstance(source.column(n).type, sqltypes.Time | sqltypes.Interval | postgresql.INTERVAL)))
    mark = Watermark(watermark.column, watermark.overlap) if watermark and watermark.column else None
    return TablePair(source.label, src_side, tgt_side, key, names, mark, tolerance, to_target,
                     key_to_target, key_to_source, as_text, sync_text)
