"""Read-only checks of an Azure SQL database: server, network path, state, SKU, size, TDE."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migrate.azure.arm import arm_field, resource_group_scope, sql_client
from migrate.azure.checks import (
    GIB,
    RUNNER_IP_ENV,
    ArmReadFailed,
    AzureCheck,
    Probe,
    approved_private_endpoints,
    client_scope,
    gb_text,
    ip_in_range,
    parse_ip,
)
from migrate.azure.clouds import get_cloud

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.policies import RetryPolicy
    from azure.core.pipeline.transport import HttpTransport

    from migrate.plan.model import AzureResource

HEADROOM = 0.8  # warn when the source fills more than this share of the target's max size

_DB_TRANSIENT = {
    "Creating",
    "Resuming",
    "Scaling",
    "Copying",
    "Restoring",
    "Recovering",
    "Starting",
    "OnlineChangingDwPerformanceTiers",
    "AutoClosed",
    "Standby",
}


def check_sql_database(
    res: AzureResource,
    credential: TokenCredential,
    *,
    runner_ip: str | None,
    source_size_bytes: int | None,
    transport: HttpTransport | None = None,
    retry_policy: RetryPolicy | None = None,
    target: str | None = None,
) -> list[AzureCheck]:
    """Server, network path, database state, SKU, max size, and TDE of the plan's Azure SQL database."""
    server_name = res.server or ""
    label = f"{server_name}/{res.database}" if res.database else server_name
    probe = Probe(target or label, resource_group_scope(res.subscription_id, res.resource_group), res.cloud)
    client = sql_client(credential, res.subscription_id, res.cloud, transport=transport, retry_policy=retry_policy)
    checks: list[AzureCheck] = []
    with client_scope(client, transport):
        try:
            server = probe.read(
                "server",
                f"SQL server '{res.server}'",
                lambda: client.servers.get(res.resource_group, server_name),
            )
        except ArmReadFailed as failed:
            return [failed.check]
        checks.append(_server_check(probe, res, server))
        checks.append(_sql_network_check(probe, res, server, client, runner_ip))
        database = res.database
        if not database:
            return checks
        what = f"database '{res.database}' on SQL server '{res.server}'"
        try:
            db = probe.read("database", what, lambda: client.databases.get(res.resource_group, server_name, database))
        except ArmReadFailed as failed:
            if failed.not_found and res.create:
                checks.append(
                    probe.check(
                        "database",
                        "warn",
                        f"{what} does not exist; it will be created (create: true, sku {res.sku or 'default'})",
                    )
                )
            else:
                checks.append(failed.check)
            return checks
        checks.append(_status_check(probe, db))
        checks.append(_sku_check(probe, res, db))
        checks.append(_size_check(probe, res, db, source_size_bytes))
        checks.append(_tde_check(probe, res, client))
    return checks


def _server_check(probe: Probe, res: AzureResource, server: Any) -> AzureCheck:
    state = arm_field(server, "state") or "Ready"
    fqdn = arm_field(server, "fully_qualified_domain_name") or get_cloud(res.cloud).sql_host(res.server or "")
    evidence = f"SQL server {res.server} in {arm_field(server, 'location', default='?')} ({fqdn}), state {state}"
    if state != "Ready":
        return probe.check("server", "fail", evidence, "the logical server is not Ready; check it in the portal")
    return probe.check("server", "pass", evidence)


def _sql_network_check(probe: Probe, res: AzureResource, server: Any, client: Any, runner_ip: str | None) -> AzureCheck:
    public = (arm_field(server, "public_network_access") or "Enabled") == "Enabled"
    endpoints = approved_private_endpoints(arm_field(server, "private_endpoint_connections"))
    via_private = (
        f"approved private endpoint(s) {', '.join(endpoints)}; the runner must resolve "
        f"{get_cloud(res.cloud).sql_host(res.server or '')} to its private address"
    )
    if not public:
        if endpoints:
            return probe.check("network", "pass", f"public network access disabled; {via_private}")
        return probe.check(
            "network",
            "fail",
            "public network access disabled and no approved private endpoint",
            "add a private endpoint reachable from the runner, or enable public access "
            "with a firewall rule for the runner",
        )
    try:
        rules = list(
            probe.read(
                "network",
                f"firewall rules of SQL server '{res.server}'",
                lambda: client.firewall_rules.list_by_server(res.resource_group, res.server or ""),
            )
        )
    except ArmReadFailed as failed:
        return failed.check
    ranges = [
        (arm_field(r, "name", default="?"), arm_field(r, "start_ip_address"), arm_field(r, "end_ip_address"))
        for r in rules
    ]
    listed = ", ".join(f"{n} {s}-{e}" for n, s, e in ranges) or "none"
    address = parse_ip(runner_ip)
    if address is None:
        return probe.check(
            "network",
            "warn",
            f"runner address unknown, firewall not checked against it (rules: {listed})",
            f"set {RUNNER_IP_ENV} to this runner's public IP address",
        )
    for name, start, end in ranges:
        if ip_in_range(address, start, end):
            return probe.check("network", "pass", f"firewall rule {name} ({start}-{end}) admits runner {address}")
    if endpoints:
        return probe.check("network", "pass", f"no firewall rule admits runner {address}, but {via_private}")
    fix = (
        f"add a rule: az sql server firewall-rule create -g {res.resource_group} -s {res.server} "
        f"-n migrate-runner --start-ip-address {address} --end-ip-address {address}"
    )
    if address.is_private:
        fix += f" ({address} is a private address: give the runner's public (NAT) address instead)"
    return probe.check("network", "fail", f"no firewall rule admits runner {address} (rules: {listed})", fix)


def _status_check(probe: Probe, db: Any) -> AzureCheck:
    status = arm_field(db, "status") or "unknown"
    evidence = f"database {arm_field(db, 'name', default='')} exists, status {status}"
    if status == "Online":
        return probe.check("database", "pass", evidence)
    if status == "Paused":
        return probe.check(
            "database",
            "fail",
            evidence,
            "resume it (a serverless database resumes on the first login; retry preflight a "
            "minute later) and consider auto-pause off (auto_pause_delay -1) while migrating",
        )
    if status in _DB_TRANSIENT:
        return probe.check("database", "warn", f"{evidence} (in transition)", "rerun preflight once it is Online")
    return probe.check("database", "fail", evidence, "the database must be Online; check it in the portal")


def _sku_check(probe: Probe, res: AzureResource, db: Any) -> AzureCheck:
    sku = arm_field(db, "sku")
    current = arm_field(db, "current_service_objective_name") or arm_field(sku, "name") or "unknown"
    tier = arm_field(sku, "tier")
    evidence = f"service objective {current}" + (f" ({tier})" if tier else "")
    if not res.sku:
        return probe.check("sku", "pass", evidence + "; the plan names no sku")
    names = {
        str(n).lower()
        for n in (current, arm_field(sku, "name"), arm_field(db, "requested_service_objective_name"))
        if n
    }
    if res.sku.lower() in names:
        return probe.check("sku", "pass", evidence)
    return probe.check(
        "sku",
        "warn",
        f"{evidence}, the plan asks for {res.sku}",
        f"scale it before loading if intended: az sql db update -g {res.resource_group} "
        f"-s {res.server} -n {res.database} --service-objective {res.sku}",
    )


def _size_check(probe: Probe, res: AzureResource, db: Any, source_size_bytes: int | None) -> AzureCheck:
    max_bytes = arm_field(db, "max_size_bytes")
    tier = str(arm_field(db, "sku", "tier", default="") or "")
    if tier == "Hyperscale" or not max_bytes or max_bytes <= 0:
        return probe.check("max_size", "pass", f"no fixed max size ({tier or 'unknown tier'})")
    evidence = f"max size {gb_text(max_bytes)}"
    if res.max_size_gb and max_bytes < res.max_size_gb * GIB:
        evidence += f" (the plan asks for {res.max_size_gb:g} GB)"
    if source_size_bytes is None:
        return probe.check(
            "max_size",
            "warn",
            f"{evidence}; source size unknown, not compared",
            "run `migrate plan` to estimate the source size",
        )
    evidence += f", source estimate {gb_text(source_size_bytes)}"
    fix = (
        f"raise it: az sql db update -g {res.resource_group} -s {res.server} -n {res.database} "
        f"--max-size {max(1, -(-int(source_size_bytes / HEADROOM) // GIB))}GB (or pick a larger sku)"
    )
    if source_size_bytes > max_bytes:
        return probe.check("max_size", "fail", f"{evidence}: the source does not fit", fix)
    if source_size_bytes > max_bytes * HEADROOM:
        return probe.check("max_size", "warn", f"{evidence}: less than {1 - HEADROOM:.0%} headroom", fix)
    return probe.check("max_size", "pass", evidence)


def _tde_check(probe: Probe, res: AzureResource, client: Any) -> AzureCheck:
    try:
        tde = probe.read(
            "tde",
            f"transparent data encryption of database '{res.database}'",
            lambda: client.transparent_data_encryptions.get(res.resource_group, res.server, res.database, "current"),
        )
    except ArmReadFailed as failed:
        return failed.check
    state = arm_field(tde, "state") or "unknown"
    if state == "Enabled":
        return probe.check("tde", "pass", "transparent data encryption Enabled")
    return probe.check(
        "tde",
        "fail",
        f"transparent data encryption {state}: patient data would be stored unencrypted at rest",
        f"az sql db tde set --status Enabled -g {res.resource_group} -s {res.server} --database {res.database}",
    )
