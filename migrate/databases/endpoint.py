"""A database endpoint: its SQLAlchemy engine, URL handling, and the translation of driver errors.

Every failure that leaves this module is an `EndpointError` of one line that names the connection and never
shows a password (each message goes through `redact()`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, NoSuchTableError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from migrate import interrupt
from migrate.databases.values import canonical_field_sql_udf
from migrate.errors import EndpointError, MigrateError
from migrate.plan.model import Connection
from migrate.redact import redact

DIALECTS = ("sqlite", "postgresql", "mssql")
_ENTRA_LOGIN_HINT = ("the token was refused: the identity DefaultAzureCredential chose needs a user in the "
                     "database (CREATE USER [name] FROM EXTERNAL PROVIDER) and the server an Entra ID admin; "
                     "AZURE_TOKEN_CREDENTIALS picks the identity")
_MSSQL_DRIVER_HINT = ("SQL Server needs Microsoft's driver: pip install 'migrate[mssql]' (mssql-python, for "
                      "mssql+mssqlpython URLs; 'migrate[pymssql]' for mssql+pymssql)")

_CAUSES = [
    # (what we say, fragments of driver messages that mean it); checked in order
    ("bad credentials", ("password authentication failed", "login failed", "authentication failed",
                         "no password supplied", "role \"", "invalid authorization")),
    ("permission denied", ("permission denied", "not authorized", "readonly database", "read-only",
                           "access denied", "must be owner", "the select permission was denied")),
    ("server unreachable", ("could not connect", "connection refused", "could not translate host",
                            "timeout expired", "timed out", "name or service not known", "network is unreachable",
                            "unable to open database file", "server closed the connection",
                            "adaptive server is unavailable", "connection to server",
                            "client unable to establish connection", "login timeout expired")),
    ("missing object", ("does not exist", "no such table", "invalid object name", "unknown database",
                        "no such column")),
]


def classify(exc: BaseException) -> str:
    """One short cause for a driver error: bad credentials, permission denied, unreachable, missing object."""
    if isinstance(exc, NoSuchTableError):
        return "missing object"
    text = str(getattr(exc, "orig", None) or exc).lower()
    for cause, fragments in _CAUSES:
        if any(f in text for f in fragments):
            return cause
    return "database error"


def first_line(exc: BaseException) -> str:
    """The driver's own message, first line only, redacted."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip() or inner.__class__.__name__
    for line in text.splitlines():
        if line.strip():
            return redact(line.strip())
    return redact(text)


class Endpoint:
    """One side of a database item (a named connection in the plan)."""

    def __init__(self, name: str, url: str | URL, base_dir: Path, *, role: str = "source",
                 pool_size: int = 4, entra_cloud: str | None = None) -> None:
        self.name = name
        self.role = role
        self.pool_size = pool_size
        self.entra_cloud = entra_cloud  # `auth: entra`: sign in with an Entra ID token for this Azure cloud
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise EndpointError(f"{role} connection {name!r}: not a database URL: {redact(url)}") from exc
        self.url: URL = _resolve_sqlite(parsed, base_dir)
        self.dialect = self.url.get_backend_name()
        if self.dialect not in DIALECTS:
            raise EndpointError(f"{role} connection {name!r}: unsupported database {self.dialect!r} "
                                f"(supported: {', '.join(DIALECTS)})")
        self._engine: Engine | None = None
        # replicated rows must not fire the target's triggers (nor its FK checks, which load order breaks)
        self.replica_role = False

    @classmethod
    def of(cls, name: str, connection: Connection | None, base_dir: Path, *, role: str = "source",
           pool_size: int = 4) -> Endpoint:
        """The endpoint of the plan's connection `name` (its URL from `Connection.database_url`)."""
        if connection is None or connection.kind != "database":
            raise MigrateError(f"connection {name!r} is not a database connection")
        try:
            url = connection.database_url()
        except (ArgumentError, ValueError) as exc:
            raise EndpointError(f"{role} connection {name!r}: not a database URL: {redact(exc)}") from exc
        return cls(name, url, base_dir, role=role, pool_size=pool_size,
                   entra_cloud=connection.cloud if connection.auth == "entra" else None)

    @property
    def shown(self) -> str:
        return redact(self.url.render_as_string(hide_password=True))

    @property
    def label(self) -> str:
        return f"{self.role} connection {self.name!r}"

    @property
    def sqlite_path(self) -> Path | None:
        if self.dialect != "sqlite" or not self.url.database or self.url.database == ":memory:":
            return None
        return Path(self.url.database)

    def exists(self) -> bool:
        """False only for a SQLite file that is not there yet (connecting would create it)."""
        path = self.sqlite_path
        return path is None or path.exists()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self.errors("cannot open"):
                self._engine = self._create_engine()
        return self._engine

    def _create_engine(self) -> Engine:
        if self.dialect == "sqlite":
            path = self.sqlite_path
            if path is not None and self.role == "target":
                path.parent.mkdir(parents=True, exist_ok=True)
            elif path is not None and not path.exists():  # connecting would create an empty source
                raise EndpointError(f"{self.label}: SQLite file {path} does not exist (check the url in the plan)")
            engine = create_engine(self.url, connect_args={"timeout": 60, "check_same_thread": False},
                                   poolclass=NullPool)
            event.listen(engine, "connect", _sqlite_on_connect)
            interrupt.watch_engine(engine)
            return engine
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": self.pool_size, "max_overflow": 4}
        if self.dialect == "postgresql":
            options = "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=1"  # 1+: floats print exactly
            if self.replica_role:
                options += " -c session_replication_role=replica"
            kwargs["connect_args"] = {"options": options, "connect_timeout": 10}
        try:
            engine = create_engine(self.url, **kwargs)
            if self.entra_cloud is not None:
                _sign_in_with_entra(engine, self.entra_cloud)
            interrupt.watch_engine(engine)
            return engine
        except NoSuchModuleError as exc:
            raise EndpointError(f"{self.label}: no SQLAlchemy dialect for {self.url.drivername!r}",
                                hint=self._driver_hint()) from exc
        except ImportError as exc:
            raise EndpointError(f"{self.label}: the database driver is not installed: {exc}",
                                hint=self._driver_hint()) from exc

    def _driver_hint(self) -> str | None:
        return _MSSQL_DRIVER_HINT if self.dialect == "mssql" else None

    def read_only_engine(self) -> Engine:
        """An engine that cannot write (used by `preview`): SQLite opened with mode=ro."""
        if self.dialect != "sqlite" or self.sqlite_path is None:
            return self.engine
        uri = f"file:{self.sqlite_path}?mode=ro"
        engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                               poolclass=NullPool)
        event.listen(engine, "connect", _sqlite_on_connect)
        interrupt.watch_engine(engine)
        return engine

    @contextmanager
    def errors(self, action: str = "failed") -> Iterator[None]:
        """Turn any driver or SQLAlchemy error raised inside into a one-line `EndpointError`; once Ctrl-C
        was pressed, into KeyboardInterrupt instead (a cancelled statement is no database error)."""
        interrupt.check()
        try:
            yield
        except EndpointError:
            interrupt.check()
            raise
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            interrupt.check()
            raise self.error(exc, action) from exc
        except Exception as exc:
            interrupt.check()
            if _is_driver_error(exc):
                raise self.error(exc, action) from exc
            raise

    def error(self, exc: BaseException, action: str = "failed") -> EndpointError:
        cause = classify(exc)
        hint = _ENTRA_LOGIN_HINT if self.entra_cloud is not None and cause == "bad credentials" else None
        return EndpointError(f"{self.label} ({self.shown}): {action}: {cause}: {first_line(exc)}", hint,
                             transient=cause == "server unreachable")

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


def _sign_in_with_entra(engine: Engine, cloud: str) -> None:
    """Each new DBAPI connection of `engine` logs in with a fresh Entra ID token from DefaultAzureCredential
    for `cloud`'s Azure SQL scope, handed to mssql-python as its `token_provider` (which bulk copy, logging
    in on its own channel, asks again)."""
    from migrate.azure.credentials import SqlAccessToken, default_credential

    credential = default_credential(cloud)

    @event.listens_for(engine, "do_connect")
    def _token(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["token_provider"] = SqlAccessToken(credential, cloud)


def _is_driver_error(exc: BaseException) -> bool:
    module = type(exc).__module__.split(".")[0]
    return module in {"psycopg", "psycopg2", "pymssql", "_mssql", "mssql_python", "pyodbc"}


def _resolve_sqlite(url: URL, base_dir: Path) -> URL:
    """`sqlite:///x.db` is relative to the plan's folder, not to where the command runs."""
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return url
    path = Path(url.database).expanduser()
    if not path.is_absolute():
        path = (base_dir / path).resolve()
    return url.set(database=str(path))


def _md5(text: str | None) -> str | None:
    return None if text is None else hashlib.md5(text.encode("utf-8")).hexdigest()


class _Sum60:
    """SQLite aggregate: sum of the low 60 bits of md5 hex digests, as decimal text (never overflows)."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, digest: str | None) -> None:
        if digest is not None:
            self.total += int(digest[17:], 16)

    def finalize(self) -> str:
        return str(self.total)


class _KeySum:
    """SQLite aggregate: an exact big-integer sum (for key-only checksums that may exceed 64 bits)."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, value: int | None) -> None:
        if value is not None:
            self.total += int(value)

    def finalize(self) -> str:
        return str(self.total)


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    """Register the checksum functions every SQLite connection needs (md5, canonical text, sums)."""
    dbapi_conn.create_function("md5", 1, _md5, deterministic=True)
    dbapi_conn.create_function("mig_norm", 3, canonical_field_sql_udf, deterministic=True)
    dbapi_conn.create_aggregate("mig_sum60", 1, _Sum60)
    dbapi_conn.create_aggregate("mig_bigsum", 1, _KeySum)
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
