"""Canonical text of values (what makes equal values equal across dialects) and key encoding."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal

import pytest

from migrate.databases.keyranges import KeyRange, decode_ranges, encode_ranges, split
from migrate.databases.values import (
    ColumnKind,
    canonical_text,
    field_text,
    float_digits,
    kind_from_declared,
    same_value,
)

UUID = uuid.UUID("6F9619FF-8B86-D011-B42D-00C04FC964FF")


@pytest.mark.parametrize(("kind", "values", "expected"), [
    (ColumnKind("decimal", 4), [Decimal("12.5"), "12.50", 12.5, "12.5000"], "12.5000"),
    (ColumnKind("decimal", 2), [Decimal("-0.001"), "-0.00", 0], "0.00"),
    (ColumnKind("decimal", None), [Decimal("10.00"), "10", 10], "10"),
    (ColumnKind("timestamp", tz=True), [datetime(2024, 3, 1, 9, 0, tzinfo=timezone(timedelta(hours=1))),
                                        "2024-03-01T08:00:00Z", "2024-03-01 08:00:00", datetime(2024, 3, 1, 8)],
     "2024-03-01 08:00:00"),
    (ColumnKind("timestamp"), [datetime(2024, 3, 1, 8, 0, 0, 120000), "2024-03-01 08:00:00.12",
                               "2024-03-01T08:00:00.120000+00:00"], "2024-03-01 08:00:00.12"),
    (ColumnKind("bool"), [True, 1, "t", "true", "1"], "1"),
    (ColumnKind("bool"), [False, 0, "f", "false"], "0"),
    (ColumnKind("uuid"), [UUID, str(UUID).lower(), str(UUID), UUID.hex, UUID.bytes], UUID.hex),
    (ColumnKind("binary"), [b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")], "00ff"),
    (ColumnKind("date"), [date(2024, 1, 2), "2024-01-02", datetime(2024, 1, 2, 23, 59)], "2024-01-02"),
    (ColumnKind("time"), [time(8, 30), "08:30:00"], "08:30:00.000000"),
    (ColumnKind("float", 9), [0.1 + 0.2, 0.3, "0.3"], "0.300000000"),
    (ColumnKind("int"), [42, "42", Decimal(42)], "42"),
])
def test_equal_values_have_one_canonical_text(kind: ColumnKind, values: list, expected: str) -> None:
    assert {canonical_text(kind, v) for v in values} == {expected}


def test_null_is_never_equal_to_text_or_empty() -> None:
    text = ColumnKind("text")
    assert canonical_text(text, None) is None
    assert field_text(text, None) == "N|" and field_text(text, "") == "0:|" and field_text(text, "N") == "1:N|"
    assert field_text(text, "Zoë") == "4:Zoë|"  # length in UTF-8 bytes
    assert not same_value(text, None, "", 0) and not same_value(text, "x", None, 0)
    assert same_value(text, None, None, 0)


def test_floats_compare_with_the_tolerance() -> None:
    kind = ColumnKind("float", float_digits(1e-6))
    assert float_digits(1e-6) == 6 and float_digits(0.5) == 1
    assert same_value(kind, "1.0000001", "1.0000002", 1e-6)
    assert not same_value(kind, "1.0", "1.1", 1e-6)


def test_declared_types_give_kinds() -> None:
    assert kind_from_declared("NUMERIC(12,4)") == ColumnKind("decimal", 4)
    assert kind_from_declared("TIMESTAMPTZ") == ColumnKind("timestamp", tz=True)
    assert kind_from_declared("timestamp with time zone") == ColumnKind("timestamp", tz=True)
    assert kind_from_declared("DATETIME") == ColumnKind("timestamp")
    assert kind_from_declared("UUID_TEXT") == ColumnKind("uuid")
    assert kind_from_declared("BIGINT") == ColumnKind("int")
    assert kind_from_declared("") == ColumnKind("text")


def test_key_ranges_survive_the_journal() -> None:
    bounds = [(1, "a", datetime(2024, 1, 1, tzinfo=UTC)), (2, "b", datetime(2024, 1, 2, tzinfo=UTC))]
    ranges = split(bounds)
    assert ranges[0] == KeyRange(None, bounds[0]) and ranges[-1] == KeyRange(bounds[1], None)
    assert decode_ranges(encode_ranges(ranges)) == ranges
    odd = [(Decimal("1.5"), UUID, b"\x01", date(2024, 1, 1), time(1, 2))]
    assert decode_ranges(encode_ranges(split(odd))) == split(odd)
