"""Transient faults are retried (tenacity, jittered exponential backoff, capped); everything else fails
fast with a message that says what to fix.

Transient: HTTP 408, 429 and 5xx, timeouts, refused or reset connections, truncated responses. A 4xx
other than those never changes by retrying, so it is raised at once, translated into an EndpointError
(container missing, authorisation failed, name invalid...) with every secret redacted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceResponseError,
)
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from migrate.errors import EndpointError
from migrate.redact import redact

log = logging.getLogger("migrate.blobs")

T = TypeVar("T")

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
ATTEMPTS = 8  # first try plus seven retries
BACKOFF_START = 0.05  # seconds; doubles each time, with full jitter
BACKOFF_CAP = 8.0


class ObjectRejected(EndpointError):
    """The service refused one object (its name, its size), not the endpoint: the rest can go on."""


def is_transient(exc: BaseException) -> bool:
    """Worth another try: server-side hiccups and network faults, never a client error."""
    if error_code(exc) == "Md5Mismatch" or "md5 doesn't match" in str(exc).lower():
        return True  # bytes damaged on the way (Azurite words it differently): sending them again cures it
    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError):
        status = exc.status_code or 0
        if status:
            return status in TRANSIENT_STATUS or status >= 500
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, IncompleteReadError)):
        return True
    if isinstance(exc, AzureError) and isinstance(getattr(exc, "inner_exception", None), OSError):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    wait = state.next_action.sleep if state.next_action else 0.0
    log.debug("transient fault, retry %d in %.2f s: %s", state.attempt_number, wait,
              redact(f"{type(exc).__name__}: {exc}").splitlines()[0] if exc else "?")


def retrying(attempts: int = ATTEMPTS) -> Retrying:
    """A tenacity policy for one service call."""
    return Retrying(
        retry=retry_if_exception(is_transient),
        wait=wait_random_exponential(multiplier=BACKOFF_START, max=BACKOFF_CAP),
        stop=stop_after_attempt(attempts),
        reraise=True,
        before_sleep=_log_retry,
    )


def call(fn: Callable[[], T], attempts: int = ATTEMPTS) -> T:
    """Run `fn`, retrying transient faults."""
    for attempt in retrying(attempts):
        with attempt:
            return fn()
    raise AssertionError("unreachable")  # pragma: no cover - reraise=True always raises or returns


def error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", None) or "")


def status_of(exc: BaseException) -> int:
    return int(getattr(exc, "status_code", None) or 0)


def explain(exc: BaseException, what: str, where: str, per_object: bool = False) -> EndpointError:
    """Turn an SDK or network error into one EndpointError that says what failed and what to fix.

    With `per_object`, a refusal that concerns only this object (its name, its size) becomes an
    ObjectRejected, which a copy reports and moves past; everything else stops the stage.
    """
    code = error_code(exc)
    status = status_of(exc)
    lines = redact(getattr(exc, "message", None) or exc).strip().splitlines()
    reason = lines[0] if lines else type(exc).__name__
    hint: str | None = None
    if code == "ContainerNotFound":
        message = f"{what}: container {where} does not exist"
        hint = ("check the container name in the plan (a target container is created by `migrate run`; "
                "a source container must exist)")
    elif status == 403 or code in ("AuthenticationFailed", "AuthorizationFailure",
                                   "AuthorizationPermissionMismatch", "InsufficientAccountPermissions"):
        message = f"{what}: authorisation failed for {where} ({code or status})"
        hint = ("check the account key in the connection string, or the SAS token (expiry, permissions "
                "read/add/create/write/delete/list), or that the signed-in identity has the role Storage "
                "Blob Data Contributor on the account")
    elif isinstance(exc, ClientAuthenticationError):
        message = f"{what}: no Azure credential for {where}: {reason}"
        hint = "sign in with `az login`, or use a connection string or a SAS token"
    elif code in ("InvalidResourceName", "InvalidUri", "OutOfRangeInput", "InvalidBlobOrBlock") or status == 400:
        message = f"{what}: name invalid at {where} ({code or status}): {reason}"
        hint = ("container names are 3-63 characters: lowercase letters, digits and single hyphens; blob "
                "names are at most 1024 characters")
    elif code in ("AccountIsDisabled", "AccountBeingCreated"):
        message = f"{what}: the storage account of {where} is not usable ({code})"
        hint = "check the account in the Azure portal"
    elif isinstance(exc, (ServiceRequestError, ServiceResponseError, ConnectionError, TimeoutError)):
        message = f"{what}: cannot reach {where}: {reason}"
        hint = "check the account URL / BlobEndpoint, DNS, proxy and firewall rules"
    elif status:
        message = f"{what}: {where} answered {status} {code}: {reason}".replace("  ", " ")
    else:
        message = f"{what}: {where}: {type(exc).__name__}: {reason}"
    if per_object and status in (400, 404, 409, 413, 414) and code != "ContainerNotFound":
        return ObjectRejected(message, hint)
    return EndpointError(message, hint, transient=is_transient(exc))
