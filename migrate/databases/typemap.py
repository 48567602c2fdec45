"""Map a source column's type to the target dialect (the table and the reasons are in the README, "Type mapping").

Within one dialect the declared type is kept exactly. Across dialects each kind has one target type; a
mapping that can lose information is refused unless the plan says `accept_lossy: true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import UserDefinedType

from migrate.databases.values import ColumnKind, kind_of

MSSQL_MAX_PRECISION = 38
SQLITE_EXACT_DIGITS = 15  # SQLite keeps 15 significant digits when it turns numeric text into REAL


class DeclaredType(UserDefinedType[Any]):
    """A type written out exactly as declared on the source (used when both sides share a dialect)."""

    cache_ok = True

    def __init__(self, declared: str) -> None:
        self.declared = declared

    def get_col_spec(self, **_kw: Any) -> str:
        return self.declared

    def __repr__(self) -> str:
        return f"DeclaredType({self.declared!r})"


@dataclass(frozen=True)
class Mapped:
    """A target type, and why the mapping may lose information (None when it does not)."""

    type: sqltypes.TypeEngine[Any]
    lossy: str | None = None


def map_type(type_: sqltypes.TypeEngine[Any], declared: str | None, kind: ColumnKind,
             source: str, target: str) -> Mapped:
    """The target type of one column."""
    if source == target:
        if declared is not None and declared.strip():
            return Mapped(DeclaredType(declared))
        if source == "sqlite":
            return Mapped(DeclaredType(""))
        return Mapped(type_)
    mapper = {"postgresql": _to_postgresql, "mssql": _to_mssql, "sqlite": _to_sqlite}[target]
    return mapper(type_, declared, kind, source)


def _known_text(type_: sqltypes.TypeEngine[Any], declared: str | None, source: str) -> bool:
    """True when the source type really is text (not an unknown type that we would turn into text)."""
    if source == "sqlite":
        return True  # every SQLite value has a text form and SQLite has no richer types to lose
    return isinstance(type_, (sqltypes.String, sqltypes.JSON, sqltypes.Enum))


def stored_as_text(type_: sqltypes.TypeEngine[Any], source: str) -> bool:
    """True when a column has no equivalent in another dialect and moves as its text (a lossy mapping)."""
    return not _known_text(type_, None, source) and kind_of(type_).kind == "text"


def _lossy_text(type_: sqltypes.TypeEngine[Any], declared: str | None) -> str:
    return f"{declared or type_} has no equivalent; its values would be stored as text"


def _length(type_: sqltypes.TypeEngine[Any]) -> int | None:
    return getattr(type_, "length", None)


def _precision(type_: sqltypes.TypeEngine[Any], declared: str | None,
               kind: ColumnKind) -> tuple[int | None, int | None]:
    precision = getattr(type_, "precision", None)
    scale = getattr(type_, "scale", None)
    if precision is None and declared:
        from migrate.databases.values import _SCALE

        match = _SCALE.search(declared)
        if match:
            precision = int(match.group(1))
            scale = int(match.group(2)) if match.group(2) is not None else 0
    if precision is None and kind.scale is not None and "MONEY" in type(type_).__name__.upper():
        return 19, 4
    return precision, scale


def _int_size(type_: sqltypes.TypeEngine[Any], source: str) -> str:
    if source == "sqlite":
        return "big"  # SQLite integers are 64-bit
    if isinstance(type_, sqltypes.SmallInteger) or type(type_).__name__.upper() == "TINYINT":
        return "small"
    if isinstance(type_, sqltypes.BigInteger):
        return "big"
    return "int"


def _to_postgresql(type_: sqltypes.TypeEngine[Any], declared: str | None, kind: ColumnKind,
                   source: str) -> Mapped:
    k = kind.kind
    if k == "int":
        size = _int_size(type_, source)
        return Mapped({"small": sqltypes.SmallInteger(), "big": sqltypes.BigInteger()}.get(size, sqltypes.Integer()))
    if k == "decimal":
        precision, scale = _precision(type_, declared, kind)
        if precision is None:
            return Mapped(sqltypes.Numeric())
        return Mapped(sqltypes.Numeric(precision, scale or 0))
    if k == "float":
        if getattr(type_, "precision", None) and type_.precision <= 24:  # type: ignore[attr-defined]
            return Mapped(postgresql.REAL())
        return Mapped(postgresql.DOUBLE_PRECISION())
    if k == "bool":
        return Mapped(sqltypes.Boolean())
    if k == "timestamp":
        return Mapped(postgresql.TIMESTAMP(timezone=kind.tz))
    if k == "date":
        return Mapped(sqltypes.Date())
    if k == "time":
        return Mapped(postgresql.TIME())
    if k == "uuid":
        return Mapped(postgresql.UUID())
    if k == "binary":
        return Mapped(postgresql.BYTEA())
    if isinstance(type_, sqltypes.JSON):
        return Mapped(postgresql.JSONB())
    if not _known_text(type_, declared, source):
        return Mapped(sqltypes.Text(), _lossy_text(type_, declared))
    length = _length(type_)
    if length and not isinstance(type_, sqltypes.Text):
        return Mapped(sqltypes.VARCHAR(length))
    return Mapped(sqltypes.Text())


def _to_mssql(type_: sqltypes.TypeEngine[Any], declared: str | None, kind: ColumnKind, source: str) -> Mapped:
    from sqlalchemy.dialects import mssql  # only for SQL Server targets: not imported before it is needed

    k = kind.kind
    if k == "int":
        size = _int_size(type_, source)
        return Mapped({"small": sqltypes.SmallInteger(), "big": sqltypes.BigInteger()}.get(size, sqltypes.Integer()))
    if k == "decimal":
        precision, scale = _precision(type_, declared, kind)
        if precision is None:
            return Mapped(mssql.DECIMAL(38, 10), "numeric without precision becomes decimal(38,10)")
        if precision > MSSQL_MAX_PRECISION:
            return Mapped(mssql.DECIMAL(38, min(scale or 0, 38)),
                          f"numeric({precision},{scale}) exceeds SQL Server's 38 digits")
        return Mapped(mssql.DECIMAL(precision, scale or 0))
    if k == "float":
        if getattr(type_, "precision", None) and type_.precision <= 24:  # type: ignore[attr-defined]
            return Mapped(mssql.REAL())
        return Mapped(mssql.FLOAT(53))
    if k == "bool":
        return Mapped(mssql.BIT())
    if k == "timestamp":
        return Mapped(mssql.DATETIMEOFFSET(6) if kind.tz else mssql.DATETIME2(6))
    if k == "date":
        return Mapped(mssql.DATE())
    if k == "time":
        return Mapped(mssql.TIME(6))
    if k == "uuid":
        return Mapped(mssql.UNIQUEIDENTIFIER())
    if k == "binary":
        length = _length(type_)
        return Mapped(mssql.VARBINARY(length if length and length <= 8000 else None))
    if isinstance(type_, sqltypes.JSON):
        return Mapped(mssql.NVARCHAR(None))
    if not _known_text(type_, declared, source):
        return Mapped(mssql.NVARCHAR(None), _lossy_text(type_, declared))
    length = _length(type_)
    if length and length <= 4000 and not isinstance(type_, sqltypes.Text):
        return Mapped(mssql.NVARCHAR(length))
    return Mapped(mssql.NVARCHAR(None))


def _to_sqlite(type_: sqltypes.TypeEngine[Any], declared: str | None, kind: ColumnKind, source: str) -> Mapped:
    k = kind.kind
    if k == "int":
        return Mapped(DeclaredType("BIGINT" if _int_size(type_, source) == "big" else "INTEGER"))
    if k == "decimal":
        precision, scale = _precision(type_, declared, kind)
        if precision is None or precision > SQLITE_EXACT_DIGITS:
            return Mapped(DeclaredType(f"DECIMAL_TEXT({precision or 1000},{scale or 0})"))
        return Mapped(DeclaredType(f"NUMERIC({precision},{scale or 0})"))
    if k == "float":
        return Mapped(DeclaredType("REAL"))
    if k == "bool":
        return Mapped(DeclaredType("BOOLEAN"))
    if k == "timestamp":
        return Mapped(DeclaredType("TIMESTAMPTZ" if kind.tz else "TIMESTAMP"))
    if k in ("date", "time"):
        return Mapped(DeclaredType(k.upper()))
    if k == "uuid":
        return Mapped(DeclaredType("UUID_TEXT"))
    if k == "binary":
        return Mapped(DeclaredType("BLOB"))
    if not _known_text(type_, declared, source):
        return Mapped(DeclaredType("TEXT"), _lossy_text(type_, declared))
    length = _length(type_)
    return Mapped(DeclaredType(f"VARCHAR({length})" if length else "TEXT"))
