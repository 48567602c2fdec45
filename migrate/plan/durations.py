"""Durations as plans write them: `30s`, `5m`, `72h`, `2d`, `500ms`, or a bare number of seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
# Also the `pattern` of a written duration in `migrate schema`, so the schema and the parser cannot drift apart.
DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$"
_DURATION = re.compile(DURATION_PATTERN)


MAX_DURATION = 3650 * 86400.0  # ten years: far past any interval, lag or timeout, well inside sleep and datetime


def parse_duration(value: object) -> float:
    """Return seconds; raise ValueError with a message that says what is accepted."""
    if isinstance(value, bool):
        raise ValueError("a duration like 30s, 5m or 72h is expected, not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = float(value) if value <= MAX_DURATION else float("inf")  # (an int too large for a float)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"bad duration {str(value)!r}: write a number and a unit, like 30s, 5m or 72h")
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not seconds <= MAX_DURATION:  # also NaN
        raise ValueError(f"a duration is at most {MAX_DURATION / 86400:.0f}d")
    return seconds


def format_duration(seconds: float) -> str:
    """Short human form: 45s, 3m20s, 2h05m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
