"""Credentials: cloud endpoints, one clear message when no identity works, Azure SQL access tokens per cloud."""

from __future__ import annotations

import time
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CredentialUnavailableError

from migrate.azure.clouds import CLOUDS, get_cloud
from migrate.azure.credentials import (
    CredentialError,
    SqlAccessToken,
    default_credential,
    get_token_or_explain,
    parse_attempts,
)
from migrate.errors import EndpointError, MigrateError, UsageError
from migrate.redact import redact, register_secret

ARM = "https://management.azure.com/.default"
IDENTITY_VARS = [
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "MSI_ENDPOINT",
]

CHAIN_FAILURE = (
    "DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
    "Attempted credentials:\n"
    "\tEnvironmentCredential: EnvironmentCredential authentication unavailable. Environment variables "
    "are not fully configured.\n"
    "Visit https://aka.ms/azsdk/python/identity/environmentcredential/troubleshoot to troubleshoot "
    "this issue.\n"
    "\tWorkloadIdentityCredential: WorkloadIdentityCredential authentication unavailable. The workload "
    "options are not fully configured. See the troubleshooting guide for more information: "
    "https://aka.ms/azsdk/python/identity/workloadidentitycredential/troubleshoot. Missing required "
    "arguments: 'tenant_id', 'client_id', 'token_file_path'.\n"
    "\tManagedIdentityCredential: ManagedIdentityCredential authentication unavailable.\n"
    "\tAzureCliCredential: Azure CLI not found on path\n"
    "To mitigate this issue, please refer to the troubleshooting guidelines here at "
    "https://aka.ms/azsdk/python/identity/defaultazurecredential/troubleshoot."
)


class Raising:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise self.exc


class Issuing:
    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.sql-token", int(time.time()) + 3600)


@pytest.fixture
def no_identity(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in IDENTITY_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_clouds_have_their_own_endpoints_and_scopes() -> None:
    assert set(CLOUDS) == {"AzureCloud", "AzureUSGovernment", "AzureChinaCloud"}
    public, gov, china = (get_cloud(n) for n in ("AzureCloud", "AzureUSGovernment", "AzureChinaCloud"))
    assert public.sql_scope == "https://database.windows.net/.default"
    assert gov.sql_scope == "https://database.usgovcloudapi.net/.default"
    assert china.sql_scope == "https://database.chinacloudapi.cn/.default"
    assert (public.arm_endpoint, public.arm_scope) == ("https://management.azure.com/", ARM)
    assert gov.arm_scope == "https://management.core.usgovcloudapi.net/.default"
    assert china.authority_host == "login.chinacloudapi.cn"
    assert gov.blob_endpoint("stepr0test") == "https://stepr0test.blob.core.usgovcloudapi.net"
    assert public.sql_host("sql-epr-test") == "sql-epr-test.database.windows.net"
    with pytest.raises(UsageError):
        get_cloud("AzureGermanCloud")


def test_default_credential_uses_the_cloud_authority(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.identity

    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, **kwargs: Any) -> None:
            seen.update(kwargs)

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", Recorder)
    default_credential("AzureChinaCloud")
    assert seen == {"authority": "login.chinacloudapi.cn"}


def test_real_default_credential_failure_is_one_clear_message(no_identity: pytest.MonkeyPatch) -> None:
    # azure-identity reads AZURE_TOKEN_CREDENTIALS itself; with no service principal set, the only
    # source fails offline and at once.
    no_identity.setenv("AZURE_TOKEN_CREDENTIALS", "EnvironmentCredential")
    with pytest.raises(CredentialError) as raised:
        get_token_or_explain(default_credential(), ARM)
    error = raised.value
    assert isinstance(error, EndpointError) and isinstance(error, MigrateError)
    assert error.sources == ["EnvironmentCredential"]
    assert "Tried: EnvironmentCredential (Environment variables are not fully configured)" in error.message
    assert "az login" in (error.hint or "")
    assert "AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET" in (error.hint or "")
    assert "AZURE_FEDERATED_TOKEN_FILE" in (error.hint or "")
    assert "(now EnvironmentCredential)" in (error.hint or "")
    assert error.__suppress_context__ and error.__cause__ is None  # no chained traceback
    assert "\n" not in error.message  # one line; the hint is the only other line of str(error)
    assert str(error).count("\n") == 1


def test_chain_failure_lists_every_source_tried() -> None:
    with pytest.raises(CredentialError) as raised:
        get_token_or_explain(Raising(ClientAuthenticationError(message=CHAIN_FAILURE)), ARM)
    error = raised.value
    assert error.sources == [
        "EnvironmentCredential",
        "WorkloadIdentityCredential",
        "ManagedIdentityCredential",
        "AzureCliCredential",
    ]
    assert "WorkloadIdentityCredential (The workload options are not fully configured. Missing" in error.message
    assert "ManagedIdentityCredential (unavailable)" in error.message
    assert "AzureCliCredential (Azure CLI not found on path)" in error.message
    assert "https://" not in error.message.replace(ARM, "")


def test_single_credential_failure_names_that_credential() -> None:
    class AzureCliCredential(Raising):
        pass

    with pytest.raises(CredentialError) as raised:
        get_token_or_explain(
            AzureCliCredential(CredentialUnavailableError("Azure CLI not found on path")),
            ARM,
            cloud="AzureUSGovernment",
        )
    assert raised.value.sources == ["AzureCliCredential"]
    assert "AzureCliCredential (Azure CLI not found on path)" in raised.value.message
    assert "az cloud set --name AzureUSGovernment" in (raised.value.hint or "")


def test_secrets_never_reach_the_message() -> None:
    register_secret("s3cr3t-client-value-42")
    failure = ClientAuthenticationError(
        message="DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
        "Attempted credentials:\n"
        "\tEnvironmentCredential: Authentication failed: AADSTS7000215: Invalid client secret provided "
        "(s3cr3t-client-value-42).\n"
    )
    with pytest.raises(CredentialError) as raised:
        get_token_or_explain(Raising(failure), ARM)
    assert "s3cr3t-client-value-42" not in str(raised.value)
    assert "AADSTS7000215" in raised.value.message


def test_bad_azure_token_credentials_value(no_identity: pytest.MonkeyPatch) -> None:
    no_identity.setenv("AZURE_TOKEN_CREDENTIALS", "bogus")
    with pytest.raises(CredentialError) as raised:
        default_credential()
    assert "AZURE_TOKEN_CREDENTIALS" in raised.value.message


def test_parse_attempts_without_chain_text() -> None:
    assert parse_attempts("Azure CLI not found on path") == []


def test_sql_access_token_asks_for_the_cloud_scope_and_fetches_afresh_after_the_login() -> None:
    credential = Issuing()
    provider = SqlAccessToken(credential, "AzureChinaCloud")  # fetched at once: a failure shows at connect
    china = "https://database.chinacloudapi.cn/.default"
    assert credential.scopes == [china]
    # mssql-python always asks for the public cloud's scope; the answer is a token for the plan's cloud
    login = provider.get_token("https://database.windows.net/.default")
    assert credential.scopes == [china] and login.token.endswith(".sql-token")
    provider.get_token("https://database.windows.net/.default")  # a bulk copy's own login: a fresh token
    assert credential.scopes == [china, china]
    assert redact(f"token={login.token}") == "token=***"  # the token is a secret from now on


def test_sql_access_token_without_an_identity_names_the_sources_tried() -> None:
    with pytest.raises(CredentialError) as raised:
        SqlAccessToken(Raising(ClientAuthenticationError(CHAIN_FAILURE)), "AzureUSGovernment")
    assert "for https://database.usgovcloudapi.net/.default in AzureUSGovernment" in raised.value.message
    assert raised.value.sources[0] == "EnvironmentCredential"
