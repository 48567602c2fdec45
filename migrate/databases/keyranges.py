"""Keyset chunking: split a table into ranges of its key (composite keys too), each (lo, hi] in key order.

A range is stored in the journal, so a resumed load works on exactly the ranges it started with; the first
range is open below and the last open above, so the ranges always cover every possible key.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, select, true
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, TableClause

from migrate.databases.dialects import DialectOps

Key = tuple[Any, ...]


@dataclass(frozen=True)
class KeyRange:
    """Keys k with lo < k <= hi (None: unbounded on that side)."""

    lo: Key | None
    hi: Key | None

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else ",".join(map(str, self.lo))
        hi = "+inf" if self.hi is None else ",".join(map(str, self.hi))
        return f"({lo} .. {hi}]"


class KeyOrder:
    """The key columns of one side's table, as used in predicates and ORDER BY.

    Text keys are compared in one byte order on both sides, always (collation `C` on PostgreSQL, `BINARY` on
    SQLite, a `_BIN2` collation on SQL Server), so both sides put every key into the same range whatever the
    columns' own collations (an ICU locale on one side, `C` on the other, or one glibc version against
    another). Python compares str by code point, which is the same order as UTF-8 bytes.
    """

    def __init__(self, ops: DialectOps, clause: TableClause, key: Sequence[str],
                 text_columns: Sequence[str] = ()) -> None:
        self.ops = ops
        self.clause = clause
        self.key = list(key)
        collation = ops.text_key_collation()
        self.columns: list[ColumnElement[Any]] = []
        for name in self.key:
            col: ColumnElement[Any] = clause.c[name]
            if collation and name in text_columns:
                col = col.collate(collation)
            self.columns.append(col)

    def where(self, rng: KeyRange) -> ColumnElement[bool]:
        terms = []
        if rng.lo is not None:
            terms.append(self.ops.key_after(self.columns, rng.lo))
        if rng.hi is not None:
            terms.append(self.ops.key_upto(self.columns, rng.hi))
        return and_(*terms) if terms else true()

    def boundaries(self, conn: Connection, step: int, rng: KeyRange | None = None,
                   limit: int | None = None) -> list[Key]:
        """Every `step`-th key within `rng`, walking the key index (at most `limit` of them)."""
        rng = rng or KeyRange(None, None)
        found: list[Key] = []
        last = rng.lo
        raw_key = [self.clause.c[k] for k in self.key]
        while limit is None or len(found) < limit:
            query = (select(*raw_key).where(self.where(KeyRange(last, rng.hi)))
                     .order_by(*self.columns).offset(step - 1).limit(1))
            row = conn.execute(query).first()
            if row is None:
                break
            last = tuple(row)
            found.append(last)
        return found


def split(bounds: Sequence[Key], outer: KeyRange | None = None) -> list[KeyRange]:
    """Ranges between consecutive boundaries, covering all of `outer`."""
    outer = outer or KeyRange(None, None)
    edges: list[Key | None] = [outer.lo, *bounds]
    ranges = [KeyRange(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    if bounds and outer.hi is not None and tuple(bounds[-1]) == tuple(outer.hi):
        return ranges
    ranges.append(KeyRange(edges[-1], outer.hi))
    return ranges


# -- journal encoding of key values --

def _encode_value(value: Any) -> list[Any]:
    if value is None or isinstance(value, (bool, int, str, float)):
        return ["v", value]
    if isinstance(value, Decimal):
        return ["dec", str(value)]
    if isinstance(value, datetime):
        return ["dt", value.isoformat()]
    if isinstance(value, date):
        return ["d", value.isoformat()]
    if isinstance(value, time):
        return ["t", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["uuid", str(value)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["b64", base64.b64encode(bytes(value)).decode()]
    return ["v", str(value)]


def _decode_value(item: list[Any]) -> Any:
    tag, value = item
    return {
        "v": lambda v: v,
        "dec": Decimal,
        "dt": datetime.fromisoformat,
        "d": date.fromisoformat,
        "t": time.fromisoformat,
        "uuid": uuid.UUID,
        "b64": base64.b64decode,
    }[tag](value)


def encode_key(key: Key | None) -> list[list[Any]] | None:
    return None if key is None else [_encode_value(v) for v in key]


def decode_key(data: list[list[Any]] | None) -> Key | None:
    return None if data is None else tuple(_decode_value(v) for v in data)


def encode_ranges(ranges: Sequence[KeyRange]) -> list[list[Any]]:
    return [[encode_key(r.lo), encode_key(r.hi)] for r in ranges]


def decode_ranges(data: Sequence[Sequence[Any]]) -> list[KeyRange]:
    return [KeyRange(decode_key(lo), decode_key(hi)) for lo, hi in data]
