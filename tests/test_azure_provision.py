"""Creating a missing Azure SQL database: long-running create, continuation tokens, refusals."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken

from arm_replay import ArmReplay, Recorded
from migrate.azure.arm import AzureRequestError
from migrate.azure.provision import ProvisionResult, database_body, provision_database, sku_body
from migrate.errors import EndpointError, UsageError
from migrate.plan.model import AzureResource

RECORDINGS = Path(__file__).parent / "recordings" / "arm"
SUB = "00000000-0000-0000-0000-000000000000"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-epr-test"
SERVER = f"{RG}/providers/Microsoft.Sql/servers/sql-epr-test"
DB = f"{SERVER}/databases/ppm"
OPERATION = (
    f"/subscriptions/{SUB}/providers/Microsoft.Sql/locations/uksouth/databaseAzureAsyncOperation/"
    "6a3b1f0e-0000-4000-8000-000000000001"
)
OPERATION_URL = f"https://management.azure.com{OPERATION}?api-version=2025-01-01"
LOCATION_URL = OPERATION_URL.replace("databaseAzureAsyncOperation", "databaseOperationResults")
LRO_HEADERS = {"Azure-AsyncOperation": OPERATION_URL, "Location": LOCATION_URL, "Retry-After": "1"}
GIB = 1024**3


def body(name: str) -> Any:
    return json.loads((RECORDINGS / f"{name}.json").read_text())


class FakeCredential:
    """Test double for auth only."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-arm-token", int(time.time()) + 3600)


class Journal:
    """Stands in for the state journal: keeps the latest continuation token."""

    def __init__(self) -> None:
        self.saved: list[str | None] = []

    def save(self, token: str | None) -> None:
        self.saved.append(token)

    @property
    def token(self) -> str | None:
        return self.saved[-1] if self.saved else None


class Crash(Exception):
    """Simulates the runner dying right after the token was journaled."""


def res(**kw: Any) -> AzureResource:
    values = {
        "subscription_id": SUB,
        "resource_group": "rg-epr-test",
        "server": "sql-epr-test",
        "database": "ppm",
        "create": True,
        "sku": "GP_Gen5_2",
        "max_size_gb": 64,
    }
    return AzureResource(**{**values, **kw})


def create_replay(initial: Recorded | None = None, *operation: Recorded) -> ArmReplay:
    replay = ArmReplay()
    replay.add("GET", SERVER, Recorded(200, body("sql_server")))
    replay.add("GET", DB, Recorded(404, body("error_404_database")), Recorded(200, body("sql_database_online")))
    replay.add("PUT", DB, initial or Recorded(202, body("sql_database_create_accepted"), LRO_HEADERS))
    replay.add(
        "GET",
        OPERATION,
        *(
            operation
            or (
                Recorded(200, body("sql_async_operation_in_progress"), {"Retry-After": "1"}),
                Recorded(200, body("sql_async_operation_succeeded")),
            )
        ),
    )
    return replay


def provision(
    replay: ArmReplay, journal: Journal, resource: AzureResource | None = None, token: str | None = None
) -> ProvisionResult:
    return provision_database(
        resource or res(),
        FakeCredential(),
        save_token=journal.save,
        continuation_token=token,
        transport=replay,
        polling_interval=0,
    )


def test_create_polls_azure_async_operation_until_succeeded() -> None:
    replay = create_replay()
    journal = Journal()
    result = provision(replay, journal)

    assert result.action == "created"
    assert result.status == "Online" and result.service_objective == "GP_Gen5_2"
    assert result.database_id and result.database_id.endswith("/databases/ppm")
    put = [r for r in replay.requests if r.method == "PUT"]
    assert len(put) == 1
    assert put[0].json() == {
        "location": "uksouth",  # taken from the server: the plan gives none
        "sku": {"name": "GP_Gen5", "tier": "GeneralPurpose", "family": "Gen5", "capacity": 2},
        "properties": {"maxSizeBytes": 64 * GIB},
    }
    assert replay.count("GET", OPERATION) == 2  # InProgress, then Succeeded
    assert 1.0 in replay.sleeps  # polling honoured Retry-After without sleeping for real
    assert journal.saved[0] and journal.saved[-1] is None  # token kept while running, cleared when done
    assert {r.method for r in replay.requests} <= {"GET", "PUT"}  # never DELETE or PATCH


def test_create_with_201_and_async_operation() -> None:
    initial = Recorded(201, body("sql_database_creating"), LRO_HEADERS)
    replay = create_replay(initial, Recorded(200, body("sql_async_operation_succeeded")))
    result = provision(replay, Journal(), res(location="ukwest"))
    assert result.action == "created" and result.status == "Online"
    assert replay.count("GET", SERVER) == 0  # location came from the plan
    assert [r.json()["location"] for r in replay.requests if r.method == "PUT"] == ["ukwest"]


def crash_after_token(replay: ArmReplay) -> str:
    """First run: ARM accepts the create, the token is journaled, then the runner dies."""
    journal = Journal()

    def save_then_crash(token: str | None) -> None:
        journal.save(token)
        raise Crash

    with pytest.raises(Crash):
        provision_database(res(), FakeCredential(), save_token=save_then_crash, transport=replay, polling_interval=0)
    assert replay.count("PUT", DB) == 1
    assert journal.token is not None
    return journal.token


def test_resume_from_continuation_token_does_not_create_twice() -> None:
    token = crash_after_token(create_replay())
    decoded = base64.b64decode(token).decode()
    assert "fake-arm-token" not in decoded and "Authorization" not in decoded  # safe to journal

    # second process: same ARM, fresh transport; a PUT here would have no recording and fail loudly
    replay = ArmReplay()
    replay.add(
        "GET",
        OPERATION,
        Recorded(200, body("sql_async_operation_in_progress")),
        Recorded(200, body("sql_async_operation_succeeded")),
    )
    replay.add("GET", DB, Recorded(200, body("sql_database_online")))
    journal = Journal()
    result = provision(replay, journal, token=token)
    assert result.action == "resumed" and result.status == "Online"
    assert replay.count("PUT", DB) == 0
    assert replay.count("GET", OPERATION) == 2
    assert journal.saved == [None]


def test_resume_with_expired_operation_falls_back_to_the_database() -> None:
    token = crash_after_token(create_replay())
    gone = ArmReplay()
    gone.add("GET", OPERATION, Recorded(404, {"error": {"code": "ResourceNotFound", "message": "gone"}}))
    gone.add("GET", DB, Recorded(200, body("sql_database_online")))
    result = provision(gone, Journal(), token=token)
    assert result.action == "resumed" and result.status == "Online"
    assert gone.count("PUT", DB) == 0


def test_unreadable_token_starts_over_safely() -> None:
    replay = create_replay()
    result = provision(replay, Journal(), token="not-a-token")
    assert result.action == "created"
    assert replay.count("PUT", DB) == 1


def test_existing_database_is_left_alone() -> None:
    replay = ArmReplay().add("GET", DB, Recorded(200, body("sql_database_online")))
    result = provision(replay, Journal())
    assert result.action == "exists" and result.max_size_bytes == 32 * GIB
    assert [r.method for r in replay.requests] == ["GET"]


def test_failed_operation_is_explained() -> None:
    replay = create_replay(None, Recorded(200, body("sql_async_operation_failed")))
    with pytest.raises(AzureRequestError) as raised:
        provision(replay, Journal())
    assert "ProvisioningDisabled" in str(raised.value)


def test_403_on_create_names_write_role_and_server_scope() -> None:
    replay = create_replay(Recorded(403, body("error_403")))
    with pytest.raises(EndpointError) as raised:
        provision(replay, Journal())
    assert raised.value.status == 403  # type: ignore[attr-defined]
    assert f"assign SQL DB Contributor on {SERVER}" in str(raised.value)
    assert replay.count("PUT", DB) == 1


def test_refuses_without_create_flag() -> None:
    replay = ArmReplay()
    with pytest.raises(UsageError):
        provision(replay, Journal(), res(create=False))
    assert replay.requests == []


@pytest.mark.parametrize(
    ("sku", "expected"),
    [
        ("GP_Gen5_2", {"name": "GP_Gen5", "tier": "GeneralPurpose", "family": "Gen5", "capacity": 2}),
        ("GP_S_Gen5_1", {"name": "GP_S_Gen5", "tier": "GeneralPurpose", "family": "Gen5", "capacity": 1}),
        ("BC_Gen5_8", {"name": "BC_Gen5", "tier": "BusinessCritical", "family": "Gen5", "capacity": 8}),
        ("HS_Gen5_4", {"name": "HS_Gen5", "tier": "Hyperscale", "family": "Gen5", "capacity": 4}),
        ("S3", {"name": "S3", "tier": "Standard"}),
        ("P1", {"name": "P1", "tier": "Premium"}),
        ("Basic", {"name": "Basic", "tier": "Basic"}),
        ("ElasticPool", {"name": "ElasticPool"}),
    ],
)
def test_sku_body(sku: str, expected: dict[str, Any]) -> None:
    assert sku_body(sku) == expected


def test_database_body_without_sku_or_size() -> None:
    assert database_body(res(sku=None, max_size_gb=None), "uksouth") == {"location": "uksouth"}
