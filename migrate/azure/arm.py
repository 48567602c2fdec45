"""Azure Resource Manager clients for one cloud, their retry policy, and ARM errors explained.

Every client takes an optional azure-core `HttpTransport`, so tests (and the offline demo) can serve
recorded ARM responses, and a base URL and token scope from the plan's cloud.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, cast

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)
from azure.core.pipeline.policies import RetryPolicy

from migrate.azure.clouds import get_cloud
from migrate.azure.credentials import explain_credential_failure
from migrate.errors import EndpointError
from migrate.redact import redact

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline import PipelineResponse
    from azure.core.pipeline.transport import HttpTransport
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.sql import SqlManagementClient
    from azure.mgmt.storage import StorageManagementClient

RETRY_TOTAL = 4
RETRY_BACKOFF = 0.8  # seconds, doubled each attempt, when ARM sends no Retry-After
RETRY_BACKOFF_MAX = 30
RETRY_AFTER_MAX = 60.0  # never wait longer than this on one Retry-After
CONNECTION_TIMEOUT = 10
READ_TIMEOUT = 60


class AzureRequestError(EndpointError):
    """An ARM request failed in a way a person must fix (permissions, missing resource, bad request)."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint)
        self.status = status


class ArmRetryPolicy(RetryPolicy):
    """Retries throttling (429), 408, 5xx and connection faults, honouring Retry-After up to a cap.

    Other 4xx answers will not change on retry, so they are returned at once even when the server
    sends Retry-After.
    """

    def __init__(
        self,
        *,
        retry_total: int = RETRY_TOTAL,
        retry_backoff_factor: float = RETRY_BACKOFF,
        retry_backoff_max: int = RETRY_BACKOFF_MAX,
        max_retry_after: float = RETRY_AFTER_MAX,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            retry_total=retry_total,
            retry_status=retry_total,
            retry_backoff_factor=retry_backoff_factor,
            retry_backoff_max=retry_backoff_max,
            **kwargs,
        )
        self.max_retry_after = max_retry_after

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        status = response.http_response.status_code
        if 400 <= status < 500 and status not in (408, 429):
            return False
        return super().is_retry(settings, response)

    def get_retry_after(self, response: PipelineResponse[Any, Any]) -> float | None:
        retry_after = super().get_retry_after(response)
        return None if retry_after is None else min(retry_after, self.max_retry_after)


def _client_kwargs(cloud: str, transport: HttpTransport | None, retry_policy: RetryPolicy | None) -> dict:
    endpoints = get_cloud(cloud)
    kwargs: dict[str, Any] = {
        "base_url": endpoints.arm_endpoint,
        "credential_scopes": [endpoints.arm_scope],
        "retry_policy": retry_policy or ArmRetryPolicy(),
        "connection_timeout": CONNECTION_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
    }
    if transport is not None:
        kwargs["transport"] = transport
    return kwargs


def sql_client(
    credential: TokenCredential,
    subscription_id: str,
    cloud: str = "AzureCloud",
    *,
    transport: HttpTransport | None = None,
    retry_policy: RetryPolicy | None = None,
    polling_interval: float | None = None,
) -> SqlManagementClient:
    """azure-mgmt-sql client for `cloud`'s ARM endpoint."""
    from azure.mgmt.sql import SqlManagementClient

    kwargs = _client_kwargs(cloud, transport, retry_policy)
    if polling_interval is not None:
        kwargs["polling_interval"] = polling_interval
    return SqlManagementClient(credential, subscription_id, **kwargs)


def storage_client(
    credential: TokenCredential,
    subscription_id: str,
    cloud: str = "AzureCloud",
    *,
    transport: HttpTransport | None = None,
    retry_policy: RetryPolicy | None = None,
) -> StorageManagementClient:
    """azure-mgmt-storage client for `cloud`'s ARM endpoint."""
    from azure.mgmt.storage import StorageManagementClient

    return StorageManagementClient(credential, subscription_id, **_client_kwargs(cloud, transport, retry_policy))


def compute_client(
    credential: TokenCredential,
    subscription_id: str,
    cloud: str = "AzureCloud",
    *,
    transport: HttpTransport | None = None,
    retry_policy: RetryPolicy | None = None,
) -> ComputeManagementClient:
    """azure-mgmt-compute client for `cloud`'s ARM endpoint."""
    from azure.mgmt.compute import ComputeManagementClient

    return ComputeManagementClient(credential, subscription_id, **_client_kwargs(cloud, transport, retry_policy))


def arm_field(obj: Any, *path: str, default: Any = None) -> Any:
    """Read a (possibly nested) model attribute; enum values come back as their plain string."""
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return default
    return obj.value if isinstance(obj, Enum) else obj


def resource_group_scope(subscription_id: str, resource_group: str) -> str:
    """ARM scope of a resource group, as role assignments name it."""
    return f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"


@dataclass(frozen=True)
class ArmFailure:
    """Why an ARM call failed and what to do about it."""

    status: int | None
    code: str | None
    evidence: str
    fix: str

    @property
    def not_found(self) -> bool:
        return self.status == 404

    def to_error(self) -> AzureRequestError:
        return AzureRequestError(self.evidence, hint=self.fix, status=self.status)


def explain_arm_error(
    exc: AzureError, *, what: str, scope: str, role: str = "Reader", cloud: str = "AzureCloud"
) -> ArmFailure:
    """Explain a failed ARM call on `what` (e.g. "SQL server 'sql-epr'"): cause, and the fix."""
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if isinstance(exc, ClientAuthenticationError) and response is None:
        cred = explain_credential_failure(exc, cloud=cloud)
        return ArmFailure(None, "CredentialUnavailable", cred.message, cred.hint or "")
    if isinstance(exc, ServiceRequestError):
        endpoint = get_cloud(cloud).arm_endpoint
        return ArmFailure(
            None,
            "Unreachable",
            f"cannot reach Azure Resource Manager at {endpoint} for {what}: {_first_line(exc)}",
            "check outbound HTTPS (443) from this runner, proxy settings (HTTPS_PROXY) and DNS",
        )
    if not isinstance(exc, HttpResponseError) or status is None:
        return ArmFailure(None, None, f"{what}: {_first_line(exc)}", "retry; if it persists, check Azure status")
    code, detail = _arm_error(exc)
    said = f" ({code}: {detail})" if code else f" ({detail})" if detail else ""
    if status == 401:
        fix = (
            "ARM did not accept the token: sign in to the tenant that owns the subscription "
            "(`az login --tenant <tenant-id>` or AZURE_TENANT_ID) and make sure the plan's cloud "
            f"({cloud}) is the one the identity belongs to"
        )
        return ArmFailure(status, code, f"401 Unauthorized reading {what}{said}", fix)
    if status == 403:
        fix = (
            f"assign {role} on {scope} to the identity running migrate "
            f'(az role assignment create --assignee <identity> --role "{role}" --scope {scope})'
        )
        return ArmFailure(status, code, f"403 Forbidden on {what}{said}", fix)
    if status == 404:
        if code in ("ResourceGroupNotFound", "SubscriptionNotFound", "InvalidSubscriptionId"):
            missing = "the resource group" if code == "ResourceGroupNotFound" else "the subscription"
            fix = f"{missing} in the plan does not exist or is not visible to this identity; check {scope}"
        else:
            fix = f"create it, or correct the name in the plan (looked in {scope})"
        return ArmFailure(status, code, f"{what} not found{said}", fix)
    if status == 429 or status >= 500:
        return ArmFailure(
            status,
            code,
            f"ARM kept answering {status} for {what} after retries{said}",
            "Azure is throttling or unavailable; retry later",
        )
    return ArmFailure(status, code, f"ARM refused the request for {what} with {status}{said}", "see the message")


def _arm_error(exc: HttpResponseError) -> tuple[str | None, str]:
    """The ARM error code and message of a failed call, redacted."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None)
    if not code and exc.response is not None:
        try:
            body = cast(Any, exc.response).json()
            inner = body.get("error", body) if isinstance(body, dict) else {}
            code, message = inner.get("code"), inner.get("message")
        except (ValueError, AttributeError):  # not JSON: fall back to the reason phrase
            pass
    if not message and exc.response is not None:
        message = exc.response.reason
    return code, redact(_first_line(message or ""))


def _first_line(value: object) -> str:
    text = redact(getattr(value, "message", None) or str(value)).strip()
    return text.splitlines()[0] if text else ""
