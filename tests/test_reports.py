"""Reports from a journal: the same evidence in Markdown, HTML, JSON and JUnit, with secrets masked."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from helpers import build_tree, cli
from migrate import commands
from migrate.plan.model import Plan
from migrate.reports.build import build_report, describe_connection, headline
from migrate.reports.limits import stated_limits
from migrate.reports.mask import Masker
from migrate.state.journal import Journal, now
from migrate.state.sync_state import SyncState

PLAN = """
version: 1
component: report-test
change: {id: CHG0099, owner: EPR team}
connections:
  src: {path: src}
  dst: {connection_string: "${STORE_CS}", container: letters}
  db_a: {url: "sqlite:///a.db"}
  db_b: {url: "sqlite:///b.db"}
blobs:
  - {name: letters, source: src, target: dst}
databases:
  - {name: record, source: db_a, target: db_b}
"""
SECRET_CS = "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=TOPSECRETKEY1234==;EndpointSuffix=core"


@pytest.fixture
def journaled_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STORE_CS", SECRET_CS)
    build_tree(tmp_path, {"plan.yaml": PLAN})
    journal = Journal(f"sqlite:///{tmp_path / '.migrate' / 'report-test.db'}", command="run")
    for item, kind in (("letters", "blob"), ("record", "database")):
        journal.set_stage(item, kind, "load", "running")
        journal.set_stage(item, kind, "load", "done", detail={"seconds": 1.5})
        SyncState(journal, item).caught_up(now(), 0.0)
    journal.record_verification("letters", True, 300, 0)
    journal.record_verification("record", False, 1000, 1, detail={"differences": [
        {"item": "record", "kind": "different", "key": "patients:id=7", "detail": "columns: postcode"}]})
    journal.event("load", f"used {SECRET_CS}", item="letters")
    return tmp_path / "plan.yaml"


def test_all_formats_carry_the_same_evidence(journaled_plan: Path) -> None:
    out = journaled_plan.parent / "out"
    texts = {}
    for fmt, suffix in (("md", "md"), ("html", "html"), ("json", "json"), ("junit", "xml")):
        code, stdout, stderr = cli("report", str(journaled_plan), "--format", fmt, "--out", f"{out}.{suffix}")
        assert code == 0, stderr
        texts[fmt] = Path(f"{out}.{suffix}").read_text()
        assert "TOPSECRETKEY" not in texts[fmt]
    assert "NOT READY" in texts["md"] and "patients:id=7" in texts["md"] and "CHG0099" in texts["md"]
    assert "| verified | FAIL |" in texts["md"]
    assert "<td class='bad'>FAIL</td>" in texts["html"] and "patients:id=7" in texts["html"]
    body = json.loads(texts["json"])
    assert body["clean"] is False and body["component"] == "report-test"
    assert {i["name"]: i["verification"]["clean"] for i in body["items"]} == {"letters": True, "record": False}
    suite = ET.fromstring(texts["junit"])
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert "verify record" in failed and "verify letters" not in failed and "gate verified" in failed
    assert suite.get("failures") == str(len(failed))


def test_report_default_path_and_json_envelope(journaled_plan: Path) -> None:
    code, stdout, _ = cli("report", str(journaled_plan), "--format", "junit", "--json")
    envelope = json.loads(stdout)
    assert code == 0 and envelope["ok"] is True
    assert envelope["result"]["path"] == str(journaled_plan.parent / "reports" / "report-test.xml")
    assert Path(envelope["result"]["path"]).exists()


def test_unknown_format_is_a_clear_error(journaled_plan: Path) -> None:
    code, _, stderr = cli("report", str(journaled_plan), "--format", "pdf")
    assert code == 2 and "--format takes one of md, html, json, junit" in stderr
    code, _, stderr = cli("report", str(journaled_plan), "--events", "some")
    assert code == 2 and "--events takes summary or all, not 'some'" in stderr


def test_headline_names_the_phase(journaled_plan: Path) -> None:
    def headline() -> str:
        out = journaled_plan.parent / "h.json"
        assert cli("report", str(journaled_plan), "--format", "json", "--out", str(out))[0] == 0
        return json.loads(out.read_text())["headline"]

    assert headline() == "NOT READY: failing verified"
    journal = Journal(f"sqlite:///{journaled_plan.parent / '.migrate' / 'report-test.db'}", command="verify")
    journal.record_verification("record", True, 1000, 0)
    for item in ("letters", "record"):  # clean, but the last clean sync cycle is two hours old
        SyncState(journal, item).caught_up(now() - timedelta(hours=2), 0.0)
    assert headline().startswith("DUAL-RUNNING (lag 2h")
    assert headline().endswith("waiting for max_lag")
    journal.set_stage("record", "database", "load", "running")  # loading again
    assert headline().startswith("LOADING: record load (running), letters load (done)")
    journal.close()


def test_plan_default_masks_and_the_flag_overrides_it(journaled_plan: Path) -> None:
    plan = journaled_plan
    plan.write_text(plan.read_text().replace("owner: EPR team}", "owner: EPR team, mask_identifiers: true}"))
    out = plan.parent / "m.md"
    assert cli("report", str(plan), "--format", "md", "--out", str(out))[0] == 0
    text = out.read_text()
    assert "MASKED" in text and "patients:id=7" not in text and "patients:#" in text
    assert "- Sign-off: name ____" in text  # no signoff roles named: one plain line
    assert cli("report", str(plan), "--format", "md", "--out", str(out), "--no-mask-identifiers")[0] == 0
    assert "patients:id=7" in out.read_text() and "MASKED" not in out.read_text()
    assert "unkeyed hash: anyone who knows the component name can test a guessed identifier" in text


def test_a_mask_key_makes_the_hashes_an_hmac_no_one_can_recompute(journaled_plan: Path) -> None:
    """Unkeyed, sha256(component, key) can be recomputed for a guessed identifier; with change.mask_key (a
    ${VAR} secret) it is an HMAC, and the secret itself appears nowhere."""
    import hashlib
    import hmac

    plan = journaled_plan
    unkeyed = hashlib.sha256(b"report-test\0patients:id=7").hexdigest()[:10]
    plan.write_text(plan.read_text().replace(
        "owner: EPR team}", 'owner: EPR team, mask_identifiers: true, mask_key: "${MASK_KEY}"}'))
    out = plan.parent / "k.md"
    assert cli("report", str(plan), "--format", "md", "--out", str(out), env={"MASK_KEY": "Wy7-mask-Secret"})[0] == 0
    text = out.read_text()
    keyed = hmac.new(b"Wy7-mask-Secret", b"report-test\0patients:id=7", hashlib.sha256).hexdigest()[:10]
    assert f"patients:#{keyed}" in text and unkeyed not in text and "patients:id=7" not in text
    assert "an HMAC under the plan's secret mask_key" in text and "Wy7-mask-Secret" not in text


def test_not_migrated_list_states_the_plan_s_limits() -> None:
    plan = Plan.model_validate({
        "version": 1, "component": "limits",
        "connections": {"a": {"url": "mssql+pymssql://reader@onprem/epr"}, "b": {"url": "sqlite:///b.db"},
                        "c": {"path": "c"}, "d": {"path": "d"}},
        "databases": [{"name": "db", "source": "a", "target": "b", "incremental": {"column": "updated_at"},
                       "delete": False}],
        "blobs": [{"name": "files", "source": "c", "target": "d", "include": ["**/*.pdf"]}]})
    found = {(x.item, x.what) for x in stated_limits(plan, None)}
    assert found == {("db", "sync of every table (watermark updated_at)"), ("db", "deletes on the source"),
                     ("db", "SQL Server path (a)"), ("files", "files outside the include/exclude filters"),
                     ("files", "deletes on the source")}


def test_a_field_form_sql_server_is_a_stated_limit_and_shown_without_its_password() -> None:
    plan = Plan.model_validate({
        "version": 1, "component": "limits",
        "connections": {"a": {"driver": "mssql", "host": "onprem", "database": "epr", "user": "reader",
                              "password": "pw/with@signs"},
                        "b": {"driver": "sqlite", "database": "b.db"}},
        "databases": [{"name": "db", "source": "a", "target": "b"}]})
    assert ("db", "SQL Server path (a)") in {(x.item, x.what) for x in stated_limits(plan, None)}
    assert describe_connection(plan.connections["a"]) == "mssql+mssqlpython://reader:***@onprem:1433/epr"
    assert describe_connection(plan.connections["b"]) == "sqlite:///b.db"


def test_masker_hashes_full_paths_and_bare_file_names_stably() -> None:
    paths = ["2026/AMU/scan #12 100% + notes; final.pdf", "2026/Ward 4/patient-0042/letter-00042.pdf"]
    data = {"a": "conflict at 2026/AMU/scan #12 100% + notes; final.pdf: changed on both sides",
            "b": ["re-scanned letter-00042.pdf"], "c": "patients:id=7 differs"}
    known = [*paths, "patients:id=7", "never-mentioned.pdf"]
    masker = Masker.for_value("ppm", known, data)
    masked = masker.apply(data)
    assert "final.pdf" not in masked["a"] and "#" in masked["a"] and masked["a"].endswith(": changed on both sides")
    assert masked["b"][0].startswith("re-scanned #") and masked["b"][0].endswith(".pdf")
    assert masked["c"].startswith("patients:#") and "id=7" not in masked["c"]
    assert "never-mentioned.pdf" not in masker.replacements  # only what can occur is compiled
    assert Masker.for_value("ppm", known, data).apply(data) == masked  # stable
    assert Masker.for_value("other", known, data).apply(data)["a"] != masked["a"]  # keyed by component


def test_headline_during_a_cutover_or_rollback(journaled_plan: Path) -> None:
    with commands.session(journaled_plan, "report", lock=False) as ctx:
        data = build_report(ctx, None)
    running = dataclasses.replace(data, cutover={"status": "running", "step": 1})
    assert headline(running) == ("CUTOVER RUNNING", f"CUTOVER RUNNING or interrupted at step 2 of "
                                 f"{len(data.cutover_steps)}: rerun `migrate cutover` or roll back")
    assert headline(dataclasses.replace(data, cutover={"status": "rolling_back"}))[0] == "ROLLING BACK"


def test_a_chart_breaks_its_line_at_a_long_gap_instead_of_drawing_across_it() -> None:
    from migrate.reports.svg import line_chart, runs

    start = datetime(2026, 11, 1, tzinfo=UTC)
    load = [(start + timedelta(seconds=30 * n), 1000.0) for n in range(5)]  # a load, every 30 s
    sync = [(start + timedelta(days=3, seconds=30 * n), 10.0) for n in range(5)]  # syncs three days later
    assert [len(r) for r in runs(load + sync)] == [5, 5]
    assert [len(r) for r in runs(load)] == [5]
    svg = line_chart("Throughput", "rows/s", {"epr": load + sync})
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 10
