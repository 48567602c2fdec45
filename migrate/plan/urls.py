"""Database URLs read the way SQLAlchemy reads them, without importing SQLAlchemy, so that `migrate validate`
checks plans at once (SQLAlchemy itself takes longer to import than the rest of validate to run). The pattern
is SQLAlchemy's own (`sqlalchemy.engine.url._parse_url`); tests/test_plan_urls.py holds the two to the same
answers. Connecting still goes through SQLAlchemy's `make_url`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

_PATTERN = re.compile(
    r"""
        (?P<name>[\w\+]+)://
        (?:
            (?P<username>[^:/]*)
            (?::(?P<password>[^@]*))?
        @)?
        (?:
            (?:
                \[(?P<ipv6host>[^/\?]+)\] |
                (?P<ipv4host>[^/:\?]+)
            )?
            (?::(?P<port>[^/\?]*))?
        )?
        (?:/(?P<database>[^\?]*))?
        (?:\?(?P<query>.*))?
    """,
    re.X,
)


@dataclass(frozen=True)
class UrlParts:
    drivername: str
    username: str | None = None
    password: str | None = None
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: dict[str, str] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return self.drivername.split("+", 1)[0]

    @property
    def driver(self) -> str:
        """The DBAPI after `+` ("" when the URL names none)."""
        return self.drivername.split("+", 1)[1] if "+" in self.drivername else ""


def parse(url: str) -> UrlParts:
    """The parts of a database URL; ValueError where SQLAlchemy's `make_url` (or its `.port`) would fail."""
    match = _PATTERN.match(url)
    if match is None:
        raise ValueError("Could not parse SQLAlchemy URL from given URL string")
    parts = match.groupdict()
    port = parts["port"]
    if port == "":
        raise ValueError("Port argument must be an integer or None")
    return UrlParts(
        drivername=parts["name"],
        username=unquote(parts["username"]) if parts["username"] is not None else None,
        password=unquote(parts["password"]) if parts["password"] is not None else None,
        host=parts["ipv4host"] or parts["ipv6host"],
        port=int(port) if port else None,
        database=parts["database"],
        query=dict(parse_qsl(parts["query"])) if parts["query"] else {},
    )
