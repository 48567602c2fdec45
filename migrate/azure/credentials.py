"""Microsoft Entra ID credentials for ARM and Azure SQL, with failures turned into one clear message.

Which identity is used is decided by azure-identity's DefaultAzureCredential. It reads
`AZURE_TOKEN_CREDENTIALS` itself: `prod` limits the chain to EnvironmentCredential,
WorkloadIdentityCredential and ManagedIdentityCredential (what CI and Azure-hosted runners should set, so
a stray developer login is never picked up), `dev` to developer tools (Azure CLI, azd, PowerShell,
VS Code), and a single credential name (for example `AzureCliCredential`) to that credential alone.
"""

from __future__ import annotations

import os
import re
import struct
from typing import TYPE_CHECKING

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from migrate.azure.clouds import get_cloud
from migrate.errors import EndpointError
from migrate.redact import redact, register_secret

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

SQL_COPT_SS_ACCESS_TOKEN = 1256  # pyodbc / mssql-python connection attribute for an Entra ID token

_SIGN_IN_HINT = (
    "sign in with `az login`{cloud_step}, or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET "
    "(service principal), or AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_FEDERATED_TOKEN_FILE (workload "
    "identity); on an Azure VM a managed identity works without settings. AZURE_TOKEN_CREDENTIALS=prod|dev|"
    "<CredentialName> limits which sources are tried{current}"
)


class CredentialError(EndpointError):
    """No Azure identity could produce a token; the message names every source tried."""

    def __init__(self, message: str, hint: str | None = None, sources: list[str] | None = None) -> None:
        super().__init__(message, hint)
        self.sources = sources or []


def default_credential(cloud: str = "AzureCloud") -> TokenCredential:
    """DefaultAzureCredential signing in at `cloud`'s authority (honours AZURE_TOKEN_CREDENTIALS)."""
    from azure.identity import DefaultAzureCredential

    endpoints = get_cloud(cloud)
    try:
        return DefaultAzureCredential(authority=endpoints.authority_host)
    except ValueError as exc:  # e.g. an unknown AZURE_TOKEN_CREDENTIALS value
        raise CredentialError(
            f"cannot set up Azure credentials: {redact(exc)}",
            hint="unset AZURE_TOKEN_CREDENTIALS or set it to prod, dev or one credential name",
        ) from None


def get_token_or_explain(credential: TokenCredential, scope: str, *, cloud: str = "AzureCloud") -> AccessToken:
    """Get a token for `scope`, or raise CredentialError naming the sources tried and what to set."""
    try:
        return credential.get_token(scope)
    except (ClientAuthenticationError, ServiceRequestError) as exc:  # incl. CredentialUnavailableError
        raise explain_credential_failure(exc, scope=scope, cloud=cloud, source=type(credential).__name__) from None


def explain_credential_failure(
    exc: BaseException, *, scope: str | None = None, cloud: str = "AzureCloud", source: str | None = None
) -> CredentialError:
    """Turn an azure-identity failure into one CredentialError: sources tried, why, and what to set."""
    text = redact(getattr(exc, "message", None) or str(exc))
    attempts = parse_attempts(text)
    if attempts:
        tried = "; ".join(f"{name} ({reason})" if reason else name for name, reason in attempts)
    else:
        attempts = [(source or type(exc).__name__, _short(text))]
        tried = f"{attempts[0][0]} ({attempts[0][1]})"
    where = f" for {scope}" if scope else ""
    message = f"no Azure credential produced a token{where} in {cloud}. Tried: {tried}"
    env = os.environ.get("AZURE_TOKEN_CREDENTIALS", "").strip()
    hint = _SIGN_IN_HINT.format(
        cloud_step="" if cloud == "AzureCloud" else f" (after `az cloud set --name {cloud}`)",
        current=f" (now {env})" if env else "",
    )
    return CredentialError(message, hint=hint, sources=[name for name, _ in attempts])


def parse_attempts(text: str) -> list[tuple[str, str]]:
    """(credential name, short reason) pairs from a ChainedTokenCredential failure message."""
    _, marker, tail = text.partition("Attempted credentials:")
    if not marker:
        return []
    attempts: list[tuple[str, str]] = []
    for line in tail.splitlines():
        match = re.match(r"^\t(\w+)(?::\s*(.*))?$", line)
        if match:
            attempts.append((match.group(1), _short(match.group(2) or "", match.group(1))))
        elif not line.startswith("\t") and attempts and line.startswith("To mitigate"):
            break
    return attempts


def _short(reason: str, name: str = "") -> str:
    """The informative part of an azure-identity reason: no links, no repeated credential name."""
    if name:
        reason = re.sub(rf"^{re.escape(name)}\s*(authentication\s+)?", "", reason.strip())
    sentences = [s.strip() for s in re.split(r"(?<=\.)\s+", reason) if s.strip()]
    kept = [s for s in sentences if "http" not in s and s.lower() not in ("unavailable.", "unavailable")]
    short = " ".join(kept[:2]).rstrip(".") or "unavailable"
    return short if len(short) <= 160 else short[:157] + "..."


def sql_access_token_attrs(token: str) -> dict[int, bytes]:
    """`attrs_before` for pyodbc / mssql-python: the token as a length-prefixed UTF-16-LE struct.

    Use it with a connection string that has no UID, PWD or Authentication keyword.
    """
    register_secret(token)
    raw = token.encode("utf-16-le")
    return {SQL_COPT_SS_ACCESS_TOKEN: struct.pack("<I", len(raw)) + raw}


def sql_connect_attrs(credential: TokenCredential, cloud: str = "AzureCloud") -> dict[int, bytes]:
    """Fetch an Azure SQL token for `cloud` and return it as `attrs_before`."""
    endpoints = get_cloud(cloud)
    token = get_token_or_explain(credential, endpoints.sql_scope, cloud=cloud)
    return sql_access_token_attrs(token.token)
