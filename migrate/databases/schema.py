"""Reflect source tables, build their target definitions (type map per dialect), create them, and add
secondary indexes and foreign keys after the load."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    DefaultClause,
    ForeignKeyConstraint,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    UniqueConstraint,
    column,
    func,
    inspect,
    select,
    table,
    text,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import Connection
from sqlalchemy.schema import AddConstraint, CreateIndex, CreateTable
from sqlalchemy.sql import TableClause

from migrate.databases.endpoint import Endpoint
from migrate.databases.typemap import map_type
from migrate.databases.values import ColumnKind, kind_from_declared, kind_of
from migrate.errors import EndpointError, MigrateError


@dataclass
class ColumnInfo:
    name: str
    type: sqltypes.TypeEngine[Any]
    declared: str | None
    nullable: bool
    kind: ColumnKind
    default: str | None = None  # server default as SQL text (kept within one dialect)


@dataclass
class TableInfo:
    """One table as reflected on one side: columns in order, key, indexes and foreign keys."""

    schema: str | None
    name: str
    columns: list[ColumnInfo]
    key: list[str]
    indexes: list[dict[str, Any]] = field(default_factory=list)
    foreign_keys: list[dict[str, Any]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> ColumnInfo:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    def clause(self) -> TableClause:
        """A typeless table construct for building statements (values pass to the driver untouched)."""
        return table(self.name, *[column(c.name) for c in self.columns], schema=self.schema)


def split_name(name: str) -> tuple[str | None, str]:
    """`schema.table` or `table`."""
    if "." in name:
        schema, _, bare = name.partition(".")
        return schema, bare
    return None, name


class NoPrimaryKey(MigrateError):
    """A table to move has no primary key and the plan names none."""


SYSTEM_SCHEMAS = {"information_schema", "sys", "guest", "pg_catalog", "pg_toast"}


def list_tables(endpoint: Endpoint, conn: Connection) -> list[str]:
    """Every table holding rows in every user schema: bare names in the connection's default schema,
    `schema.name` in the others. A PostgreSQL partitioned table holds no rows (its partitions do), so its data
    moves once, through its partitions."""
    with endpoint.errors("cannot list tables"):
        inspector = inspect(conn)
        default = inspector.default_schema_name
        schemas = [default] if endpoint.dialect == "sqlite" else [
            s for s in inspector.get_schema_names()
            if s not in SYSTEM_SCHEMAS and not s.startswith(("pg_", "db_")) and s != "INFORMATION_SCHEMA"]
        parents: set[tuple[str, str]] = set()
        if endpoint.dialect == "postgresql":
            parents = {(r[0], r[1]) for r in conn.execute(text(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'p'")).all()}
        names = []
        for schema in schemas:
            for name in inspector.get_table_names(schema=None if schema == default else schema):
                if (schema, name) not in parents:
                    names.append(name if schema == default else f"{schema}.{name}")
        return sorted(names)


def partitions_also_named(conn: Connection, labels: list[str]) -> list[tuple[str, str]]:
    """(partitioned table, partition) pairs that are both among `labels` (PostgreSQL)."""
    rows = conn.execute(text(
        "SELECT CAST(i.inhparent AS regclass)::text, CAST(i.inhrelid AS regclass)::text FROM pg_inherits i "
        "WHERE i.inhparent = ANY(CAST(:t AS regclass[])) AND i.inhrelid = ANY(CAST(:t AS regclass[])) "
        "ORDER BY 1, 2"), {"t": [pg_qualified(label) for label in labels]}).all()
    return [(str(r[0]), str(r[1])) for r in rows]


def pg_qualified(label: str) -> str:
    """`schema.table` (or a bare name) as a quoted PostgreSQL identifier; also an exact pg_dump pattern."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in label.split(".", 1))


def declared_types(endpoint: Endpoint, conn: Connection, schema: str | None, name: str) -> dict[str, str]:
    """Each column's type exactly as declared (SQLite's declared text, PostgreSQL's format_type)."""
    if endpoint.dialect == "sqlite":
        prefix = f'"{schema}".' if schema else ""
        rows = conn.exec_driver_sql(f'PRAGMA {prefix}table_info("{name}")').all()
        return {r[1]: r[2] for r in rows}
    if endpoint.dialect == "postgresql":
        qualified = f'"{schema}"."{name}"' if schema else f'"{name}"'
        rows = conn.execute(text(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped"
        ), {"t": qualified}).all()
        return {r[0]: r[1] for r in rows}
    return {}


def reflect_table(endpoint: Endpoint, conn: Connection, name: str, *, key: list[str] | None = None,
                  columns: list[str] | None = None, required: bool = True,
                  constraints: bool = True) -> TableInfo | None:
    """Reflect one table; a missing table raises EndpointError (or returns None when not `required`).

    `constraints=False` skips indexes and foreign keys (and, with `key` given, the primary key)."""
    schema, bare = split_name(name)
    with endpoint.errors(f"cannot read table {name!r}"):
        inspector = inspect(conn)
        if not inspector.has_table(bare, schema=schema):
            if not required:
                return None
            raise EndpointError(f"{endpoint.label} ({endpoint.shown}): table {name!r} not found")
        reflected = inspector.get_columns(bare, schema=schema)
        declared = declared_types(endpoint, conn, schema, bare)
        pk = [] if key and not constraints else \
            inspector.get_pk_constraint(bare, schema=schema).get("constrained_columns") or []
        indexes = inspector.get_indexes(bare, schema=schema) if constraints else []
        fks = inspector.get_foreign_keys(bare, schema=schema) if constraints else []
    cols = []
    for col in reflected:
        decl = declared.get(col["name"])
        kind = kind_from_declared(decl or "") if endpoint.dialect == "sqlite" else kind_of(col["type"], decl)
        default = col.get("default")
        cols.append(ColumnInfo(col["name"], col["type"], decl, bool(col.get("nullable", True)), kind,
                               None if default is None else str(default)))
    info = TableInfo(schema, bare, cols, list(key or pk), [dict(i) for i in indexes], [dict(f) for f in fks])
    if not info.key:
        raise NoPrimaryKey(f"table {name!r} on {endpoint.label} has no primary key; name one in the plan "
                           f"(tables: [{{name: {name}, key: [column, ...]}}]), or leave it out with `exclude` "
                           "(or `skip_without_key: true` when a glob matched it)")
    missing = [k for k in info.key if k not in info.names]
    if missing:
        raise MigrateError(f"table {name!r}: key column(s) {', '.join(missing)} not found on {endpoint.label}")
    if columns:
        unknown = [c for c in columns if c not in info.names]
        if unknown:
            raise MigrateError(f"table {name!r}: column(s) {', '.join(unknown)} not found on {endpoint.label}")
        keep = set(columns) | set(info.key)
        info.columns = [c for c in info.columns if c.name in keep]
    return info


@dataclass
class TargetSchema:
    """The target tables as SQLAlchemy objects (for DDL), with what the mapping could lose."""

    metadata: MetaData
    tables: dict[str, Table]
    lossy: list[str]
    notes: list[str]


def build_target(sources: list[TableInfo], source_dialect: str, target_dialect: str) -> TargetSchema:
    """Target definitions of every source table: mapped types, primary key, indexes and foreign keys."""
    metadata = MetaData()
    tables: dict[str, Table] = {}
    lossy: list[str] = []
    notes: list[str] = []
    for info in sources:
        cols = []
        for col in info.columns:
            mapped = map_type(col.type, col.declared, col.kind, source_dialect, target_dialect)
            if mapped.lossy:
                lossy.append(f"{info.label}.{col.name}: {mapped.lossy}")
            same = source_dialect == target_dialect
            default = col.default if same and col.default and "nextval(" not in col.default else None
            if default is not None and target_dialect == "sqlite":
                default = f"({default})"  # SQLite reports `'a' || b` for `DEFAULT ('a' || b)`: only (expr) is valid
            cols.append(Column(col.name, mapped.type, autoincrement=False,
                               nullable=col.nullable and (same or col.name not in info.key),
                               server_default=text(default) if default is not None else None))
        tables[info.label] = Table(info.name, metadata, *cols, PrimaryKeyConstraint(*info.key),
                                   schema=info.schema)
    for info in sources:
        target = tables[info.label]
        kept = set(info.names)
        for idx in info.indexes:
            names = idx.get("column_names") or []
            if not names or any(n is None or n not in kept for n in names):
                notes.append(f"{info.label}: index {idx.get('name')} skipped (expression or column not moved)")
                continue
            if idx.get("duplicates_constraint") and target_dialect != "sqlite":
                # a UNIQUE constraint on the source: added as a constraint after the load
                target.info.setdefault("unique", []).append(
                    UniqueConstraint(*[target.c[n] for n in names], name=idx["duplicates_constraint"]))
                continue
            Index(idx["name"], *[target.c[n] for n in names], unique=bool(idx.get("unique")))
        for fk in info.foreign_keys:
            referred = f"{fk['referred_schema']}.{fk['referred_table']}" if fk.get("referred_schema") \
                else fk["referred_table"]
            parent = tables.get(referred)
            if parent is None or any(c not in kept for c in fk["constrained_columns"]):
                notes.append(f"{info.label}: foreign key to {referred} skipped (table not moved)")
                continue
            target.append_constraint(ForeignKeyConstraint(
                fk["constrained_columns"], [parent.c[c] for c in fk["referred_columns"]], name=fk.get("name")))
    return TargetSchema(metadata, tables, lossy, notes)


def create_table(conn: Connection, target: Table, dialect: str) -> None:
    """CREATE TABLE with no index at all: the primary key, secondary indexes and foreign keys follow the load
    (as pg_dump does), except on SQLite, which cannot add them later and gets key and foreign keys inline."""
    if dialect == "sqlite":
        conn.execute(CreateTable(target, include_foreign_key_constraints=list(target.foreign_key_constraints)))
        return
    bare = Table(target.name, MetaData(), *[
        Column(c.name, c.type, nullable=c.nullable, autoincrement=False,
               server_default=DefaultClause(c.server_default.arg) if isinstance(c.server_default, DefaultClause)
               else None)
        for c in target.columns], schema=target.schema)
    conn.execute(CreateTable(bare))


def has_primary_key(conn: Connection, target: Table) -> bool:
    pk = inspect(conn).get_pk_constraint(target.name, schema=target.schema)
    return bool(pk.get("constrained_columns"))


def create_post_load(conn: Connection, target: Table, dialect: str) -> list[str]:
    """Create the primary key, secondary indexes and foreign keys that are not there yet; return what was
    created."""
    done = []
    if dialect != "sqlite" and not has_primary_key(conn, target):
        conn.execute(AddConstraint(target.primary_key))
        done.append(f"primary key of {target.name}")
    inspector = inspect(conn)
    existing_idx = {i["name"] for i in inspector.get_indexes(target.name, schema=target.schema)}
    for idx in sorted(target.indexes, key=lambda i: str(i.name)):
        if idx.name not in existing_idx:
            conn.execute(CreateIndex(idx))
            done.append(f"index {idx.name}")
    if dialect != "sqlite":
        existing_uq = {u["name"] for u in inspector.get_unique_constraints(target.name, schema=target.schema)}
        for uq in target.info.get("unique", []):
            if uq.name not in existing_uq:
                conn.execute(AddConstraint(uq))
                done.append(f"unique {uq.name}")
        existing_fk = {(tuple(f["constrained_columns"]), f["referred_table"])
                       for f in inspector.get_foreign_keys(target.name, schema=target.schema)}
        for fk in sorted(target.foreign_key_constraints, key=lambda f: str(f.name)):
            ident = (tuple(c.name for c in fk.columns), fk.referred_table.name)
            if ident not in existing_fk:
                conn.execute(AddConstraint(fk))
                done.append(f"foreign key {fk.name or ident}")
    return done


def dependency_order(tables: list[TableInfo]) -> list[TableInfo]:
    """Parents before children (by foreign keys among the moved tables); cycles keep their given order."""
    by_label = {t.label: t for t in tables}
    ordered: list[TableInfo] = []
    seen: set[str] = set()

    def visit(info: TableInfo, path: set[str]) -> None:
        if info.label in seen or info.label in path:
            return
        path.add(info.label)
        for fk in info.foreign_keys:
            ref = f"{fk['referred_schema']}.{fk['referred_table']}" if fk.get("referred_schema") \
                else fk["referred_table"]
            if ref in by_label and ref != info.label:
                visit(by_label[ref], path)
        seen.add(info.label)
        ordered.append(info)

    for info in tables:
        visit(info, set())
    return ordered


def estimate_rows(endpoint: Endpoint, conn: Connection, info: TableInfo) -> int:
    """A cheap row count: planner statistics where the database keeps them, else COUNT(*)."""
    qualified = f'"{info.schema}"."{info.name}"' if info.schema else f'"{info.name}"'
    with endpoint.errors(f"cannot count rows of {info.label!r}"):
        if endpoint.dialect == "postgresql":
            value = conn.execute(text("SELECT reltuples::bigint FROM pg_class WHERE oid = CAST(:t AS regclass)"),
                                 {"t": qualified}).scalar()
            if value is not None and value >= 0:
                return int(value)
        elif endpoint.dialect == "mssql":
            name = f"[{info.schema}].[{info.name}]" if info.schema else f"[{info.name}]"
            value = conn.execute(text("SELECT SUM(p.rows) FROM sys.partitions p WHERE p.object_id = "
                                      "OBJECT_ID(:t) AND p.index_id IN (0, 1)"), {"t": name}).scalar()
            if value is not None:
                return int(value)
        return int(conn.execute(select(func.count()).select_from(info.clause())).scalar() or 0)
