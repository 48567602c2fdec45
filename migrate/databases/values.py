"""Column kinds and the canonical text of a value: what makes equal values equal across dialects.

Every column gets a `ColumnKind` (from the source's type). Verification hashes, on each side and inside each
database, the canonical text of every value; this module holds the Python definition of that text (used as a
SQLite function and for row-level comparison) and the per-kind conversions applied when rows cross dialects.

Canonical text per kind (NULL stays NULL, which is never equal to any text, including ''):
  int        decimal digits                     decimal    fixed at the source scale (half away from zero)
  float      rounded to `digits` decimals       bool       '1' / '0'
  timestamp  UTC, 'YYYY-MM-DD HH:MM:SS[.ffffff]' (microseconds, trailing zeros dropped, as PostgreSQL prints)
  date       'YYYY-MM-DD'                       time       'HH:MM:SS.ffffff'
  uuid       32 lowercase hex digits            binary     lowercase hex     text  the text itself
Naive timestamps are taken as UTC.
"""

from __future__ import annotations

import math
import re
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

from sqlalchemy import types as sqltypes

KINDS = ("int", "decimal", "float", "bool", "timestamp", "date", "time", "uuid", "binary", "text")


@dataclass(frozen=True)
class ColumnKind:
    """How a column's values are compared: its kind, scale (decimals, floats) and time-zone awareness."""

    kind: str
    scale: int | None = None
    tz: bool = False
    native: bool = False  # this side's column already stores exactly `scale` digits (its plain text is canonical)
    single: bool = False  # a float4 (PostgreSQL real): compared as its 32-bit value

    def code(self) -> str:
        """Compact form passed to the SQLite function `mig_norm(code, scale, value)`."""
        return "float4" if self.kind == "float" and self.single else self.kind

    def __str__(self) -> str:
        extra = f"({self.scale})" if self.scale is not None else ""
        return f"{self.kind}{extra}{' tz' if self.tz else ''}"


def float_digits(tolerance: float | None) -> int | None:
    """Decimals kept when hashing floats: enough to resolve `tolerance` (rows are then compared with it); None
    without a tolerance: floats are then compared exactly (`float_text`)."""
    if tolerance is None:
        return None
    if tolerance <= 0:
        return 15
    return max(0, min(15, math.ceil(-math.log10(tolerance))))


_SCALE = re.compile(r"\(\s*(\d+)\s*(?:,\s*(-?\d+)\s*)?\)")


def kind_from_declared(declared: str) -> ColumnKind:
    """Kind of a column from its declared type text (SQLite keeps any name a schema author wrote)."""
    text = declared.upper()
    match = _SCALE.search(text)
    scale = int(match.group(2)) if match and match.group(2) is not None else (0 if match else None)
    if "BOOL" in text or text == "BIT":
        return ColumnKind("bool")
    if "TIMESTAMP" in text or "DATETIME" in text:
        return ColumnKind("timestamp", tz="TZ" in text or "TIME ZONE" in text or "OFFSET" in text)
    if text.startswith("DATE"):
        return ColumnKind("date")
    if text.startswith("TIME"):
        return ColumnKind("time")
    if "UUID" in text or "GUID" in text or "UNIQUEIDENTIFIER" in text:
        return ColumnKind("uuid")
    if "INT" in text:
        return ColumnKind("int")
    if any(word in text for word in ("DEC", "NUMERIC", "MONEY", "NUMBER")):
        return ColumnKind("decimal", scale=scale)
    if any(word in text for word in ("REAL", "FLOA", "DOUB")):
        return ColumnKind("float")
    if "BLOB" in text or "BINARY" in text or "BYTEA" in text:
        return ColumnKind("binary")
    return ColumnKind("text")


def kind_of(type_: sqltypes.TypeEngine[Any], declared: str | None = None) -> ColumnKind:
    """Kind of a reflected SQLAlchemy type (the declared text wins when SQLAlchemy could not tell)."""
    if isinstance(type_, sqltypes.NullType) and declared:
        return kind_from_declared(declared)
    name = type(type_).__name__.upper()
    if isinstance(type_, sqltypes.Boolean) or name == "BIT":
        return ColumnKind("bool")
    if "MONEY" in name:
        return ColumnKind("decimal", scale=4)
    if isinstance(type_, sqltypes.Integer):
        return ColumnKind("int")
    if isinstance(type_, sqltypes.Float):
        return ColumnKind("float")
    if isinstance(type_, sqltypes.Numeric):
        return ColumnKind("decimal", scale=type_.scale if type_.precision is not None else None)
    if isinstance(type_, sqltypes.DateTime) or "DATETIMEOFFSET" in name:
        return ColumnKind("timestamp", tz=bool(getattr(type_, "timezone", False)) or "OFFSET" in name)
    if isinstance(type_, sqltypes.Date):
        return ColumnKind("date")
    if isinstance(type_, sqltypes.Time):
        return ColumnKind("time")
    if isinstance(type_, sqltypes.Uuid) or name in ("UUID", "UNIQUEIDENTIFIER"):
        return ColumnKind("uuid")
    if isinstance(type_, sqltypes._Binary):
        return ColumnKind("binary")
    if declared and isinstance(type_, sqltypes.NullType):
        return kind_from_declared(declared)
    return ColumnKind("text")


# -- canonical text (Python side) --

def float_text(value: Any, single: bool = False) -> str:
    """A float exactly, as PostgreSQL 12+ prints it (`float8out`, or `float4out` with `single`): the fewest
    digits whose value lies strictly inside the float's rounding interval (PostgreSQL's Ryu does not take a
    decimal that sits exactly on the boundary, as Python's repr may), in fixed notation for decimal exponents
    -4 .. 14 (-4 .. 5 for single), else `d.ddde+XX`; NaN, Infinity, -Infinity; -0 and 0 both `0`."""
    x = float(value)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0:
        return "0"
    sign, digit_tuple, exp = _shortest(x, single).as_tuple()
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exp = int(exp) + len(digit_tuple) - len(digits)
    sci = len(digits) + exp - 1
    if sci < -4 or sci >= (6 if single else 15):
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        out = f"{mantissa}e{'-' if sci < 0 else '+'}{abs(sci):02d}"
    elif exp >= 0:
        out = digits + "0" * exp
    else:
        point = len(digits) + exp
        out = "0." + "0" * -point + digits if point <= 0 else digits[:point] + "." + digits[point:]
    return ("-" if sign else "") + out


def _shortest(x: float, single: bool) -> Decimal:
    """The correctly rounded decimal of the fewest significant digits strictly inside x's rounding interval
    (as a float32 with `single`)."""
    if single:
        x = struct.unpack("f", struct.pack("f", x))[0]
        bits = struct.unpack("I", struct.pack("f", abs(x)))[0]
        down = abs(struct.unpack("f", struct.pack("I", bits - 1))[0]) if bits > 1 else 0.0
        up = struct.unpack("f", struct.pack("I", bits + 1))[0]
    else:
        down, up = math.nextafter(abs(x), 0.0), math.nextafter(abs(x), math.inf)
    with localcontext(prec=1200):
        exact = Decimal(abs(x))
        low = (exact + Decimal(down)) / 2
        high = exact + (exact - low) if math.isinf(up) else (exact + Decimal(up)) / 2  # the largest finite float
        for precision in range(1, 18):
            candidate = Decimal(f"{abs(x):.{precision - 1}e}")
            if low < candidate < high:
                return -candidate if x < 0 else candidate
    return Decimal(repr(x))


def _to_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(format(value, ".15g"))
    return Decimal(str(value).strip())


def _fixed(value: Decimal, scale: int | None) -> str:
    if scale is None:
        out = format(value.normalize(), "f")
    else:
        out = format(value.quantize(Decimal(1).scaleb(-scale), rounding=ROUND_HALF_UP), "f")
    if out.startswith("-") and not out.strip("-0."):
        out = out[1:]  # no negative zero
    return out


def as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    text = str(value).strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text)


def utc_naive(value: Any) -> datetime:
    moment = as_datetime(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")
    return bool(value)


def as_uuid(value: Any) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)) and len(bytes(value)) == 16:
        return uuid.UUID(bytes=bytes(value))
    return uuid.UUID(str(value).strip())


def canonical_text(kind: ColumnKind, value: Any) -> str | None:
    """The canonical text of one value (None for NULL). Unparseable values fall back to their text."""
    if value is None:
        return None
    try:
        return _canonical(kind, value)
    except (ValueError, TypeError, InvalidOperation, OverflowError):
        return str(value)


def _canonical(kind: ColumnKind, value: Any) -> str:
    k = kind.kind
    if k == "text":
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value).decode("utf-8", "replace")
        return value if isinstance(value, str) else str(value)
    if k == "int":
        return str(int(value)) if not isinstance(value, str) else str(int(Decimal(value)))
    if k == "decimal":
        return _fixed(_to_decimal(value), kind.scale)
    if k == "float":
        if kind.scale is None:  # exact (no float_tolerance in the plan)
            return float_text(value, kind.single)
        return _fixed(_to_decimal(value), kind.scale)
    if k == "bool":
        return "1" if as_bool(value) else "0"
    if k == "timestamp":
        return timestamp_text(utc_naive(value))
    if k == "date":
        return (value.date() if isinstance(value, datetime) else as_datetime(value).date()).isoformat()
    if k == "time":
        moment = value if isinstance(value, time) else time.fromisoformat(str(value))
        return moment.strftime("%H:%M:%S.%f")
    if k == "uuid":
        return as_uuid(value).hex
    if k == "binary":
        if isinstance(value, str):
            return value.encode("utf-8").hex()
        return bytes(value).hex()
    return str(value)


def timestamp_text(moment: datetime) -> str:
    """'YYYY-MM-DD HH:MM:SS' plus '.' and the microseconds without trailing zeros (PostgreSQL's ISO output)."""
    text = moment.isoformat(sep=" ", timespec="seconds")[:19]  # strftime('%Y') drops the year's zeros: '1-01-01'
    if moment.microsecond:
        text += "." + f"{moment.microsecond:06d}".rstrip("0")
    return text


def canonical_field_sql_udf(code: str, scale: int | None, value: Any) -> str | None:
    """SQLite function `mig_norm(kind, scale, value)`: canonical text of a stored value, or NULL."""
    if code == "float4":
        return canonical_text(ColumnKind("float", scale, single=True), value)
    return canonical_text(ColumnKind(code, scale), value)


def field_text(kind: ColumnKind, canonical: str | None) -> str:
    """How one value enters the row text that is hashed: 'N' for NULL, text prefixed by its UTF-8 length,
    then '|'."""
    if canonical is None:
        return "N|"
    if kind.kind == "text":
        return f"{len(canonical.encode('utf-8'))}:{canonical}|"
    return canonical + "|"


def same_value(kind: ColumnKind, a: str | None, b: str | None, tolerance: float | None) -> bool:
    """Compare two canonical texts; with a `tolerance`, floats within it count as equal. NULL equals only NULL."""
    if a is None or b is None:
        return a is None and b is None
    if a == b:
        return True
    if kind.kind == "float" and tolerance is not None:
        try:
            return abs(float(a) - float(b)) <= tolerance
        except ValueError:
            return False
    return False


# -- conversion of values crossing dialects --

Converter = Callable[[Any], Any]


def converter(kind: ColumnKind, source: str, target: str, target_kind: ColumnKind) -> Converter | None:
    """A function turning a source driver value into what the target driver takes (None: pass as is)."""
    if source == target:
        return None
    k = kind.kind
    if target == "sqlite":
        if k == "timestamp":
            return _to_sqlite_timestamp
        if k == "decimal":
            return _to_text_decimal
        if k == "uuid":
            return lambda v: None if v is None else as_uuid(v).hex
        if k in ("date", "time"):
            return lambda v: None if v is None else v.isoformat() if hasattr(v, "isoformat") else str(v)
        if k == "bool":
            return lambda v: None if v is None else int(as_bool(v))
        if k == "binary":
            return lambda v: None if v is None else bytes(v)
        return None
    if k == "timestamp":
        return _aware_utc if target_kind.tz else _naive_utc
    if k == "decimal":
        return lambda v: None if v is None else _to_decimal(v)
    if k == "bool":
        return lambda v: None if v is None else as_bool(v)
    if k == "uuid":
        return lambda v: None if v is None else as_uuid(v)
    if k == "date":
        return lambda v: None if v is None else (v if isinstance(v, date) else as_datetime(v).date())
    if k == "time":
        return lambda v: None if v is None else (v if isinstance(v, time) else time.fromisoformat(str(v)))
    if k == "binary":
        return lambda v: None if v is None else bytes(v)
    return None


def _to_sqlite_timestamp(value: Any) -> Any:
    if value is None:
        return None
    moment = as_datetime(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.isoformat(sep=" ", timespec="microseconds")


def _to_text_decimal(value: Any) -> Any:
    return None if value is None else format(_to_decimal(value), "f")


def _aware_utc(value: Any) -> Any:
    if value is None:
        return None
    moment = as_datetime(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _naive_utc(value: Any) -> Any:
    return None if value is None else utc_naive(value)
