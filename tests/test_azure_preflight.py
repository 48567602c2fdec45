"""Azure preflight against recorded ARM responses (tests/recordings/arm), no live subscription."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from arm_replay import ArmReplay, Recorded
from migrate.azure.arm import ArmRetryPolicy
from migrate.azure.preflight import (
    AzureCheck,
    azure_preflight,
    check_sql_database,
    check_storage,
    check_vm,
)
from migrate.plan.model import AzureResource, Plan, VirtualMachine

RECORDINGS = Path(__file__).parent / "recordings" / "arm"
SUB = "00000000-0000-0000-0000-000000000000"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-epr-test"
SERVER = f"{RG}/providers/Microsoft.Sql/servers/sql-epr-test"
DB = f"{SERVER}/databases/ppm"
ACCOUNT = f"{RG}/providers/Microsoft.Storage/storageAccounts/stepr0test"
VM = f"{RG}/providers/Microsoft.Compute/virtualMachines/vm-ppm-app01"
GIB = 1024**3
RUNNER = "203.0.113.7"  # inside the recorded hospital-egress rule 203.0.113.0-203.0.113.15


def body(name: str) -> Any:
    return json.loads((RECORDINGS / f"{name}.json").read_text())


def ok(name: str, **changes: Any) -> Recorded:
    data = copy.deepcopy(body(name))
    data.setdefault("properties", {}).update(changes)
    return Recorded(200, data)


def err(status: int, name: str, headers: dict[str, str] | None = None) -> Recorded:
    return Recorded(status, body(name), headers or {})


class FakeCredential:
    """Test double for auth only: hands out a token and remembers the scopes asked for."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken("fake-arm-token", int(time.time()) + 3600)


class BrokenCredential:
    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        raise ClientAuthenticationError(
            message="DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
            "Attempted credentials:\n"
            "\tEnvironmentCredential: EnvironmentCredential authentication unavailable. Environment "
            "variables are not fully configured.\n"
            "Visit https://aka.ms/azsdk/python/identity/environmentcredential/troubleshoot to troubleshoot.\n"
            "\tManagedIdentityCredential: ManagedIdentityCredential authentication unavailable.\n"
            "To mitigate this issue, please refer to the troubleshooting guidelines here at "
            "https://aka.ms/azsdk/python/identity/defaultazurecredential/troubleshoot."
        )


def sql_res(**kw: Any) -> AzureResource:
    values = {
        "subscription_id": SUB,
        "resource_group": "rg-epr-test",
        "server": "sql-epr-test",
        "database": "ppm",
        "sku": "GP_Gen5_2",
    }
    return AzureResource(**{**values, **kw})


def sql_replay(**overrides: Recorded | list[Recorded]) -> ArmReplay:
    routes: dict[str, Any] = {
        "server": Recorded(200, body("sql_server")),
        "firewall": Recorded(200, body("sql_firewall_rules")),
        "database": Recorded(200, body("sql_database_online")),
        "tde": Recorded(200, body("sql_tde_enabled")),
    }
    routes.update(overrides)
    paths = {
        "server": SERVER,
        "firewall": f"{SERVER}/firewallRules",
        "database": DB,
        "tde": f"{DB}/transparentDataEncryption/current",
    }
    replay = ArmReplay()
    for key, path in paths.items():
        responses = routes[key] if isinstance(routes[key], list) else [routes[key]]
        replay.add("GET", path, *responses)
    return replay


def by_name(checks: list[AzureCheck]) -> dict[str, AzureCheck]:
    return {c.name: c for c in checks}


def run_sql(
    replay: ArmReplay,
    res: AzureResource | None = None,
    *,
    runner_ip: str | None = RUNNER,
    source: int | None = 10 * GIB,
) -> dict[str, AzureCheck]:
    checks = check_sql_database(
        res or sql_res(), FakeCredential(), runner_ip=runner_ip, source_size_bytes=source, transport=replay
    )
    return by_name(checks)


# --- SQL -----------------------------------------------------------------------------------------


def test_sql_database_all_green() -> None:
    replay = sql_replay()
    credential = FakeCredential()
    checks = check_sql_database(sql_res(), credential, runner_ip=RUNNER, source_size_bytes=10 * GIB, transport=replay)
    assert [(c.name, c.status) for c in checks] == [
        ("server", "pass"),
        ("network", "pass"),
        ("database", "pass"),
        ("sku", "pass"),
        ("max_size", "pass"),
        ("tde", "pass"),
    ]
    found = by_name(checks)
    assert "hospital-egress" in found["network"].evidence
    assert "Online" in found["database"].evidence
    assert "32.0 GB" in found["max_size"].evidence
    assert all(c.target == "sql-epr-test/ppm" for c in checks)
    # every call went to the public ARM endpoint with the ARM token and an api-version, and only reads
    assert {r.method for r in replay.requests} == {"GET"}
    assert all(r.url.startswith("https://management.azure.com/subscriptions/") for r in replay.requests)
    assert all("api-version=" in r.query for r in replay.requests)
    assert all(r.headers["Authorization"] == "Bearer fake-arm-token" for r in replay.requests)
    assert set(credential.scopes) == {"https://management.azure.com/.default"}
    assert replay.sleeps == []


def test_401_is_explained_and_not_retried() -> None:
    replay = sql_replay(server=err(401, "error_401"))
    checks = check_sql_database(sql_res(), FakeCredential(), runner_ip=RUNNER, source_size_bytes=None, transport=replay)
    assert len(checks) == 1
    check = checks[0]
    assert (check.name, check.status) == ("server", "fail")
    assert "401" in check.evidence and "InvalidAuthenticationTokenTenant" in check.evidence
    assert "az login --tenant" in (check.fix or "")
    assert replay.count("GET", SERVER) == 1


def test_403_names_role_and_scope() -> None:
    replay = sql_replay(server=err(403, "error_403"))
    checks = check_sql_database(sql_res(), FakeCredential(), runner_ip=RUNNER, source_size_bytes=None, transport=replay)
    assert [(c.name, c.status) for c in checks] == [("server", "fail")]
    assert "403" in checks[0].evidence and "AuthorizationFailed" in checks[0].evidence
    assert f"assign Reader on /subscriptions/{SUB}/resourceGroups/rg-epr-test" in (checks[0].fix or "")
    assert replay.count("GET", SERVER) == 1  # a 4xx will not change: no retry


def test_403_with_retry_after_is_still_not_retried() -> None:
    replay = sql_replay(server=err(403, "error_403", {"Retry-After": "5"}))
    checks = run_sql(replay)
    assert checks["server"].status == "fail"
    assert replay.count("GET", SERVER) == 1
    assert replay.sleeps == []


def test_missing_server_and_missing_resource_group() -> None:
    checks = run_sql(sql_replay(server=err(404, "error_404_server")))
    assert checks["server"].status == "fail"
    assert "SQL server 'sql-epr-test' not found" in checks["server"].evidence
    assert "create it, or correct the name" in (checks["server"].fix or "")

    checks = run_sql(sql_replay(server=err(404, "error_404_resource_group")))
    assert checks["server"].status == "fail"
    assert "ResourceGroupNotFound" in checks["server"].evidence
    assert "the resource group in the plan does not exist" in (checks["server"].fix or "")


def test_missing_database_fails_unless_create() -> None:
    checks = run_sql(sql_replay(database=err(404, "error_404_database")))
    assert checks["database"].status == "fail"
    assert "database 'ppm' on SQL server 'sql-epr-test' not found" in checks["database"].evidence
    assert "tde" not in checks and "max_size" not in checks

    checks = run_sql(sql_replay(database=err(404, "error_404_database")), sql_res(create=True))
    assert checks["database"].status == "warn"
    assert "will be created" in checks["database"].evidence and "GP_Gen5_2" in checks["database"].evidence
    assert checks["server"].status == "pass" and checks["network"].status == "pass"


def test_429_with_retry_after_is_retried_then_succeeds() -> None:
    replay = sql_replay(server=[err(429, "error_429", {"Retry-After": "1"}), Recorded(200, body("sql_server"))])
    checks = run_sql(replay)
    assert checks["server"].status == "pass"
    assert replay.count("GET", SERVER) == 2
    assert replay.sleeps == [1.0]  # the Retry-After the server asked for, and nothing slept for real


def test_5xx_without_retry_after_backs_off_then_gives_up() -> None:
    replay = sql_replay(server=[Recorded(503, {"error": {"code": "ServiceUnavailable", "message": "busy"}})])
    policy = ArmRetryPolicy(retry_total=2, retry_backoff_factor=0.5)
    checks = check_sql_database(
        sql_res(),
        FakeCredential(),
        runner_ip=RUNNER,
        source_size_bytes=None,
        transport=replay,
        retry_policy=policy,
    )
    assert [(c.name, c.status) for c in checks] == [("server", "fail")]
    assert "kept answering 503" in checks[0].evidence
    assert replay.count("GET", SERVER) == 3  # first try + 2 retries
    # exponential backoff through the transport (recorded, not slept); azure-core skips the first wait
    assert 1 <= len(replay.sleeps) <= 2 and all(0 < s <= 30 for s in replay.sleeps)


def test_retry_after_is_capped() -> None:
    replay = sql_replay(server=[err(429, "error_429", {"Retry-After": "3600"}), Recorded(200, body("sql_server"))])
    checks = run_sql(replay)
    assert checks["server"].status == "pass"
    assert replay.sleeps == [60.0]


def test_unreachable_arm_is_retried_then_explained() -> None:
    down = Recorded(0, raises=requests.ConnectionError("Name or service not known"))
    replay = sql_replay(server=down)
    checks = run_sql(replay)
    assert [(c.name, c.status) for c in checks.values()] == [("server", "fail")]
    assert "cannot reach Azure Resource Manager at https://management.azure.com/" in checks["server"].evidence
    assert "HTTPS_PROXY" in (checks["server"].fix or "")
    assert replay.count("GET", SERVER) > 1  # connection faults are transient: retried first


def test_credential_failure_during_a_call_is_explained() -> None:
    replay = sql_replay()
    checks = check_sql_database(
        sql_res(), BrokenCredential(), runner_ip=RUNNER, source_size_bytes=None, transport=replay
    )
    assert [(c.name, c.status) for c in checks] == [("server", "fail")]
    assert "no Azure credential produced a token" in checks[0].evidence
    assert "EnvironmentCredential" in checks[0].evidence and "az login" in (checks[0].fix or "")
    assert replay.requests == []


def test_paused_database_fails_with_resume_hint() -> None:
    checks = run_sql(sql_replay(database=Recorded(200, body("sql_database_paused"))), sql_res(sku="GP_S_Gen5_1"))
    assert checks["database"].status == "fail"
    assert "Paused" in checks["database"].evidence
    assert "resume it" in (checks["database"].fix or "")
    assert checks["sku"].status == "pass"


def test_database_in_transition_warns() -> None:
    checks = run_sql(sql_replay(database=Recorded(200, body("sql_database_creating"))))
    assert checks["database"].status == "warn"
    assert "Creating" in checks["database"].evidence


def test_max_size_too_small_for_source_fails() -> None:
    checks = run_sql(sql_replay(), source=40 * GIB)
    assert checks["max_size"].status == "fail"
    assert "32.0 GB" in checks["max_size"].evidence and "40.0 GB" in checks["max_size"].evidence
    assert "does not fit" in checks["max_size"].evidence
    assert "--max-size 50GB" in (checks["max_size"].fix or "")


def test_max_size_headroom_and_unknown_source_warn() -> None:
    assert run_sql(sql_replay(), source=30 * GIB)["max_size"].status == "warn"
    unknown = run_sql(sql_replay(), source=None)["max_size"]
    assert unknown.status == "warn" and "source size unknown" in unknown.evidence


def test_sku_differs_from_plan_warns() -> None:
    checks = run_sql(sql_replay(), sql_res(sku="BC_Gen5_8"))
    assert checks["sku"].status == "warn"
    assert "GP_Gen5_2" in checks["sku"].evidence and "BC_Gen5_8" in checks["sku"].evidence
    assert "--service-objective BC_Gen5_8" in (checks["sku"].fix or "")


def test_tde_off_fails() -> None:
    checks = run_sql(sql_replay(tde=Recorded(200, body("sql_tde_disabled"))))
    assert checks["tde"].status == "fail"
    assert "Disabled" in checks["tde"].evidence
    assert "az sql db tde set --status Enabled" in (checks["tde"].fix or "")


def test_firewall_excluding_runner_fails() -> None:
    checks = run_sql(sql_replay(), runner_ip="198.51.100.20")
    network = checks["network"]
    assert network.status == "fail"
    assert "no firewall rule admits runner 198.51.100.20" in network.evidence
    assert "hospital-egress 203.0.113.0-203.0.113.15" in network.evidence
    assert "--start-ip-address 198.51.100.20" in (network.fix or "")


def test_private_runner_address_gets_nat_hint() -> None:
    network = run_sql(sql_replay(), runner_ip="10.20.30.40")["network"]
    assert network.status == "fail" and "public (NAT) address" in (network.fix or "")


def test_unknown_runner_address_warns() -> None:
    network = run_sql(sql_replay(), runner_ip=None)["network"]
    assert network.status == "warn"
    assert network.evidence.startswith("runner address unknown, firewall not checked against it")
    assert "MIGRATE_RUNNER_IP" in (network.fix or "")


def test_private_endpoint_passes_without_public_access() -> None:
    replay = sql_replay(server=Recorded(200, body("sql_server_private")))
    network = run_sql(replay, runner_ip="198.51.100.20")["network"]
    assert network.status == "pass"
    assert "pe-sql-epr-test" in network.evidence
    assert replay.count("GET", f"{SERVER}/firewallRules") == 0


def test_public_access_disabled_without_private_endpoint_fails() -> None:
    server = copy.deepcopy(body("sql_server_private"))
    server["properties"]["privateEndpointConnections"] = []
    network = run_sql(sql_replay(server=Recorded(200, server)))["network"]
    assert network.status == "fail" and "no approved private endpoint" in network.evidence


def test_sovereign_cloud_uses_its_own_endpoint_and_scope() -> None:
    replay = sql_replay()
    credential = FakeCredential()
    check_sql_database(
        sql_res(cloud="AzureUSGovernment"),
        credential,
        runner_ip=RUNNER,
        source_size_bytes=GIB,
        transport=replay,
    )
    assert all(r.url.startswith("https://management.usgovcloudapi.net/") for r in replay.requests)
    assert set(credential.scopes) == {"https://management.core.usgovcloudapi.net/.default"}


# --- Storage -------------------------------------------------------------------------------------


def storage_replay(**overrides: Recorded) -> ArmReplay:
    routes = {
        ACCOUNT: Recorded(200, body("storage_account")),
        f"{ACCOUNT}/blobServices/default/containers/letters": Recorded(200, body("storage_blob_container")),
        f"{ACCOUNT}/blobServices/default": Recorded(200, body("storage_blob_service")),
    }
    replay = ArmReplay()
    for path, response in routes.items():
        replay.add("GET", path, overrides.get(path.rsplit("/", 1)[-1], response))
    return replay


def storage_res() -> AzureResource:
    return AzureResource(subscription_id=SUB, resource_group="rg-epr-test", storage_account="stepr0test")


def test_storage_account_container_and_protection() -> None:
    replay = storage_replay()
    checks = by_name(
        check_storage(
            storage_res(),
            FakeCredential(),
            "letters",
            runner_ip=RUNNER,
            account_url="https://stepr0test.blob.core.windows.net",
            transport=replay,
        )
    )
    assert {k: c.status for k, c in checks.items()} == {
        "storage_account": "pass",
        "network": "pass",
        "container": "pass",
        "soft_delete": "pass",
        "versioning": "warn",
    }
    assert "14 days" in checks["soft_delete"].evidence
    assert "203.0.113.0/28" in checks["network"].evidence
    assert "--enable-versioning true" in (checks["versioning"].fix or "")


def test_missing_container_will_be_created() -> None:
    replay = storage_replay(letters=err(404, "error_404_container"))
    checks = by_name(check_storage(storage_res(), FakeCredential(), "letters", runner_ip=RUNNER, transport=replay))
    assert checks["container"].status == "warn"
    assert "will be created" in checks["container"].evidence


def test_storage_firewall_excluding_runner_fails() -> None:
    checks = by_name(
        check_storage(storage_res(), FakeCredential(), "letters", runner_ip="198.51.100.20", transport=storage_replay())
    )
    assert checks["network"].status == "fail"
    assert "denies runner 198.51.100.20" in checks["network"].evidence
    assert "-g rg-epr-test --account-name stepr0test --ip-address 198.51.100.20" in (checks["network"].fix or "")


def test_missing_storage_account_stops_there() -> None:
    replay = storage_replay(stepr0test=err(404, "error_404_server"))
    checks = check_storage(storage_res(), FakeCredential(), "letters", transport=replay)
    assert [(c.name, c.status) for c in checks] == [("storage_account", "fail")]
    assert "storage account 'stepr0test' not found" in checks[0].evidence


# --- VMs -----------------------------------------------------------------------------------------


def vm_entry(expect: str = "running") -> VirtualMachine:
    return VirtualMachine(
        name="ppm-app", subscription_id=SUB, resource_group="rg-epr-test", vm="vm-ppm-app01", expect=expect
    )  # type: ignore[arg-type]


def test_vm_deallocated_fails_when_running_expected() -> None:
    replay = ArmReplay().add("GET", f"{VM}/instanceView", Recorded(200, body("compute_vm_instance_view_deallocated")))
    checks = check_vm(vm_entry(), FakeCredential(), transport=replay)
    assert [(c.target, c.name, c.status) for c in checks] == [("ppm-app", "power_state", "fail")]
    assert "is deallocated (expected running)" in checks[0].evidence
    assert checks[0].fix == "start it: az vm start -g rg-epr-test -n vm-ppm-app01"


def test_vm_power_state_matches_expectation() -> None:
    replay = ArmReplay().add("GET", f"{VM}/instanceView", Recorded(200, body("compute_vm_instance_view_deallocated")))
    assert check_vm(vm_entry("deallocated"), FakeCredential(), transport=replay)[0].status == "pass"
    replay = ArmReplay().add("GET", f"{VM}/instanceView", Recorded(200, body("compute_vm_instance_view_running")))
    assert check_vm(vm_entry(), FakeCredential(), transport=replay)[0].status == "pass"


def test_vm_403_names_role() -> None:
    replay = ArmReplay().add("GET", f"{VM}/instanceView", err(403, "error_403"))
    check = check_vm(vm_entry(), FakeCredential(), transport=replay)[0]
    assert check.status == "fail"
    assert f"assign Reader on /subscriptions/{SUB}/resourceGroups/rg-epr-test" in (check.fix or "")


# --- Whole plan ----------------------------------------------------------------------------------


def make_plan() -> Plan:
    return Plan.model_validate(
        {
            "version": 1,
            "component": "ppm-documents",
            "connections": {
                "onprem_index": {"url": "postgresql://epr@db.local/ppm"},
                "azure_index": {
                    "url": "mssql+pymssql://x@sql-epr-test/ppm",
                    "azure": {
                        "subscription_id": SUB,
                        "resource_group": "rg-epr-test",
                        "server": "sql-epr-test",
                        "database": "ppm",
                        "sku": "GP_Gen5_2",
                    },
                },
                "onprem_letters": {"path": "/srv/ppm/letters"},
                "azure_letters": {
                    "account_url": "https://stepr0test.blob.core.windows.net",
                    "container": "letters",
                    "azure": {
                        "subscription_id": SUB,
                        "resource_group": "rg-epr-test",
                        "storage_account": "stepr0test",
                    },
                },
            },
            "databases": [{"name": "document-index", "source": "onprem_index", "target": "azure_index"}],
            "blobs": [{"name": "letters", "source": "onprem_letters", "target": "azure_letters"}],
            "vms": [
                {
                    "name": "ppm-app",
                    "subscription_id": SUB,
                    "resource_group": "rg-epr-test",
                    "vm": "vm-ppm-app01",
                    "expect": "running",
                }
            ],
        }
    )


def plan_replay() -> ArmReplay:
    replay = sql_replay()
    for path, response in (
        (ACCOUNT, Recorded(200, body("storage_account"))),
        (f"{ACCOUNT}/blobServices/default/containers/letters", Recorded(200, body("storage_blob_container"))),
        (f"{ACCOUNT}/blobServices/default", Recorded(200, body("storage_blob_service"))),
        (f"{VM}/instanceView", Recorded(200, body("compute_vm_instance_view_running"))),
    ):
        replay.add("GET", path, response)
    return replay


def test_azure_preflight_covers_every_azure_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATE_RUNNER_IP", RUNNER)
    clouds: list[str] = []

    def factory(cloud: str) -> FakeCredential:
        clouds.append(cloud)
        return FakeCredential()

    checks = azure_preflight(
        make_plan(),
        credential_factory=factory,
        transport=plan_replay(),
        source_sizes={"document-index": 40 * GIB},
    )
    assert clouds == ["AzureCloud"]  # one credential per cloud
    assert [c.target for c in checks] == ["azure_index"] * 6 + ["azure_letters"] * 5 + ["ppm-app"]
    statuses = {(c.target, c.name): c.status for c in checks}
    assert statuses[("azure_index", "network")] == "pass"  # runner address came from the environment
    assert statuses[("azure_index", "max_size")] == "fail"  # 40 GB source into a 32 GB database
    assert statuses[("azure_letters", "container")] == "pass"
    assert statuses[("ppm-app", "power_state")] == "pass"
    assert json.dumps([c.to_dict() for c in checks])  # serialisable for --json and reports


def test_azure_preflight_without_runner_ip_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIGRATE_RUNNER_IP", raising=False)
    checks = azure_preflight(make_plan(), credential_factory=lambda cloud: FakeCredential(), transport=plan_replay())
    network = [c for c in checks if c.name == "network"]
    assert [c.status for c in network] == ["warn", "warn"]
    assert all("runner address unknown" in c.evidence for c in network)


def test_azure_preflight_credential_failure_is_one_clear_check() -> None:
    replay = plan_replay()
    checks = azure_preflight(
        make_plan(), credential_factory=lambda cloud: BrokenCredential(), transport=replay, runner_ip=RUNNER
    )
    assert len(checks) == 1
    check = checks[0]
    assert (check.target, check.name, check.status) == ("azure:AzureCloud", "credentials", "fail")
    assert "EnvironmentCredential (Environment variables are not fully configured)" in check.evidence
    assert "ManagedIdentityCredential" in check.evidence
    assert "az login" in (check.fix or "") and "AZURE_FEDERATED_TOKEN_FILE" in (check.fix or "")
    assert "Traceback" not in check.evidence
    assert replay.requests == []
