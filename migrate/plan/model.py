"""Plan format version 1 (DESIGN section 4) as pydantic models; unknown keys are errors."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from migrate.plan.durations import DURATION_PATTERN, parse_duration

# `${VAR}`: the loader replaces it by the variable's value in any string value of a plan, before validation.
ENV_REF_PATTERN = r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}"
INTERPOLATED_JSON_SCHEMA = {"type": "string", "pattern": ENV_REF_PATTERN,
                            "description": "`${VAR}`: the value of an environment variable, filled in when loading"}

Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema({
    "description": "A duration: a number and a unit (500ms, 30s, 5m, 72h, 2d), or a number of seconds",
    "anyOf": [{"type": "string", "pattern": DURATION_PATTERN}, {"type": "number", "minimum": 0},
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
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url).port  # noqa: B018 - parsing the port is part of the check
    except (ArgumentError, ValueError):
        raise ValueError("`url` is not a database URL with a numeric port, like "
                         "postgresql+psycopg://user@host:5432/db") from None


class Connection(Strict):
    """A named endpoint: a database URL, a local folder, or an Azure Blob container."""

    url: str | None = None
    path: str | None = None
    account_url: str | None = None
    connection_string: str | None = None
    sas_token: str | None = None
    container: str | None = None
    azure: AzureResource | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Connection:
        kinds = [k for k in ("url", "path", "account_url", "connection_string") if getattr(self, k)]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(
                f"give exactly one of url, path, account_url or connection_string (found: {found})"
            )
        if self.url and "unset-" not in self.url:  # a stand-in for an unset ${VAR} (validate --skip-env)
            _check_url(self.url)
        if self.kind == "blob":
            if not self.container:
                raise ValueError("a blob connection needs `container`")
            if not 3 <= len(self.container) <= 63:
                raise ValueError("`container` must be 3 to 63 characters long")
        elif self.container or self.sas_token:
            raise ValueError("`container` and `sas_token` belong to blob connections only")
        return self

    @property
    def kind(self) -> Literal["database", "folder", "blob"]:
        if self.url:
            return "database"
        if self.path:
            return "folder"
        return "blob"


class Incremental(Strict):
    column: str
    overlap: Duration = 300.0  # re-read this far behind the watermark for late-committing rows


def _table_from_name(value: object) -> object:
    return {"name": value} if isinstance(value, str) else value


class TableSpec(Strict):
    """One table to move; a bare string in the plan is shorthand for `{name: ...}`."""

    name: str
    key: list[str] | None = None
    columns: list[str] | None = None
    incremental: Incremental | None = None


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

    @property
    def items(self) -> list[DatabaseItem | BlobItem]:
        return [*self.databases, *self.blobs]
