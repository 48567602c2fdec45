"""Sequences at cutover (`migrate:sequences`): every target sequence or identity is set to at least the
source's current value and its column's highest value on either side, so the application's first insert
without an id on the target does not collide with a moved row.

One small set of statements per dialect: PostgreSQL sequences (owned by a column, serial or identity, and
free-standing ones of the moved schemas), SQL Server identity columns and sequences, SQLite AUTOINCREMENT
(`sqlite_sequence`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from migrate.databases.schema import TableInfo, pg_qualified


@dataclass(frozen=True)
class Counter:
    """A generator of ids on one side: a sequence (`name`) or a table's identity/autoincrement, serving
    `column` of `table` (None for a free-standing sequence)."""

    table: str | None
    column: str | None
    name: str

    @property
    def label(self) -> str:
        return f"{self.table}.{self.column} ({self.name})" if self.table else f"sequence {self.name}"


def _ms_table(info: TableInfo) -> str:
    return f"[{info.schema}].[{info.name}]" if info.schema else f"[{info.name}]"


def column_counters(conn: Connection, dialect: str, info: TableInfo) -> list[Counter]:
    """The id generators serving the columns of one table on this side."""
    if dialect == "postgresql":
        rows = conn.execute(text(
            "SELECT a.attname, pg_get_serial_sequence(CAST(:t AS text), a.attname) FROM pg_attribute a "
            "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"),
            {"t": pg_qualified(info.label)}).all()
        return [Counter(info.label, r[0], r[1]) for r in rows if r[1] is not None]
    if dialect == "mssql":
        rows = conn.execute(text("SELECT name FROM sys.identity_columns WHERE object_id = OBJECT_ID(:t)"),
                            {"t": _ms_table(info)}).all()
        return [Counter(info.label, r[0], _ms_table(info)) for r in rows]
    if dialect == "sqlite":
        sql = conn.execute(text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :t"),
                           {"t": info.name}).scalar()
        if sql and "AUTOINCREMENT" in str(sql).upper() and len(info.key) == 1:
            return [Counter(info.label, info.key[0], info.name)]
    return []


def schema_sequences(conn: Connection, dialect: str, schemas: list[str]) -> list[Counter]:
    """Every sequence of `schemas` (PostgreSQL, SQL Server), with the column that owns it where one does
    (`table` is then the quoted owner, e.g. a partitioned table whose rows moved through its partitions)."""
    if dialect == "postgresql":
        rows = conn.execute(text(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), "
            "quote_ident(tn.nspname) || '.' || quote_ident(t.relname), a.attname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_depend d ON d.objid = c.oid AND d.classid = 'pg_class'::regclass "
            "AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
            "LEFT JOIN pg_class t ON t.oid = d.refobjid LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace "
            "LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
            "WHERE c.relkind = 'S' AND n.nspname = ANY(:s) ORDER BY 1"), {"s": schemas}).all()
        return [Counter(r[1], r[2], r[0]) for r in rows]
    if dialect == "mssql":
        rows = conn.execute(text("SELECT QUOTENAME(SCHEMA_NAME(schema_id)) + '.' + QUOTENAME(name) "
                                 "FROM sys.sequences WHERE SCHEMA_NAME(schema_id) IN :s"),
                            {"s": tuple(schemas)}).scalars().all()
        return [Counter(None, None, str(r)) for r in rows]
    return []


def owner_max(conn: Connection, counter: Counter) -> int | None:
    """The highest value of the column owning a PostgreSQL sequence."""
    if counter.table is None or counter.column is None:
        return None
    column = '"' + counter.column.replace('"', '""') + '"'
    value: Any = conn.exec_driver_sql(f"SELECT max({column}) FROM {counter.table}").scalar()
    return value if isinstance(value, int) else None


def current_statement(dialect: str, counter: Counter) -> str:
    """SQL giving the last id handed out (NULL when none was)."""
    if dialect == "postgresql":
        return f"SELECT CASE WHEN is_called THEN last_value END FROM {counter.name}"
    if dialect == "mssql":
        if counter.table is None:
            return f"SELECT CAST(current_value AS bigint) FROM sys.sequences WHERE object_id = " \
                   f"OBJECT_ID('{_sql_text(counter.name)}')"
        return f"SELECT CAST(IDENT_CURRENT('{_sql_text(counter.name)}') AS bigint)"
    return f"SELECT seq FROM sqlite_sequence WHERE name = '{_sql_text(counter.name)}'"


def advance_statements(dialect: str, counter: Counter, value: int) -> list[str]:
    """SQL making the next id handed out greater than `value`."""
    if dialect == "postgresql":
        return [f"SELECT setval('{_sql_text(counter.name)}', {value}, true)"]
    if dialect == "mssql":
        if counter.table is None:
            return [f"ALTER SEQUENCE {counter.name} RESTART WITH {value + 1}"]
        return [f"DBCC CHECKIDENT ('{_sql_text(counter.name)}', RESEED, {value})"]
    name = _sql_text(counter.name)
    return [f"DELETE FROM sqlite_sequence WHERE name = '{name}'",
            f"INSERT INTO sqlite_sequence (name, seq) VALUES ('{name}', {value})"]


def current_value(conn: Connection, dialect: str, counter: Counter) -> int | None:
    value: Any = conn.exec_driver_sql(current_statement(dialect, counter)).scalar()
    return None if value is None else int(value)


def advance(conn: Connection, dialect: str, counter: Counter, value: int) -> None:
    for statement in advance_statements(dialect, counter, value):
        conn.exec_driver_sql(statement)


def _sql_text(value: str) -> str:
    return value.replace("'", "''")
