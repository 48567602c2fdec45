"""The Azure clouds a plan may name, and the endpoints and token scopes that belong to each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from migrate.errors import UsageError

CloudName = Literal["AzureCloud", "AzureUSGovernment", "AzureChinaCloud"]


@dataclass(frozen=True)
class AzureCloudEndpoints:
    """Where to sign in and which ARM, SQL and Storage endpoints to use in one Azure cloud."""

    name: str
    authority_host: str  # Microsoft Entra ID host for DefaultAzureCredential(authority=...)
    arm_endpoint: str  # Azure Resource Manager base URL
    arm_scope: str  # token scope for ARM calls
    sql_scope: str  # token scope for Azure SQL connections (Entra ID access token)
    sql_host_suffix: str  # <server>.<suffix>
    storage_suffix: str  # <account>.blob.<suffix>
    storage_scope: str = "https://storage.azure.com/.default"  # valid in every cloud

    def blob_endpoint(self, account: str) -> str:
        """Public blob endpoint of a storage account in this cloud."""
        return f"https://{account}.blob.{self.storage_suffix}"

    def sql_host(self, server: str) -> str:
        """Fully qualified host name of an Azure SQL logical server in this cloud."""
        return f"{server}.{self.sql_host_suffix}"


CLOUDS: dict[str, AzureCloudEndpoints] = {
    "AzureCloud": AzureCloudEndpoints(
        name="AzureCloud",
        authority_host="login.microsoftonline.com",
        arm_endpoint="https://management.azure.com/",
        arm_scope="https://management.azure.com/.default",
        sql_scope="https://database.windows.net/.default",
        sql_host_suffix="database.windows.net",
        storage_suffix="core.windows.net",
    ),
    "AzureUSGovernment": AzureCloudEndpoints(
        name="AzureUSGovernment",
        authority_host="login.microsoftonline.us",
        arm_endpoint="https://management.usgovcloudapi.net/",
        arm_scope="https://management.core.usgovcloudapi.net/.default",
        sql_scope="https://database.usgovcloudapi.net/.default",
        sql_host_suffix="database.usgovcloudapi.net",
        storage_suffix="core.usgovcloudapi.net",
    ),
    "AzureChinaCloud": AzureCloudEndpoints(
        name="AzureChinaCloud",
        authority_host="login.chinacloudapi.cn",
        arm_endpoint="https://management.chinacloudapi.cn/",
        arm_scope="https://management.chinacloudapi.cn/.default",
        sql_scope="https://database.chinacloudapi.cn/.default",
        sql_host_suffix="database.chinacloudapi.cn",
        storage_suffix="core.chinacloudapi.cn",
    ),
}


def get_cloud(name: str) -> AzureCloudEndpoints:
    """Endpoints of the named cloud (the names `az cloud list` uses)."""
    try:
        return CLOUDS[name]
    except KeyError:
        known = ", ".join(CLOUDS)
        raise UsageError(f"unknown Azure cloud {name!r}", hint=f"use one of: {known}") from None
