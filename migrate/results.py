"""Result objects of every verb, and the versioned JSON envelope that `--json` prints."""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from pathlib import Path
from typing import Any

from migrate import __version__

ENVELOPE_VERSION = 1


def jsonable(value: Any) -> Any:
    """Plain JSON types from dataclasses, paths, datetimes and enums (for `--json` and JSON reports)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        for name in ("clean", "changes"):  # derived properties worth having in machine output
            if isinstance(getattr(type(value), name, None), property):
                out[name] = getattr(value, name)
        return out
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def envelope(command: str, exit_code: int, result: Any = None, error: str | None = None) -> dict[str, Any]:
    """The one shape of every `--json` document; keys pinned by tests/test_cli.py."""
    return {
        "envelope": ENVELOPE_VERSION,
        "migrate": __version__,
        "command": command,
        "ok": exit_code == 0,
        "exit_code": exit_code,
        "result": jsonable(result),
        "error": error,
    }
