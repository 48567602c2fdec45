"""Read-only checks of a storage account: account, network path, container, soft delete, versioning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from migrate.azure.arm import arm_field, resource_group_scope, storage_client
from migrate.azure.checks import (
    RUNNER_IP_ENV,
    ArmReadFailed,
    AzureCheck,
    Probe,
    approved_private_endpoints,
    client_scope,
    ip_in_cidr,
    parse_ip,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.policies import RetryPolicy
    from azure.core.pipeline.transport import HttpTransport

    from migrate.plan.model import AzureResource


def check_storage(
    res: AzureResource,
    credential: TokenCredential,
    container: str | None,
    *,
    runner_ip: str | None = None,
    account_url: str | None = None,
    transport: HttpTransport | None = None,
    retry_policy: RetryPolicy | None = None,
    target: str | None = None,
) -> list[AzureCheck]:
    """Storage account, network path, container, and blob soft delete / versioning."""
    account = res.storage_account or ""
    probe = Probe(
        target or f"{account}/{container or ''}".rstrip("/"),
        resource_group_scope(res.subscription_id, res.resource_group),
        res.cloud,
    )
    client = storage_client(credential, res.subscription_id, res.cloud, transport=transport, retry_policy=retry_policy)
    checks: list[AzureCheck] = []
    with client_scope(client, transport):
        try:
            props = probe.read(
                "storage_account",
                f"storage account '{account}'",
                lambda: client.storage_accounts.get_properties(res.resource_group, account),
            )
        except ArmReadFailed as failed:
            return [failed.check]
        checks.append(_account_check(probe, res, props, account_url))
        checks.append(_storage_network_check(probe, res, props, runner_ip))
        if container:
            try:
                probe.read(
                    "container",
                    f"container '{container}' in storage account '{account}'",
                    lambda: client.blob_containers.get(res.resource_group, account, container),
                )
                checks.append(probe.check("container", "pass", f"container {container} exists"))
            except ArmReadFailed as failed:
                checks.append(
                    probe.check("container", "warn", f"container {container} does not exist; it will be created")
                    if failed.not_found
                    else failed.check
                )
        try:
            service = probe.read(
                "soft_delete",
                f"blob service properties of '{account}'",
                lambda: client.blob_services.get_service_properties(res.resource_group, account),
            )
        except ArmReadFailed as failed:
            checks.append(failed.check)
            return checks
        checks.extend(_blob_protection_checks(probe, res, service))
    return checks


def _account_check(probe: Probe, res: AzureResource, props: Any, account_url: str | None) -> AzureCheck:
    state = arm_field(props, "provisioning_state") or "unknown"
    blob = arm_field(props, "primary_endpoints", "blob")
    evidence = (
        f"storage account {res.storage_account} in {arm_field(props, 'location', default='?')} "
        f"({arm_field(props, 'kind', default='?')}), provisioning {state}"
    )
    if state != "Succeeded":
        return probe.check("storage_account", "warn", evidence, "wait until provisioning has Succeeded")
    if account_url and blob and account_url.rstrip("/").lower() != blob.rstrip("/").lower():
        return probe.check(
            "storage_account",
            "warn",
            f"{evidence}; its blob endpoint is {blob} but the connection uses {account_url}",
            "make account_url and storage_account agree",
        )
    return probe.check("storage_account", "pass", evidence)


def _storage_network_check(probe: Probe, res: AzureResource, props: Any, runner_ip: str | None) -> AzureCheck:
    public = (arm_field(props, "public_network_access") or "Enabled") == "Enabled"
    rules = arm_field(props, "network_rule_set")
    default_action = arm_field(rules, "default_action") or "Allow"
    endpoints = approved_private_endpoints(arm_field(props, "private_endpoint_connections"))
    if public and default_action == "Allow":
        return probe.check("network", "pass", "public network access allowed from all networks")
    if endpoints:
        return probe.check("network", "pass", f"approved private endpoint(s) {', '.join(endpoints)}")
    if not public:
        return probe.check(
            "network",
            "fail",
            "public network access disabled and no approved private endpoint",
            "add a private endpoint reachable from the runner",
        )
    allowed = [arm_field(r, "ip_address_or_range") for r in arm_field(rules, "ip_rules") or []]
    listed = ", ".join(a for a in allowed if a) or "none"
    address = parse_ip(runner_ip)
    if address is None:
        return probe.check(
            "network",
            "warn",
            f"runner address unknown, firewall not checked against it (allowed: {listed})",
            f"set {RUNNER_IP_ENV} to this runner's public IP address",
        )
    for rule in allowed:
        if rule and ip_in_cidr(address, rule):
            return probe.check("network", "pass", f"network rule {rule} admits runner {address}")
    return probe.check(
        "network",
        "fail",
        f"storage firewall denies runner {address} (allowed: {listed})",
        f"az storage account network-rule add -g {res.resource_group} --account-name {res.storage_account} "
        f"--ip-address {address}",
    )


def _blob_protection_checks(probe: Probe, res: AzureResource, service: Any) -> list[AzureCheck]:
    policy = arm_field(service, "delete_retention_policy")
    versioning = bool(arm_field(service, "is_versioning_enabled"))
    update = f"az storage account blob-service-properties update -g {res.resource_group} -n {res.storage_account}"
    if policy is not None and arm_field(policy, "enabled", default=False):
        soft = probe.check(
            "soft_delete", "pass", f"blob soft delete on ({arm_field(policy, 'days', default='?')} days)"
        )
    else:
        soft = probe.check(
            "soft_delete",
            "warn",
            "blob soft delete off: blobs deleted or overwritten by sync cannot be recovered",
            f"{update} --enable-delete-retention true --delete-retention-days 14",
        )
    if versioning:
        version = probe.check("versioning", "pass", "blob versioning on")
    else:
        version = probe.check(
            "versioning",
            "warn",
            "blob versioning off: overwritten blobs keep no prior version",
            f"{update} --enable-versioning true",
        )
    return [soft, version]
