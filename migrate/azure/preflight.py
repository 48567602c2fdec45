"""Read-only Azure preflight: is each Azure resource a plan names there, in the state the move needs?

Each check is a result (pass, warn or fail with evidence and a fix), never an exception, so the
preflight stage, `migrate plan` and the cutover `azure` gate can all show every problem at once.
The per-resource checks live in sql_checks, storage_checks and vm_checks; this module walks a plan.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from migrate.azure.checks import RUNNER_IP_ENV, AzureCheck, Status
from migrate.azure.clouds import get_cloud
from migrate.azure.credentials import CredentialError, default_credential, get_token_or_explain
from migrate.azure.sql_checks import check_sql_database
from migrate.azure.storage_checks import check_storage
from migrate.azure.vm_checks import check_vm

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.policies import RetryPolicy
    from azure.core.pipeline.transport import HttpTransport

    from migrate.plan.model import Plan

__all__ = [
    "RUNNER_IP_ENV",
    "AzureCheck",
    "Status",
    "azure_preflight",
    "check_sql_database",
    "check_storage",
    "check_vm",
]


def azure_preflight(
    plan: Plan,
    credential_factory: Callable[[str], TokenCredential] = default_credential,
    transport: HttpTransport | None = None,
    runner_ip: str | None = None,
    source_sizes: Mapping[str, int] | None = None,
    *,
    retry_policy: RetryPolicy | None = None,
) -> list[AzureCheck]:
    """Every Azure check for the plan: each connection's `azure:` block and each `vms:` entry.

    `credential_factory(cloud)` gives the credential for a cloud (default: DefaultAzureCredential).
    `runner_ip` defaults to $MIGRATE_RUNNER_IP. `source_sizes` maps a database item name or a target
    connection name to the estimated source size in bytes.
    """
    runner_ip = runner_ip or os.environ.get(RUNNER_IP_ENV) or None
    credentials = _Credentials(credential_factory)
    checks: list[AzureCheck] = []
    for name, conn in plan.connections.items():
        res = conn.azure
        if res is None:
            continue
        credential = credentials.get(res.cloud, checks)
        if credential is None:
            continue
        if res.server:
            checks += check_sql_database(
                res,
                credential,
                runner_ip=runner_ip,
                source_size_bytes=_source_size(plan, name, source_sizes),
                transport=transport,
                retry_policy=retry_policy,
                target=name,
            )
        if res.storage_account:
            checks += check_storage(
                res,
                credential,
                conn.container,
                runner_ip=runner_ip,
                account_url=conn.account_url,
                transport=transport,
                retry_policy=retry_policy,
                target=name,
            )
        if not res.server and not res.storage_account:
            checks.append(
                AzureCheck(
                    name,
                    "azure",
                    "warn",
                    "the azure block names no server or storage_account",
                    "add server/database or storage_account so preflight can check it",
                )
            )
    for vm in plan.vms:
        credential = credentials.get(vm.cloud, checks)
        if credential is not None:
            checks += check_vm(vm, credential, transport=transport, retry_policy=retry_policy)
    return checks


class _Credentials:
    """One credential per cloud, checked once; a failure becomes one `credentials` check."""

    def __init__(self, factory: Callable[[str], TokenCredential]) -> None:
        self._factory = factory
        self._by_cloud: dict[str, TokenCredential | None] = {}

    def get(self, cloud: str, checks: list[AzureCheck]) -> TokenCredential | None:
        if cloud not in self._by_cloud:
            try:
                credential = self._factory(cloud)
                get_token_or_explain(credential, get_cloud(cloud).arm_scope, cloud=cloud)
                self._by_cloud[cloud] = credential
            except CredentialError as exc:
                self._by_cloud[cloud] = None
                checks.append(AzureCheck(f"azure:{cloud}", "credentials", "fail", exc.message, exc.hint))
        return self._by_cloud[cloud]


def _source_size(plan: Plan, connection: str, sizes: Mapping[str, int] | None) -> int | None:
    if not sizes:
        return None
    if connection in sizes:
        return sizes[connection]
    known = [sizes[item.name] for item in plan.databases if item.target == connection and item.name in sizes]
    return sum(known) if known else None
