"""Read-only check of an app-tier VM's power state against what the plan expects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from migrate.azure.arm import arm_field, compute_client, resource_group_scope
from migrate.azure.checks import ArmReadFailed, AzureCheck, Probe, client_scope

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.policies import RetryPolicy
    from azure.core.pipeline.transport import HttpTransport

    from migrate.plan.model import VirtualMachine

_VM_TRANSIENT = {"starting", "stopping", "deallocating"}
_VM_FIX = {
    "running": "start it: az vm start",
    "deallocated": "deallocate it: az vm deallocate",
    "stopped": "stop it: az vm stop",
}


def check_vm(
    vm: VirtualMachine,
    credential: TokenCredential,
    *,
    transport: HttpTransport | None = None,
    retry_policy: RetryPolicy | None = None,
) -> list[AzureCheck]:
    """Power state of an app-tier VM against what the plan expects (`vm.expect`)."""
    probe = Probe(vm.name, resource_group_scope(vm.subscription_id, vm.resource_group), vm.cloud)
    client = compute_client(credential, vm.subscription_id, vm.cloud, transport=transport, retry_policy=retry_policy)
    with client_scope(client, transport):
        try:
            view = probe.read(
                "power_state",
                f"virtual machine '{vm.vm}'",
                lambda: client.virtual_machines.instance_view(vm.resource_group, vm.vm),
            )
        except ArmReadFailed as failed:
            return [failed.check]
    codes = [arm_field(s, "code") or "" for s in arm_field(view, "statuses") or []]
    power = next((c.split("/", 1)[1] for c in codes if c.startswith("PowerState/")), None)
    if power is None:
        return [probe.check("power_state", "warn", f"VM {vm.vm} reports no power state", "retry in a minute")]
    evidence = f"VM {vm.vm} is {power} (expected {vm.expect})"
    if power == vm.expect:
        return [probe.check("power_state", "pass", evidence)]
    if power in _VM_TRANSIENT:
        return [probe.check("power_state", "warn", evidence, "in transition; rerun preflight shortly")]
    fix = f"{_VM_FIX[vm.expect]} -g {vm.resource_group} -n {vm.vm}"
    return [probe.check("power_state", "fail", evidence, fix)]
