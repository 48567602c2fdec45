"""Plan format version 1 (DESIGN section 4) as pydantic models; unknown keys are errors."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from migrate.plan.durations import DURATION_PATTERN, MAX_DURATION, parse_duration
from migrate.plan.urls import UrlParts
from migrate.plan.urls import parse as parse_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# `${VAR}`: the loader replaces it by the variable's value in any string value of a plan, before validation.
ENV_REF_PATTERN = r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}"
INTERPOLATED_JSON_SCHEMA = {"type": "string", "pattern": ENV_REF_PATTERN,
                            "description": "`${VAR}`: the value of an environment variable, filled in when loading"}

Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema({
    "description": "A duration: a number and a unit (500ms, 30s, 5m, 72h, 2d), or a number of seconds",
    "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "number", "minimum": 0,
                                                                 "maximum": MAX_DURATION},
              INTERPOLATED_JSON_SCHEMA],
}, mode="validation")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AzureResource(Strict):
    """Where a connection lives in Azure, for read-only preflight and optional provisioning."""

    subscription_id: str
    resource_group: str
    cloud: Literal["AzureCloud", "AzureUSGovernment", "AzureChinaCloud"] = "AzureCloud"
    server: str | None = None  # Azure SQL logical server
    database: str | None = None
    storage_account: str | None = None
    create: bool = False  # create the database when missing (never deletes anything)
    sku: str | None = None  # e.g. GP_Gen5_2, S3
    max_size_gb: float | None = None
    location: str | None = None


def _check_url(url: str) -> None:
    """A database URL SQLAlchemy can read, with a numeric port (said here, not as a crash at connect time)."""
    try:
        parse_url(url)
    except ValueError:
        raise ValueError("`url` is not a database URL with a numeric port, like "
                         "postgresql+psycopg://user@host:5432/db") from None


# what a field-form `driver` without a `+dbapi` suffix means, and the port when the plan names none
DEFAULT_DRIVERS = {"postgresql": "postgresql+psycopg", "mssql": "mssql+mssqlpython", "sqlite": "sqlite"}
DEFAULT_PORTS = {"postgresql": 5432, "mssql": 1433}
FIELD_KEYS = ("driver", "host", "port", "database", "user", "password", "query")
_DRIVER = re.compile(r"^(postgresql|mssql|sqlite)(\+[A-Za-z0-9_]+)?$")


def _port(value: object) -> object:
    return None if isinstance(value, str) and value.startswith("unset-") else value  # unset ${VAR} (--skip-env)


def _query_value(value: object) -> object:
    if isinstance(value, bool):  # YAML reads yes/no/true as booleans; drivers want their own spelling
        raise ValueError("write the value in quotes (\"yes\", \"true\"): drivers want it as text")
    return str(value) if isinstance(value, int | float) else value


class Connection(Strict):
    """A named endpoint: a database (a URL, or its fields), a local folder, or an Azure Blob container."""

    url: str | None = None
    driver: str | None = None  # field form: postgresql | mssql | sqlite, optionally +dbapi
    host: str | None = None
    port: Annotated[Annotated[int, Field(ge=1, le=65535)] | None, BeforeValidator(_port)] = None
    database: str | None = None
    user: str | None = None
    password: str | None = None
    query: dict[str, Annotated[str, BeforeValidator(_query_value)]] | None = None  # e.g. sslmode, Encrypt
    path: str | None = None
    account_url: str | None = None
    connection_string: str | None = None
    sas_token: str | None = None
    container: str | None = None
    azure: AzureResource | None = None
    auth: Literal["password", "entra"] = "password"  # entra: a token from DefaultAzureCredential (SQL Server)

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str | None) -> str | None:
        if value is not None and not _DRIVER.match(value):
            raise ValueError("`driver` is postgresql, mssql or sqlite, optionally with a SQLAlchemy driver "
                             "such as postgresql+psycopg")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Connection:
        fields = [k for k in FIELD_KEYS if getattr(self, k) is not None]
        kinds = [k for k in ("url", "path", "account_url", "connection_string") if getattr(self, k)]
        if fields:
            kinds.insert(1, "fields (" + ", ".join(fields) + ")")
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"give exactly one of url, the fields {'/'.join(FIELD_KEYS)}, path, account_url or "
                             f"connection_string (found: {found})")
        if self.url and "unset-" not in self.url:  # a stand-in for an unset ${VAR} (validate --skip-env)
            _check_url(self.url)
        if fields:
            self._check_fields()
        if self.kind == "blob":
            if not self.container:
                raise ValueError("a blob connection needs `container`")
            if not 3 <= len(self.container) <= 63:
                raise ValueError("`container` must be 3 to 63 characters long")
        elif self.container or self.sas_token:
            raise ValueError("`container` and `sas_token` belong to blob connections only")
        if self.auth == "entra":
            self._check_entra()
        return self

    def _check_fields(self) -> None:
        if self.driver is None:
            raise ValueError("a connection written as fields needs `driver` (postgresql, mssql or sqlite)")
        if self.backend == "sqlite":
            extra = [k for k in ("host", "port", "user", "password") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"a sqlite connection takes no {', '.join(extra)}: only `database` (the file)")
            if not self.database:
                raise ValueError("a sqlite connection needs `database` (the file)")
        else:
            missing = [k for k in ("host", "database") if not getattr(self, k)]
            if missing:
                raise ValueError(f"a {self.backend} connection needs {' and '.join(f'`{k}`' for k in missing)}")

    def _check_entra(self) -> None:
        if self.kind != "database":
            raise ValueError("`auth: entra` belongs to SQL Server database connections")
        if self.url and "unset-" in self.url:  # nothing to check until the variable is set
            return
        url = self.url_parts()
        if url.backend != "mssql":
            raise ValueError(f"`auth: entra` signs in to SQL Server / Azure SQL only (this connection is "
                             f"{url.backend})")
        if url.driver != "mssqlpython":
            raise ValueError(f"`auth: entra` needs the mssql+mssqlpython driver ({url.driver} cannot "
                             "take an Entra ID token)")
        if url.password is not None:
            raise ValueError("`auth: entra` takes no password: the Entra ID token is the credential")
        if any(k.lower() == "authentication" for k in url.query):
            raise ValueError("`auth: entra` hands the driver its token: remove `authentication` from the query")

    @property
    def kind(self) -> Literal["database", "folder", "blob"]:
        if self.url or self.driver:
            return "database"
        if self.path:
            return "folder"
        return "blob"

    @property
    def backend(self) -> str:
        """postgresql, mssql or sqlite for a database connection ("" for any other kind)."""
        if self.driver:
            return self.driver.split("+", 1)[0]
        return self.url.split("+", 1)[0].split(":", 1)[0] if self.url else ""

    @property
    def cloud(self) -> str:
        """The Azure cloud this connection signs in to (its `azure:` block's, else AzureCloud)."""
        return self.azure.cloud if self.azure else "AzureCloud"

    def url_parts(self) -> UrlParts:
        """The database URL's parts, read without SQLAlchemy (validate): as `database_url`, with the password."""
        if self.url:
            parts = parse_url(self.url)
        elif self.driver:
            backend = self.backend
            parts = UrlParts(self.driver if "+" in self.driver else DEFAULT_DRIVERS[backend], self.user,
                             self.password, self.host, self.port or DEFAULT_PORTS.get(backend), self.database,
                             dict(self.query or {}))
        else:
            raise ValueError(f"a {self.kind} connection has no database URL")
        if parts.drivername == "mssql":
            parts = replace(parts, drivername=DEFAULT_DRIVERS["mssql"])
        return parts

    def database_url(self, *, with_password: bool = False) -> URL:
        """The SQLAlchemy URL of a database connection: `url` as written, or built from the fields with
        `URL.create` (so a password holding `@ # / ?` stays a password). `mssql` without a driver means
        mssql-python. With `auth: entra` the URL names no user or password (the token names the identity,
        and the driver refuses a token beside UID/PWD); `with_password=True` keeps them, for the plan's checks."""
        from sqlalchemy.engine import URL, make_url

        if self.url:
            url = make_url(self.url)
        elif self.driver:
            backend = self.backend
            url = URL.create(self.driver if "+" in self.driver else DEFAULT_DRIVERS[backend],
                             username=self.user, password=self.password, host=self.host,
                             port=self.port or DEFAULT_PORTS.get(backend), database=self.database,
                             query=self.query or {})
        else:
            raise ValueError(f"a {self.kind} connection has no database URL")
        if url.drivername == "mssql":
            url = url.set(drivername=DEFAULT_DRIVERS["mssql"])
        if self.auth == "entra" and not with_password:
            url = url._replace(username=None, password=None)  # `set` keeps a field given None
        return url


class Incremental(Strict):
    """Where sync finds changes: a watermark column (any database), or PostgreSQL logical decoding."""

    method: Literal["watermark", "logical"] = "watermark"
    column: str | None = None  # watermark: the column every write advances (updated_at)
    overlap: Duration = 300.0  # watermark: re-read this far behind it for late-committing rows

    @model_validator(mode="after")
    def _column_fits_method(self) -> Incremental:
        if self.method == "watermark" and not self.column:
            raise ValueError("method watermark needs `column` (the column every write advances, like updated_at); "
                             "or use method: logical on PostgreSQL")
        if self.method == "logical" and self.column:
            raise ValueError("method logical reads changes from the PostgreSQL log: it takes no `column`")
        return self


def parse_size(value: object) -> object:
    """'10 GiB', '512MiB', '2GB', 1048576 -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float):
        size = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", value, re.IGNORECASE)
        if not match:
            raise ValueError(f"bad size {value!r}: write a number and a unit, like 10 GiB or 512 MiB")
        unit = (match.group(2) or "B").upper()
        size = float(match.group(1)) * (1024 if "I" in unit or unit == "B" else 1000) ** "BKMGT".index(unit[0])
    else:
        return value
    if not math.isfinite(size):  # .inf, .nan, or more digits than a float holds
        raise ValueError("a size is a finite number of bytes, like 10 GiB")
    return int(size)


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0), WithJsonSchema({
    "description": "A size: a number and a unit (512 MiB, 10 GiB, 2GB), or a number of bytes",
    "anyOf": [{"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KkMmGgTt][Ii]?[Bb]|[Bb])?\s*$"},
              {"type": "integer", "minimum": 0}, INTERPOLATED_JSON_SCHEMA],
}, mode="validation")]


def _table_from_name(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


class TableSpec(Strict):
    """One table to move; a bare string in the plan is shorthand for `{name: ...}`."""

    name: str
    key: list[str] | None = None
    columns: list[str] | None = None
    incremental: Incremental | None = None


_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _days(value: object) -> object:
    """'mon-fri', 'sat,sun', 'mon-sun' -> the set of day names; a day range may wrap (fri-mon)."""
    if not isinstance(value, str):
        return value
    out: list[str] = []
    for part in value.lower().replace(" ", "").split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"bad days {value!r}: write mon-fri, sat,sun or mon-sun")
        start, end = DAYS.index(first), DAYS.index(last or first)
        out += [DAYS[(start + i) % 7] for i in range((end - start) % 7 + 1)]
    return sorted(set(out), key=DAYS.index)


class Limits(Strict):
    """How fast an item may go; unset: as fast as it can."""

    rows_per_second: float | None = Field(default=None, gt=0)
    bytes_per_second: Size | None = Field(default=None, gt=0)
    max_connections: int | None = Field(default=None, ge=1, le=64)
    pause: bool = False  # a schedule window may hold the work entirely


class Window(Limits):
    """A schedule window: from-to in the schedule's time zone (may cross midnight), on these days."""

    at: str
    days: Annotated[list[str], BeforeValidator(_days, json_schema_input_type=str | list[str])] = Field(
        default_factory=lambda: list(DAYS))

    @field_validator("at")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _WINDOW.match(value):
            raise ValueError(f"bad window {value!r}: write HH:MM-HH:MM, like 07:00-19:00 (may cross midnight)")
        return value


class Probe(Strict):
    """Source health, as gh-ost's max-load: over a ceiling, the limits are halved; healthy, they recover."""

    sql: str | None = None  # a query whose latency is measured (e.g. a typical ward lookup)
    max_latency: Duration = 0.5
    max_active_sessions: int | None = Field(default=None, ge=1)  # PostgreSQL: active sessions on the source
    max_replica_lag: Duration | None = None  # PostgreSQL: replay lag of the source's own standbys
    every: Duration = 5.0


class Throttle(Limits):
    """Limits for an item (or every item, at the top level), a schedule of windows with their own limits, and
    a source-health probe. `verify_rows_per_second` limits verify's reads of the source on its own."""

    verify_rows_per_second: float | None = Field(default=None, gt=0)
    timezone: str | None = None  # the schedule's zone (default: the runner's)
    schedule: list[Window] = Field(default_factory=list)
    probe: Probe | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r}: write an IANA name like Europe/London") from None
        return value


TableEntry = Annotated[TableSpec, BeforeValidator(_table_from_name, json_schema_input_type=str | TableSpec)]


class DatabaseItem(Strict):
    name: Name
    source: str
    target: str
    tables: list[TableEntry] = Field(default_factory=lambda: [TableSpec(name="*")],
                                     json_schema_extra={"default": ["*"]})
    incremental: Incremental | None = None
    chunk_rows: int = Field(default=50_000, ge=1)
    parallel: int = Field(default=2, ge=1, le=64)
    existing_target: Literal["refuse", "truncate"] = "refuse"
    accept_lossy: bool = False
    float_tolerance: float | None = Field(default=None, ge=0)  # None: floats compared exactly
    delete: bool = True  # mirror source deletes during sync
    not_migrated_ok: list[str] = Field(default_factory=list)  # `kind:schema.name` or globs the board accepts
    exclude: list[str] = Field(default_factory=list)  # table names or globs left out of `*` and other globs
    skip_without_key: bool = False  # a table without a primary key matched by a glob is skipped, not refused
    max_retained_wal: Size = 10 * 1024**3  # logical decoding: warn (plan) and refuse (gate) above this WAL held
    throttle: Throttle | None = None

    @property
    def uses_logical(self) -> bool:
        """Any of its tables reads changes by PostgreSQL logical decoding (the item's or a table's method)."""
        return any(i is not None and i.method == "logical"
                   for i in (self.incremental, *(t.incremental for t in self.tables)))


class BlobItem(Strict):
    name: Name
    source: str
    target: str
    prefix: str = ""
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    delete: bool = False
    concurrency: int = Field(default=16, ge=1, le=256)
    block_size: int = Field(default=8 * 1024 * 1024, ge=64 * 1024, le=4000 * 1024 * 1024)
    chunk_files: int = Field(default=10_000, ge=1)  # `migrate worker`: at most this many files per claimed chunk
    throttle: Throttle | None = None

    @model_validator(mode="after")
    def _no_probe(self) -> BlobItem:
        if self.throttle is not None and self.throttle.probe is not None:
            raise ValueError("a probe reads a database's health: give it to database items (bytes_per_second and "
                             "schedules work here)")
        return self


class VirtualMachine(Strict):
    """An app-tier VM whose power state is checked in preflight and by the azure gate."""

    name: Name
    subscription_id: str
    resource_group: str
    vm: str
    cloud: Literal["AzureCloud", "AzureUSGovernment", "AzureChinaCloud"] = "AzureCloud"
    expect: Literal["running", "deallocated", "stopped"] = "running"


class ChangeRef(Strict):
    id: str | None = None
    owner: str | None = None
    signoff: list[str] = Field(default_factory=list)  # roles that sign the report, one line each
    mask_identifiers: bool = False  # reports replace keys and file names by stable short hashes
    mask_key: str | None = None  # `${VAR}`: masking hashes are an HMAC under this secret (not recomputable)


class DualRun(Strict):
    interval: Duration = 30.0


class HealthCheck(Strict):
    url: str
    status: int = 200
    timeout: Duration = 5.0


class Gates(Strict):
    max_lag: Duration | None = 60.0
    verified: bool = True
    min_dual_run: Duration = 0.0
    postpone_file: str | None = None
    health: list[HealthCheck] = Field(default_factory=list)
    window: str | None = Field(default=None, pattern=r"^\d{2}:\d{2}-\d{2}:\d{2}$")  # local time, HH:MM-HH:MM
    approval: bool = False  # cutover needs --approved-by NAME
    azure: bool = True  # every Azure preflight check passes (when the plan has Azure resources)
    reverse_ready: bool = True  # with rollback.reverse_sync: the reverse path is proven before any step


class Step(Strict):
    name: str
    run: str
    timeout: Duration = 600.0


class Cutover(Strict):
    gates: Gates = Field(default_factory=Gates)
    steps: list[Step] = Field(default_factory=list)
    runbook: str | None = None


class Rollback(Strict):
    steps: list[Step] = Field(default_factory=list)
    reverse_sync: bool = False


class Plan(Strict):
    version: Literal[1]
    component: Name
    description: str = ""
    change: ChangeRef | None = None
    depends_on: list[Name] = Field(default_factory=list)  # components that must be cut over first
    state: str | None = None
    connections: dict[str, Connection]
    databases: list[DatabaseItem] = Field(default_factory=list)
    blobs: list[BlobItem] = Field(default_factory=list)
    vms: list[VirtualMachine] = Field(default_factory=list)
    dual_run: DualRun = Field(default_factory=DualRun)
    cutover: Cutover = Field(default_factory=Cutover)
    rollback: Rollback = Field(default_factory=Rollback)
    throttle: Throttle | None = None  # for every item; an item's own throttle overrides it key by key

    @property
    def items(self) -> list[DatabaseItem | BlobItem]:
        return [*self.databases, *self.blobs]
