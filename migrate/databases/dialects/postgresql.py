"""PostgreSQL (psycopg 3): md5 row checksums summed as 60-bit slices, COPY for bulk loads (COPY
streamed straight from a PostgreSQL source), INSERT ... ON CONFLICT for upserts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import any_, delete
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement, TableClause

from migrate.databases.dialects import DialectOps, literal_bind
from migrate.databases.values import ColumnKind

# COPY format between two PostgreSQL servers (same types on both sides, so binary is exact); with buffered
# writes it measured ~1.5x faster than text on numeric/timestamptz-heavy rows (bench/bench_db_load.py)
PIPE_FORMAT = "BINARY"
PIPE_BUFFER = 1 << 20  # bytes gathered before one write to the target


class PostgresOps(DialectOps):
    name = "postgresql"
    supports_row_values = True

    def lock_chunk(self, conn: Connection, key: int) -> None:
        """A transaction-scoped advisory lock: it goes with the chunk's one transaction (commit or rollback), or
        with the connection of a runner that died."""
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(%(key)s)", {"key": key})

    def norm_sql(self, col: str, kind: ColumnKind) -> str:
        k = kind.kind
        if k in ("text", "int"):
            return f"{col}::text"
        if k == "decimal":
            if kind.native:  # numeric(p, s) prints exactly s digits already
                return f"{col}::text"
            if kind.scale is None:
                return f"trim_scale({col}::numeric)::text"
            return f"round({col}::numeric, {int(kind.scale)})::text"
        if k == "float":
            if kind.scale is None:  # exact: the shortest text that reads back (float8out/float4out), -0 as 0
                return f"(CASE WHEN {col} = 0 THEN '0' ELSE {col}::{'float4' if kind.single else 'float8'}::text END)"
            return f"round({col}::numeric, {int(kind.scale)})::text"
        if k == "bool":
            return f"(CASE WHEN {col} THEN '1' WHEN NOT {col} THEN '0' END)"
        if k == "timestamp":
            # ISO output (our sessions run DateStyle=ISO, TimeZone=UTC): microseconds without trailing zeros;
            # a timestamptz ends in '+00', which is cut (measured ~3x cheaper than to_char)
            return f"left({col}::text, -3)" if kind.tz else f"{col}::text"
        if k == "date":
            return f"to_char({col}, 'YYYY-MM-DD')"
        if k == "time":  # 24:00:00 is its own value, not the next day's midnight
            return (f"(CASE WHEN {col} = '24:00' THEN '24:00:00.000000' "
                    f"ELSE to_char(timestamp '2000-01-01' + {col}, 'HH24:MI:SS.US') END)")
        if k == "uuid":
            return f"replace(lower({col}::text), '-', '')"
        if k == "binary":
            return f"encode({col}, 'hex')"
        return f"{col}::text"

    def text_sql(self, expr: str) -> str:
        return f"({expr})::text"

    def hash_sum_sql(self, row_text: str) -> str:
        return f"SUM(('x' || right(md5({row_text}), 15))::bit(60)::bigint)"

    def native_hash_sum_sql(self, row_text: str) -> str | None:
        # PostgreSQL on both sides: its own 64-bit hash (stable across versions: hash partitioning relies on
        # it) costs next to nothing, where md5 doubles the cost of a checksum (bench/bench_db_verify.py)
        return f"SUM(hashtextextended({row_text}, 0))"

    def native_int_key_sums_sql(self, col: str) -> list[str] | None:
        return [f"SUM({col})", f"SUM(hashint8({col}))"]

    def record_hash_sum_sql(self, cols: Sequence[str]) -> str:
        """The sum of each row's own 64-bit hash (`hash_record_extended`, PostgreSQL 14+): the types' hash
        functions on the stored values, no text built; about 3x cheaper than hashing the row's text. Only where
        `record_hash_types` says both sides hash alike."""
        return f"SUM(hash_record_extended(ROW({', '.join(cols)}), 0))"

    def text_key_collation(self) -> str | None:
        return "C"

    # -- writing --

    def write_rows(self, conn: Connection, table: TableClause, columns: Sequence[str],
                   rows: Iterable[Sequence[Any]], freeze: bool = False) -> int:
        """COPY ... FROM STDIN (text format; psycopg adapts each Python value); `freeze`: COPY ... FREEZE
        (the table was truncated in this transaction)."""
        names = ", ".join(self.quote(c) for c in columns)
        raw = conn.connection.driver_connection
        total = 0
        with raw.cursor() as cursor:  # type: ignore[union-attr]
            options = " (FREEZE)" if freeze else ""
            with cursor.copy(f"COPY {self.qualified(table)} ({names}) FROM STDIN{options}") as copy:
                for row in rows:
                    copy.write_row(row)
                    total += 1
        return total

    def copy_between(self, source: Connection, target: Connection, select_sql: str,
                     params: Mapping[str, Any], table: TableClause, columns: Sequence[str],
                     freeze: bool = False) -> int:
        """Stream `COPY (select) TO STDOUT` from a PostgreSQL source into `COPY table FROM STDIN`; `freeze`:
        `COPY ... FREEZE` (the table was truncated in this transaction)."""
        names = ", ".join(self.quote(c) for c in columns)
        src = source.connection.driver_connection
        tgt = target.connection.driver_connection
        # binary COPY is only promised to read back on the same major version; text always is
        same_major = src.info.server_version // 10000 == tgt.info.server_version // 10000  # type: ignore[union-attr]
        fmt = PIPE_FORMAT if same_major else "TEXT"
        with src.cursor() as scur, tgt.cursor() as tcur:  # type: ignore[union-attr]
            with scur.copy(f"COPY ({select_sql}) TO STDOUT (FORMAT {fmt})", params or None) as cin:
                frozen = ", FREEZE" if freeze else ""
                with tcur.copy(f"COPY {self.qualified(table)} ({names}) FROM STDIN (FORMAT {fmt}{frozen})") as cout:
                    pump(src, cin, cout)  # type: ignore[arg-type]
            return max(int(tcur.rowcount or 0), 0)

    def key_in(self, cols: Sequence[ColumnElement[Any]], keys: Sequence[tuple[Any, ...]]) -> ColumnElement[bool]:
        """One column: `= ANY(array)`, a single parameter however many keys (an IN list of thousands of
        parameters costs more to build and to plan than the rows it finds)."""
        if len(cols) == 1:
            return cols[0] == any_(literal_bind([k[0] for k in keys]))
        return super().key_in(cols, keys)

    def delete_keys(self, conn: Connection, table: TableClause, key: Sequence[str],
                    keys: Sequence[tuple[Any, ...]]) -> int:
        if len(key) != 1:
            return super().delete_keys(conn, table, key, keys)
        total = 0
        for start in range(0, len(keys), 50_000):
            part = keys[start:start + 50_000]
            total += conn.execute(delete(table).where(self.key_in([table.c[key[0]]], part))).rowcount or 0
        return total

    def upsert_rows(self, conn: Connection, table: TableClause, columns: Sequence[str], key: Sequence[str],
                    rows: Sequence[Sequence[Any]]) -> None:
        names = ", ".join(self.quote(c) for c in columns)
        marks = ", ".join("%s" for _ in columns)
        conflict = ", ".join(self.quote(k) for k in key)
        others = [c for c in columns if c not in key]
        sql = f"INSERT INTO {self.qualified(table)} ({names}) VALUES ({marks}) ON CONFLICT ({conflict}) "
        if others:
            sql += "DO UPDATE SET " + ", ".join(f"{self.quote(c)} = EXCLUDED.{self.quote(c)}" for c in others)
        else:
            sql += "DO NOTHING"
        with conn.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.executemany(sql, [tuple(r) for r in rows])


def pump(source: Any, cin: Any, cout: Any) -> None:
    """Move COPY data from `cin` (COPY TO STDOUT) to `cout` (COPY FROM STDIN), in ~1 MiB writes.

    COPY OUT arrives one row per message; rows already received are drained straight from libpq (psycopg's
    own `read()` is used whenever it would block and at the end), which halves the per-row cost in Python.
    """
    buffer = bytearray()
    get = getattr(getattr(source, "pgconn", None), "get_copy_data", None)
    while True:
        nbytes, data = get(1) if get is not None else (0, b"")
        if nbytes == 0:  # nothing buffered: let psycopg wait for the next row (or the end)
            data = cin.read()
            if not data:
                break
        elif nbytes < 0:  # COPY is over: collect the final result as psycopg's read() would
            from psycopg import generators

            source.wait(generators.fetch_many(source.pgconn))
            cin._finished = True
            break
        buffer += data
        if len(buffer) >= PIPE_BUFFER:
            cout.write(buffer)
            buffer = bytearray()
    if buffer:
        cout.write(buffer)


# Types whose hash is a function of the value alone, equal exactly when the values are equal as the row text
# compares them, and the same on any server: no enum (hashes its OID, which differs between databases), no
# interval ('1 day' = '24 hours'), no json/xml/geometry (no hash function).
RECORD_HASH_TYPES = frozenset({
    16, 17, 18, 19, 20, 21, 23, 25, 26, 700, 701,  # bool bytea char name int8 int2 int4 text oid float4 float8
    1042, 1043, 1082, 1083, 1114, 1184, 1700, 2950, 3802,  # bpchar varchar date time timestamp(tz) numeric uuid jsonb
})


def record_hash_types(conn: Connection, table: str, columns: Sequence[str]) -> tuple[int, ...] | None:
    """The base type of each column (in `columns` order) when a row hash (`record_hash_sum_sql`) can stand for
    the row's text on this server: PostgreSQL 14+, every type in RECORD_HASH_TYPES, every collation
    deterministic. None otherwise. Two sides whose tuples are equal hash alike."""
    if (conn.dialect.server_version_info or (0,)) < (14,):
        return None
    rows = conn.exec_driver_sql(
        "SELECT a.attname, CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END::int, "
        "coalesce(c.collisdeterministic, true) FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "LEFT JOIN pg_collation c ON c.oid = a.attcollation "
        "WHERE a.attrelid = %(t)s::regclass AND a.attnum > 0 AND NOT a.attisdropped", {"t": table}).all()
    found = {name: (oid, deterministic) for name, oid, deterministic in rows}
    types = []
    for name in columns:
        oid, deterministic = found.get(name, (0, False))
        if oid not in RECORD_HASH_TYPES or not deterministic:
            return None
        types.append(oid)
    return tuple(types)
