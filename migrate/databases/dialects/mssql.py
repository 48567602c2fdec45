"""SQL Server / Azure SQL: HASHBYTES('MD5') over the UTF-8 row text summed as 60-bit BIGINT slices, bulk copy
through the driver (mssql-python `cursor.bulkcopy`, pymssql `conn.bulk_copy`), MERGE for upserts.

No SQL Server runs in our tests: the SQL is checked as compiled and the bulk-copy call against a driver double.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import islice
from typing import Any

from sqlalchemy import bindparam, insert, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql import TableClause
from sqlalchemy.sql.elements import TextClause

from migrate.databases.dialects import DialectOps
from migrate.databases.values import ColumnKind

UTF8_COLLATION = "Latin1_General_100_BIN2_UTF8"  # SQL Server 2019+ and Azure SQL
BATCH = 10_000
BULK_TIMEOUT = 600  # seconds for one batch (mssql-python's default, 30 s, is short for wide rows on a slow link)
LOW60 = (1 << 60) - 1


LOCK_CHUNK = ("DECLARE @granted int; EXEC @granted = sp_getapplock @Resource = :resource, @LockMode = 'Exclusive', "
              "@LockOwner = 'Session', @LockTimeout = -1; IF @granted < 0 THROW 51000, 'migrate: chunk lock not "
              "granted', 1;")
UNLOCK_CHUNK = "EXEC sp_releaseapplock @Resource = :resource, @LockOwner = 'Session';"


class MssqlOps(DialectOps):
    name = "mssql"
    supports_row_values = False

    # A chunk's load is two transactions here (the delete is committed before the driver's bulk copy, which uses
    # a channel of its own), so its lock is owned by the session, not the transaction: taken before the delete,
    # given back after the copy commits, and gone with the session of a runner that died.

    def lock_chunk(self, conn: Connection, key: int) -> None:
        conn.execute(text(LOCK_CHUNK), {"resource": chunk_resource(key)})

    def unlock_chunk(self, conn: Connection, key: int) -> None:
        try:
            if conn.in_transaction():
                conn.rollback()  # a failed chunk: its writes go first
            conn.execute(text(UNLOCK_CHUNK), {"resource": chunk_resource(key)})
            conn.commit()
        except Exception:  # noqa: BLE001 - a connection that may still hold the lock never goes back to the pool
            conn.invalidate()

    def norm_sql(self, col: str, kind: ColumnKind) -> str:
        k = kind.kind
        if k == "text":
            return f"CAST({col} AS NVARCHAR(MAX))"
        if k == "int":
            return f"CONVERT(VARCHAR(20), {col})"
        if k == "decimal":
            scale = int(kind.scale) if kind.scale is not None else 10
            return f"CONVERT(VARCHAR(50), CAST({col} AS DECIMAL(38, {scale})))"
        if k == "float":
            scale = int(kind.scale if kind.scale is not None else 9)
            return f"CONVERT(VARCHAR(50), CAST(ROUND({col}, {scale}) AS DECIMAL(38, {scale})))"
        if k == "bool":
            return f"(CASE WHEN {col} = 1 THEN '1' WHEN {col} = 0 THEN '0' END)"
        if k == "timestamp":
            moment = f"CONVERT(DATETIME2(6), SWITCHOFFSET({col}, '+00:00'))" if kind.tz else \
                f"CONVERT(DATETIME2(6), {col})"
            # 'yyyy-mm-dd hh:mi:ss' then '.' and the microseconds without trailing zeros (as PostgreSQL prints)
            micro = f"RIGHT(CONVERT(VARCHAR(26), {moment}, 121), 6)"
            trimmed = f"REPLACE(RTRIM(REPLACE({micro}, '0', ' ')), ' ', '0')"
            return (f"(CONVERT(VARCHAR(19), {moment}, 120) + CASE WHEN DATEPART(MICROSECOND, {moment}) = 0 "
                    f"THEN '' ELSE '.' + {trimmed} END)")
        if k == "date":
            return f"CONVERT(VARCHAR(10), {col}, 23)"
        if k == "time":
            return f"CONVERT(VARCHAR(15), CAST({col} AS TIME(6)))"
        if k == "uuid":
            return f"LOWER(REPLACE(CONVERT(CHAR(36), {col}), '-', ''))"
        if k == "binary":
            return f"LOWER(CONVERT(VARCHAR(MAX), {col}, 2))"
        return f"CAST({col} AS NVARCHAR(MAX))"

    def length_sql(self, expr: str) -> str:
        return f"DATALENGTH(CONVERT(VARCHAR(MAX), {expr} COLLATE {UTF8_COLLATION}))"  # UTF-8 bytes

    def concat(self, parts: Sequence[str]) -> str:
        return " + ".join(parts)

    def text_sql(self, expr: str) -> str:
        return f"CONVERT(VARCHAR(20), {expr})"

    def hash_sum_sql(self, row_text: str) -> str:
        utf8 = f"CONVERT(VARCHAR(MAX), CAST({row_text} AS NVARCHAR(MAX)) COLLATE {UTF8_COLLATION})"
        slice60 = f"(CAST(SUBSTRING(HASHBYTES('MD5', {utf8}), 9, 8) AS BIGINT) & {LOW60})"
        return f"SUM(CAST({slice60} AS DECIMAL(38, 0)))"

    def int_key_sums_sql(self, col: str) -> list[str]:
        return [f"SUM(CAST({col} % 2147483647 AS DECIMAL(38, 0)))",
                f"SUM(CAST(({col} % 65521) * ({col} % 65519) AS DECIMAL(38, 0)))"]

    def text_key_collation(self) -> str | None:
        return "Latin1_General_100_BIN2"

    # -- writing --

    def write_rows(self, conn: Connection, table: TableClause, columns: Sequence[str],
                   rows: Iterable[Sequence[Any]]) -> int:
        """Bulk copy through the driver when it has one; executemany otherwise."""
        raw = conn.connection.driver_connection
        sent = bulk_copy(raw, self.qualified(table), columns, rows)
        if sent is not None:
            return sent
        statement = insert(table)
        total = 0
        iterator = iter(rows)
        while batch := [dict(zip(columns, r, strict=True)) for r in islice(iterator, BATCH)]:
            conn.execute(statement, batch)
            total += len(batch)
        return total

    def merge_statement(self, table: TableClause, columns: Sequence[str], key: Sequence[str]) -> TextClause:
        """MERGE one row (bound as :p0, :p1, ...) into `table`: update when the key matches, else insert."""
        q = self.quote
        names = ", ".join(q(c) for c in columns)
        params = ", ".join(f":p{i}" for i in range(len(columns)))
        on = " AND ".join(f"tgt.{q(k)} = src.{q(k)}" for k in key)
        others = [c for c in columns if c not in key]
        sql = (f"MERGE INTO {self.qualified(table)} WITH (HOLDLOCK) AS tgt "
               f"USING (VALUES ({params})) AS src ({names}) ON {on} ")
        if others:
            sql += "WHEN MATCHED THEN UPDATE SET " + ", ".join(f"tgt.{q(c)} = src.{q(c)}" for c in others) + " "
        sql += f"WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({', '.join(f'src.{q(c)}' for c in columns)});"
        return text(sql).bindparams(*[bindparam(f"p{i}") for i in range(len(columns))])

    def upsert_rows(self, conn: Connection, table: TableClause, columns: Sequence[str], key: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        statement = self.merge_statement(table, columns, key)
        conn.execute(statement, [{f"p{i}": v for i, v in enumerate(row)} for row in rows])


def chunk_resource(key: int) -> str:
    """The application-lock name of one chunk (sp_getapplock takes up to 255 characters)."""
    return f"migrate:load:{key}"


def bulk_copy(raw: Any, table_name: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int | None:
    """Send rows with the driver's bulk-copy API; return how many went (None: the driver has none).

    mssql-python: `cursor.bulkcopy(table, rows, batch_size=...)` (its own channel, so the caller commits any
    DDL or DELETE first), told to keep the source's identity values and NULLs (by default it would number
    identity columns afresh and put column defaults where the source has NULL); pymssql:
    `conn.bulk_copy(table, rows, column_ids=[...], batch_size=...)`. Rows carry every column of the target
    table, in table order. Triggers do not fire and constraints are not checked (both drivers' defaults).
    """
    cursor = raw.cursor()
    total = 0
    iterator = iter(rows)
    if hasattr(cursor, "bulkcopy"):
        while batch := [tuple(r) for r in islice(iterator, BATCH)]:
            result = cursor.bulkcopy(table_name, batch, batch_size=len(batch), timeout=BULK_TIMEOUT,
                                     keep_identity=True, keep_nulls=True)
            total += int(result.get("rows_copied", len(batch))) if isinstance(result, dict) else len(batch)
        return total
    if hasattr(raw, "bulk_copy"):
        ids = list(range(1, len(columns) + 1))
        while batch := [tuple(r) for r in islice(iterator, BATCH)]:
            raw.bulk_copy(table_name, batch, column_ids=ids, batch_size=len(batch))
            total += len(batch)
        return total
    return None
