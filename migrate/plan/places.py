"""Where a connection points, by identity rather than spelling, computed without connecting.

`127.0.0.1`, `localhost` and `::1` are one host; `sqlite:///a.db` and `sqlite:///./a.db` are one file; a folder
is its real path; a blob container is its account and container. Validate refuses an item whose source and
target resolve to the same place; preflight checks again by the places' own identities (server system
identifier and database oid, inode), which catches spellings no rule here can (a DNS alias, a bind mount).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from migrate.plan.model import DEFAULT_PORTS, Connection
from migrate.plan.urls import UrlParts

_LOOPBACK = re.compile(r"^(localhost|127(\.\d{1,3}){3}|::1|0:0:0:0:0:0:0:1|)$", re.IGNORECASE)


def place(connection: Connection, base_dir: Path) -> str | None:
    """A spelling-independent name for where `connection` points; None when it cannot be told offline."""
    if connection.path:
        return f"folder:{os.path.realpath(base_dir / Path(connection.path).expanduser())}"
    if connection.kind == "database":
        try:
            url = connection.url_parts()
        except ValueError:
            return None
        return _database_place(url, base_dir)
    account = _account(connection)
    return f"blob:{account}/{(connection.container or '').lower()}" if account else None


def _database_place(parsed: UrlParts, base_dir: Path) -> str | None:
    backend = parsed.backend
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            return None
        return f"sqlite:{os.path.realpath(base_dir / parsed.database)}"
    host = (parsed.host or "").strip("[]").lower()
    host = "loopback" if _LOOPBACK.match(host) else host
    port = parsed.port or DEFAULT_PORTS.get(backend, 0)
    return f"{backend}://{host}:{port}/{parsed.database or ''}"


def _account(connection: Connection) -> str | None:
    if connection.account_url:
        host = re.sub(r"^[a-z]+://", "", connection.account_url.lower()).split("/", 1)
        # Azurite and emulators put the account in the path: http://127.0.0.1:10000/devstoreaccount1
        return "/".join(p for p in host if p).rstrip("/").split("?", 1)[0] or None
    fields = dict(part.split("=", 1) for part in (connection.connection_string or "").split(";") if "=" in part)
    if "BlobEndpoint" in fields:
        return _account(Connection(account_url=fields["BlobEndpoint"], container=connection.container))
    name = fields.get("AccountName")
    return f"{name.lower()}.blob.{fields.get('EndpointSuffix', 'core.windows.net').lower()}" if name else None
