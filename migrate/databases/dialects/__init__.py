"""Per-dialect behaviour behind one small interface: canonical-text SQL, checksum aggregates, bulk writes,
upserts. One module per dialect; adding a database is one new module registered in `ops_for`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, delete, literal_column, or_, tuple_
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import ColumnElement, TableClause

from migrate.databases.values import ColumnKind
from migrate.errors import UsageError

KEY_MOD = 2147483647  # fast integer-key checksum: sum(k % KEY_MOD) and sum((k % 65521) * (k % 65519))


class DialectOps:
    """What differs between databases, for one dialect."""

    name = "generic"
    supports_row_values = True  # (a, b) > (x, y) and (a, b) IN (...)

    def __init__(self, sa_dialect: Dialect) -> None:
        self.sa = sa_dialect

    def quote(self, name: str) -> str:
        return str(self.sa.identifier_preparer.quote(name))

    def qualified(self, table: TableClause) -> str:
        name = self.quote(table.name)
        return f"{self.quote(table.schema)}.{name}" if table.schema else name

    # -- canonical text and checksums (see migrate.databases.values) --

    def norm_sql(self, col: str, kind: ColumnKind) -> str:
        """SQL giving the canonical text of quoted column `col` (NULL stays NULL)."""
        raise NotImplementedError

    def length_sql(self, expr: str) -> str:
        """Length of a text in UTF-8 bytes."""
        return f"octet_length({expr})"

    def concat(self, parts: Sequence[str]) -> str:
        return " || ".join(parts)

    def text_sql(self, expr: str) -> str:
        """An integer expression as text."""
        return f"CAST({expr} AS TEXT)"

    def field_sql(self, col: str, kind: ColumnKind) -> str:
        """The row-text part of one column: 'N|' for NULL, else canonical text (length-prefixed for text) + '|'."""
        norm = self.norm_sql(col, kind)
        if kind.kind == "text":
            body = self.concat([self.text_sql(self.length_sql(norm)), "':'", norm, "'|'"])
        else:
            body = self.concat([norm, "'|'"])
        return f"COALESCE({body}, 'N|')"

    def row_text_sql(self, cols: Sequence[tuple[str, ColumnKind]]) -> str:
        return self.concat([self.field_sql(self.quote(c), k) for c, k in cols])

    def hash_sum_sql(self, row_text: str) -> str:
        """Aggregate: sum over rows of the low 60 bits of md5(row text)."""
        raise NotImplementedError

    def native_hash_sum_sql(self, row_text: str) -> str | None:
        """A cheaper aggregate for when both sides are this dialect (None: use `hash_sum_sql`)."""
        return None

    def native_int_key_sums_sql(self, col: str) -> list[str] | None:
        """Cheaper integer-key aggregates for when both sides are this dialect (None: `int_key_sums_sql`)."""
        return None

    def int_key_sums_sql(self, col: str) -> list[str]:
        """Aggregates of a cheap checksum of an integer key (used to find deleted rows)."""
        return [f"SUM({col} % {KEY_MOD})", f"SUM(({col} % 65521) * ({col} % 65519))"]

    def text_key_collation(self) -> str | None:
        """Collation that orders text keys by code point / UTF-8 bytes (key ranges on both sides)."""
        return "BINARY"  # SQLite's: memcmp of the UTF-8 text, whatever the column declares (NOCASE, RTRIM)

    # -- key predicates --

    def key_after(self, cols: Sequence[ColumnElement[Any]], values: Sequence[Any]) -> ColumnElement[bool]:
        """cols > values, in key order (row-value comparison where the dialect has it)."""
        if len(cols) == 1:
            return cols[0] > values[0]
        if self.supports_row_values:
            return tuple_(*cols) > tuple_(*[literal_bind(v) for v in values])
        return _expanded(cols, values, strict=True)

    def key_upto(self, cols: Sequence[ColumnElement[Any]], values: Sequence[Any]) -> ColumnElement[bool]:
        """cols <= values, in key order."""
        if len(cols) == 1:
            return cols[0] <= values[0]
        if self.supports_row_values:
            return tuple_(*cols) <= tuple_(*[literal_bind(v) for v in values])
        return ~_expanded(cols, values, strict=True)

    def key_in(self, cols: Sequence[ColumnElement[Any]], keys: Sequence[tuple[Any, ...]]) -> ColumnElement[bool]:
        if len(cols) == 1:
            return cols[0].in_([k[0] for k in keys])
        if self.supports_row_values:
            return tuple_(*cols).in_([tuple(k) for k in keys])
        return or_(*[and_(*[c == v for c, v in zip(cols, k, strict=True)]) for k in keys])

    # -- writing --

    def lock_chunk(self, conn: Connection, key: int) -> None:
        """Take the lock of one load chunk on this database (`migrate worker`), held until `unlock_chunk`, so
        two runners copying one chunk (one frozen past its lease) run one after the other."""
        raise UsageError(f"workers cannot lock a chunk on {self.name}: they load PostgreSQL and SQL Server targets",
                         hint="use `migrate run PLAN` for this item")

    def unlock_chunk(self, conn: Connection, key: int) -> None:
        """Let go of the lock `lock_chunk` took (after the chunk's last commit, or after a failure)."""

    def write_rows(self, conn: Connection, table: TableClause, columns: Sequence[str],
                   rows: Iterable[Sequence[Any]]) -> int:
        """Insert rows inside the caller's transaction; return how many."""
        raise NotImplementedError

    def upsert_rows(self, conn: Connection, table: TableClause, columns: Sequence[str], key: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def delete_keys(self, conn: Connection, table: TableClause, key: Sequence[str],
                    keys: Sequence[tuple[Any, ...]]) -> int:
        total = 0
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            cols = [table.c[k] for k in key]
            total += conn.execute(delete(table).where(self.key_in(cols, part))).rowcount or 0
        return total


def literal_bind(value: Any) -> Any:
    from sqlalchemy import bindparam

    return bindparam(None, value, type_=None)


def _expanded(cols: Sequence[ColumnElement[Any]], values: Sequence[Any], strict: bool) -> ColumnElement[bool]:
    """(a, b, c) > (x, y, z) written out for dialects without row values."""
    terms = []
    for i, col in enumerate(cols):
        equal = [cols[j] == values[j] for j in range(i)]
        terms.append(and_(*equal, col > values[i]))
    return or_(*terms)


def ops_for(dialect_name: str, sa_dialect: Dialect) -> DialectOps:
    """The `DialectOps` of a dialect name (sqlite, postgresql, mssql)."""
    if dialect_name == "postgresql":
        from migrate.databases.dialects.postgresql import PostgresOps

        return PostgresOps(sa_dialect)
    if dialect_name == "mssql":
        from migrate.databases.dialects.mssql import MssqlOps

        return MssqlOps(sa_dialect)
    from migrate.databases.dialects.sqlite import SqliteOps

    return SqliteOps(sa_dialect)


def raw_sql(fragment: str) -> ColumnElement[Any]:
    return literal_column(fragment)
