"""SQLite: canonical text through the registered `mig_norm` function, md5 registered on connect,
executemany for bulk writes, INSERT ... ON CONFLICT for upserts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.sql import TableClause

from migrate.databases.dialects import DialectOps
from migrate.databases.values import ColumnKind

BATCH = 5000


class SqliteOps(DialectOps):
    name = "sqlite"
    supports_row_values = True

    def norm_sql(self, col: str, kind: ColumnKind) -> str:
        if kind.kind == "text":
            return f"CAST({col} AS TEXT)"
        if kind.kind == "int":
            return f"CAST({col} AS TEXT)"
        scale = "NULL" if kind.scale is None else str(int(kind.scale))
        return f"mig_norm('{kind.code()}', {scale}, {col})"

    def length_sql(self, expr: str) -> str:
        return f"length(CAST({expr} AS BLOB))"

    def hash_sum_sql(self, row_text: str) -> str:
        return f"mig_sum60(md5({row_text}))"

    def int_key_sums_sql(self, col: str) -> list[str]:
        return [f"mig_bigsum({col} % 2147483647)", f"mig_bigsum(({col} % 65521) * ({col} % 65519))"]

    def _insert_sql(self, table: TableClause, columns: Sequence[str]) -> str:
        names = ", ".join(self.quote(c) for c in columns)
        marks = ", ".join("?" for _ in columns)
        return f"INSERT INTO {self.qualified(table)} ({names}) VALUES ({marks})"

    def write_rows(self, conn: Connection, table: TableClause, columns: Sequence[str],
                   rows: Iterable[Sequence[Any]]) -> int:
        sql = self._insert_sql(table, columns)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        total = 0
        iterator = iter(rows)
        try:
            while batch := list(islice(iterator, BATCH)):
                cursor.executemany(sql, batch)
                total += len(batch)
        finally:
            cursor.close()
        return total

    def upsert_rows(self, conn: Connection, table: TableClause, columns: Sequence[str], key: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        sql = self._insert_sql(table, columns)
        others = [c for c in columns if c not in key]
        conflict = ", ".join(self.quote(k) for k in key)
        if others:
            sets = ", ".join(f"{self.quote(c)} = excluded.{self.quote(c)}" for c in others)
            sql += f" ON CONFLICT ({conflict}) DO UPDATE SET {sets}"
        else:
            sql += f" ON CONFLICT ({conflict}) DO NOTHING"
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.executemany(sql, [tuple(r) for r in rows])
        finally:
            cursor.close()

