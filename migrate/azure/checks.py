"""Azure check results, the probe that turns failed ARM reads into them, and address helpers."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from azure.core.exceptions import AzureError

from migrate.azure.arm import arm_field, explain_arm_error
from migrate.redact import redact

if TYPE_CHECKING:
    from azure.core.pipeline.transport import HttpTransport

Status = Literal["pass", "warn", "fail"]
RUNNER_IP_ENV = "MIGRATE_RUNNER_IP"
GIB = 1024**3

T = TypeVar("T")


@dataclass(frozen=True)
class AzureCheck:
    """One read-only observation about an Azure resource named by the plan."""

    target: str
    name: str
    status: Status
    evidence: str
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ArmReadFailed(Exception):
    """An ARM call failed; carries the check that says why."""

    def __init__(self, check: AzureCheck, not_found: bool) -> None:
        super().__init__(check.evidence)
        self.check = check
        self.not_found = not_found


class Probe:
    """Runs ARM reads for one target and turns failures into fail checks."""

    def __init__(self, target: str, scope: str, cloud: str) -> None:
        self.target, self.scope, self.cloud = target, scope, cloud

    def check(self, name: str, status: Status, evidence: str, fix: str | None = None) -> AzureCheck:
        return AzureCheck(self.target, name, status, redact(evidence), redact(fix) if fix else None)

    def read(self, name: str, what: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except AzureError as exc:
            failure = explain_arm_error(exc, what=what, scope=self.scope, cloud=self.cloud)
            raise ArmReadFailed(self.check(name, "fail", failure.evidence, failure.fix), failure.not_found) from exc


def client_scope(client: T, transport: HttpTransport | None) -> AbstractContextManager[T]:
    """Close clients we built their own transport for; leave an injected transport open for reuse."""
    return nullcontext(client) if transport is not None else closing(client)  # type: ignore[type-var]


def approved_private_endpoints(connections: Iterable[Any] | None) -> list[str]:
    names = []
    for pec in connections or []:
        props = arm_field(pec, "properties") or pec
        state = arm_field(props, "private_link_service_connection_state", "status")
        if state == "Approved":
            endpoint_id = arm_field(props, "private_endpoint", "id") or getattr(pec, "id", "")
            names.append(str(endpoint_id).rsplit("/", 1)[-1] or "?")
    return names


def parse_ip(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip()) if value else None
    except ValueError:
        return None


def ip_in_range(address: ipaddress.IPv4Address | ipaddress.IPv6Address, start: str | None, end: str | None) -> bool:
    low, high = parse_ip(start), parse_ip(end)
    if low is None or high is None or low.version != address.version or high.version != address.version:
        return False
    return low <= address <= high  # type: ignore[operator]


def ip_in_cidr(address: ipaddress.IPv4Address | ipaddress.IPv6Address, rule: str) -> bool:
    try:
        network = ipaddress.ip_network(rule.strip(), strict=False)
    except ValueError:
        return False
    return network.version == address.version and address in network


def gb_text(size: float) -> str:
    return f"{size / GIB:.1f} GB"
