"""Create a missing Azure SQL database (`create: true`), resumable across runner restarts.

The create is a long-running ARM operation. As soon as ARM accepts it, the poller's continuation token
is handed to the caller (who journals it); after a crash the caller passes the token back and polling
resumes instead of issuing a second create. Nothing is ever updated or deleted: an existing database is
reported as it is.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from azure.core.exceptions import AzureError

from migrate.azure.arm import arm_field, explain_arm_error, sql_client
from migrate.errors import UsageError

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.policies import RetryPolicy
    from azure.core.pipeline.transport import HttpTransport

    from migrate.plan.model import AzureResource

GIB = 1024**3
WRITE_ROLE = "SQL DB Contributor"
_VCORE = re.compile(r"^(?P<edition>GP|BC|HS)(?P<serverless>_S)?_(?P<family>[A-Za-z0-9]+)_(?P<capacity>\d+)$", re.I)
_EDITIONS = {"GP": "GeneralPurpose", "BC": "BusinessCritical", "HS": "Hyperscale"}
_DTU = {"B": "Basic", "S": "Standard", "P": "Premium"}

SaveToken = Callable[[str | None], None]


@dataclass(frozen=True)
class ProvisionResult:
    """What provisioning did: found the database, created it, or finished a create it had started."""

    action: Literal["exists", "created", "resumed"]
    database_id: str | None
    status: str | None
    service_objective: str | None
    max_size_bytes: int | None


def sku_body(sku: str) -> dict[str, Any]:
    """ARM `sku` object for a service objective name: GP_Gen5_2, GP_S_Gen5_1, BC_Gen5_4, S3, P1, Basic."""
    match = _VCORE.match(sku)
    if match:
        edition = match["edition"].upper()
        serverless = "_S" if match["serverless"] else ""
        return {
            "name": f"{edition}{serverless}_{match['family']}",
            "tier": _EDITIONS[edition],
            "family": match["family"],
            "capacity": int(match["capacity"]),
        }
    if sku.lower() == "basic":
        return {"name": "Basic", "tier": "Basic"}
    if re.fullmatch(r"[SP]\d+", sku, re.I):
        return {"name": sku.upper(), "tier": _DTU[sku[0].upper()]}
    return {"name": sku}


def database_body(res: AzureResource, location: str) -> dict[str, Any]:
    """The PUT body for a new database from the plan's azure block."""
    body: dict[str, Any] = {"location": location}
    if res.sku:
        body["sku"] = sku_body(res.sku)
    if res.max_size_gb:
        body["properties"] = {"maxSizeBytes": int(res.max_size_gb * GIB)}
    return body


def provision_database(
    res: AzureResource,
    credential: TokenCredential,
    *,
    save_token: SaveToken,
    continuation_token: str | None = None,
    transport: HttpTransport | None = None,
    retry_policy: RetryPolicy | None = None,
    polling_interval: float = 15.0,
) -> ProvisionResult:
    """Create the plan's database if missing; resume a create from `continuation_token` if given.

    `save_token(token)` is called once ARM has accepted the create, and `save_token(None)` once it has
    finished. Raises AzureRequestError (with the role to assign on 403) when ARM refuses.
    """
    if not res.create:
        raise UsageError(f"database {res.database!r} is not marked `create: true`; provisioning refused")
    if not res.server or not res.database:
        raise UsageError("provisioning needs `server` and `database` in the azure block")
    server_scope = (
        f"/subscriptions/{res.subscription_id}/resourceGroups/{res.resource_group}"
        f"/providers/Microsoft.Sql/servers/{res.server}"
    )
    what = f"database '{res.database}' on SQL server '{res.server}'"
    client = sql_client(
        credential,
        res.subscription_id,
        res.cloud,
        transport=transport,
        retry_policy=retry_policy,
        polling_interval=polling_interval,
    )

    def fail(exc: AzureError, role: str = WRITE_ROLE) -> Exception:
        return explain_arm_error(exc, what=what, scope=server_scope, role=role, cloud=res.cloud).to_error()

    try:
        if continuation_token:
            try:
                poller = client.databases.begin_create_or_update(
                    res.resource_group,
                    res.server,
                    res.database,
                    {},  # the body is not sent when resuming
                    continuation_token=continuation_token,
                )
                db = poller.result()
                save_token(None)
                return _result("resumed", db)
            except (AzureError, ValueError):
                pass  # the operation record expired or the token is unreadable: look at the database itself
        existing = _get_database(client, res, fail)
        if existing is not None:
            save_token(None)
            return _result("resumed" if continuation_token else "exists", existing)
        location = res.location or _server_location(client, res, fail)
        poller = client.databases.begin_create_or_update(
            res.resource_group, res.server, res.database, database_body(res, location)
        )
        save_token(poller.continuation_token())
        db = poller.result()
        save_token(None)
        return _result("created", db)
    except AzureError as exc:
        raise fail(exc) from None
    finally:
        if transport is None:
            client.close()


def _get_database(client: Any, res: AzureResource, fail: Callable[..., Exception]) -> Any | None:
    try:
        return client.databases.get(res.resource_group, res.server, res.database)
    except AzureError as exc:
        if arm_field(exc, "status_code") == 404:
            return None
        raise fail(exc, "Reader") from None


def _server_location(client: Any, res: AzureResource, fail: Callable[..., Exception]) -> str:
    try:
        return str(client.servers.get(res.resource_group, res.server).location)
    except AzureError as exc:
        raise fail(exc, "Reader") from None


def _result(action: Literal["exists", "created", "resumed"], db: Any) -> ProvisionResult:
    return ProvisionResult(
        action=action,
        database_id=arm_field(db, "id"),
        status=arm_field(db, "status"),
        service_objective=arm_field(db, "current_service_objective_name") or arm_field(db, "sku", "name"),
        max_size_bytes=arm_field(db, "max_size_bytes"),
    )
