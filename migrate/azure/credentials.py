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
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

from migrate.azure.clouds import get_cloud
from migrate.errors import EndpointError
from migrate.redact import redact, register_secret

if TYPE_CHECKING:
    from azure.core.credentials import AccessToken, TokenCredential

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


class SqlAccessToken:
    """mssql-python's `token_provider` for one database connection signing in with Entra ID.

    Made when the connection is opened, it fetches a token at once (so a missing identity fails with the
    sources tried, not as a driver error) and hands that token to the driver's login; any later call (a bulk
    copy logs in on its own channel) fetches a fresh one. Every token is for the Azure SQL scope of `cloud`:
    the driver asks for the public cloud's scope, which the sovereign clouds' servers refuse.
    """

    def __init__(self, credential: TokenCredential, cloud: str = "AzureCloud") -> None:
        self.credential = credential
        self.cloud = cloud
        self.scope = get_cloud(cloud).sql_scope
        self._unused: AccessToken | None = self.fetch()

    def fetch(self) -> AccessToken:
        token = get_token_or_explain(self.credential, self.scope, cloud=self.cloud)
        register_secret(token.token)
        return token

    def get_token(self, *_scopes: str, **_options: Any) -> AccessToken:
        token, self._unused = self._unused, None
        return token or self.fetch()
