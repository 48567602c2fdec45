"""`migrate schema` describes plans as people write them: every shipped plan passes a real JSON Schema
validator (jsonschema, and check-jsonschema as CI would run it), and typical mistakes do not."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from helpers import cli

ROOT = Path(__file__).parent.parent
PLANS = [*sorted((ROOT / "plans").glob("*.yaml")), ROOT / "migrate" / "demo" / "plan.yaml"]

MINIMAL = {"version": 1, "component": "x", "connections": {"a": {"path": "a"}, "b": {"path": "b"}}}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    code, out, err = cli("schema")
    assert code == 0, err
    emitted: dict[str, Any] = json.loads(out)
    Draft202012Validator.check_schema(emitted)
    return emitted


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(validator: Draft202012Validator, document: object) -> list[str]:
    """Every error as `key.path: message`, with the reasons each `anyOf` branch failed."""
    out = []
    pending = list(validator.iter_errors(document))
    while pending:
        error = pending.pop(0)
        out.append(f"{'.'.join(map(str, error.absolute_path))}: {error.message}")
        pending.extend(error.context or [])
    return out


def with_(**changes: Any) -> dict[str, Any]:
    return {**MINIMAL, **changes}


def test_the_schema_is_draft_2020_12_and_closed(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert {"version", "component", "connections"} <= set(schema["required"])
    gates = schema["$defs"]["Gates"]
    assert gates["additionalProperties"] is False and gates["properties"]["max_lag"]["default"] == 60.0
    assert "Azure" in schema["$defs"]["AzureResource"]["description"]
    assert schema["$defs"]["DatabaseItem"]["properties"]["tables"]["default"] == ["*"]
    assert schema["title"] == "migrate plan (version 1)"


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name if p.parent.name == "plans" else "demo")
def test_every_shipped_plan_passes_the_schema(validator: Draft202012Validator, plan: Path) -> None:
    document = YAML(typ="safe").load(plan.read_text(encoding="utf-8"))
    assert errors(validator, document) == []


@pytest.mark.parametrize("duration", ["30s", "5m", "72h", "2d", "500ms", "1.5h", " 10 s ", "45", 30, 0, 2.5])
def test_durations_as_written(validator: Draft202012Validator, duration: object) -> None:
    assert errors(validator, with_(dual_run={"interval": duration})) == []
    assert errors(validator, with_(cutover={"steps": [{"name": "s", "run": "true", "timeout": duration}]})) == []


@pytest.mark.parametrize("table", ["*", "public.patients", {"name": "orders", "key": ["id", "seq"]}])
def test_a_table_is_a_name_or_a_mapping(validator: Draft202012Validator, table: object) -> None:
    assert errors(validator, database(tables=[table])) == []


def database(**options: Any) -> dict[str, Any]:
    return with_(databases=[{"name": "db", "source": "a", "target": "b", **options}])


@pytest.mark.parametrize("document", [
    with_(dual_run={"interval": "${DUAL_RUN_INTERVAL}"}),
    database(chunk_rows="${CHUNK_ROWS}"),
    database(delete="${MIRROR_DELETES}"),
    database(existing_target="${EXISTING_TARGET}"),
    with_(component="ppm-${SITE}"),
])
def test_an_interpolated_value_may_stand_for_a_number_a_boolean_or_a_choice(
        validator: Draft202012Validator, document: dict[str, Any]) -> None:
    assert errors(validator, document) == []


@pytest.mark.parametrize(("document", "expected"), [
    (with_(colour="blue"), "Additional properties are not allowed ('colour' was unexpected)"),
    (with_(cutover={"gates": {"max_lagg": "60s"}}), "('max_lagg' was unexpected)"),
    (with_(dual_run={"interval": "30 seconds"}), "dual_run.interval: '30 seconds'"),
    (with_(dual_run={"interval": "-5s"}), "dual_run.interval: '-5s'"),
    (with_(dual_run={"interval": -5}), "dual_run.interval: -5"),
    (with_(dual_run={"interval": True}), "dual_run.interval: True"),
    (with_(dual_run={"interval": "$DUAL_RUN"}), "dual_run.interval: '$DUAL_RUN'"),
    (with_(version="1"), "version: '1'"),
    (with_(component="no spaces allowed"), "component: 'no spaces allowed'"),
    (database(chunk_rows="many"), "databases.0.chunk_rows: 'many'"),
    (database(tables="*"), "databases.0.tables: '*' is not of type 'array'"),
    (database(tables=[7]), "databases.0.tables.0: 7"),
    (database(tables=[{"name": "t", "colour": "red"}]), "('colour' was unexpected)"),
    (with_(blobs=[{"name": "b", "source": "a", "target": "b", "delete": "yes"}]),
     "blobs.0.delete: 'yes'"),
    ({"version": 1, "component": "x"}, "'connections' is a required property"),
])
def test_mistakes_are_rejected(validator: Draft202012Validator, document: dict[str, Any], expected: str) -> None:
    found = errors(validator, document)
    assert any(expected in e for e in found), found


def test_check_jsonschema_accepts_the_shipped_plans(tmp_path: Path) -> None:
    """What README tells CI to run: `migrate schema > plan.schema.json; check-jsonschema --schemafile ...`."""
    check = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert check is not None, "check-jsonschema is in the test extra: pip install -e '.[test]'"
    schema_file = tmp_path / "plan.schema.json"
    emitted = subprocess.run([sys.executable, "-m", "migrate", "schema"], capture_output=True, text=True,
                             check=True, timeout=60)
    schema_file.write_text(emitted.stdout, encoding="utf-8")
    done = subprocess.run([check, "--schemafile", str(schema_file), *map(str, PLANS)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncomponent: x\nconnections: {}\ndual_run: {interval: soon}\n", encoding="utf-8")
    refused = subprocess.run([check, "--schemafile", str(schema_file), str(bad)],
                             capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1 and "dual_run.interval" in refused.stdout + refused.stderr
