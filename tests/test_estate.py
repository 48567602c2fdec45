"""The estate: `migrate status DIR` and `migrate report DIR` over a folder of plans in different stages, and
`depends_on` holding a component's cutover until the components it needs are cut over."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import build_tree, cli

PLAN = """
version: 1
component: {name}
{extra}
connections:
  src: {{path: {name}-src}}
  dst: {{path: {name}-dst}}
blobs:
  - {{name: files, source: src, target: dst}}
"""


@pytest.fixture
def estate(tmp_path: Path) -> Path:
    files: dict[str, str | bytes] = {}
    for name, extra in (("intake", ""), ("records", ""), ("documents", "depends_on: [records]")):
        files[f"plans/{name}.yaml"] = PLAN.format(name=name, extra=extra)
        files[f"plans/{name}-src/a/{name}-1.txt"] = f"{name} one\n"
        files[f"plans/{name}-src/{name}-2.txt"] = f"{name} two\n"
    build_tree(tmp_path, files)
    return tmp_path / "plans"


def _status(folder: Path) -> list[dict]:
    code, stdout, stderr = cli("status", str(folder), "--json")
    assert code == 0, stderr
    return json.loads(stdout)["result"]["components"]


def test_depends_on_refuses_until_the_dependency_is_cut_over(estate: Path) -> None:
    for name in ("records", "documents"):
        assert cli("run", str(estate / f"{name}.yaml"))[0] == 0
    code, stdout, _ = cli("cutover", str(estate / "documents.yaml"), "--check", "--json")
    assert code == 3
    assert any(r.startswith("depends_on: not cut over yet: records: idle")
               for r in json.loads(stdout)["result"]["refused"])
    assert cli("cutover", str(estate / "records.yaml"), "--yes")[0] == 0
    code, stdout, _ = cli("cutover", str(estate / "documents.yaml"), "--check", "--json")
    assert code == 0, stdout
    gates = {g["gate"]: g for g in json.loads(stdout)["result"]["gates"]}
    assert gates["depends_on"]["passed"] and gates["depends_on"]["evidence"] == "cut over: records"


def test_depends_on_a_component_with_no_plan_in_the_folder_refuses(estate: Path) -> None:
    plan = estate / "documents.yaml"
    plan.write_text(plan.read_text().replace("depends_on: [records]", "depends_on: [pharmacy]"))
    assert cli("run", str(plan))[0] == 0
    code, stdout, _ = cli("cutover", str(plan), "--check", "--json")
    assert code == 3 and any("pharmacy: no plan of that component in" in r
                             for r in json.loads(stdout)["result"]["refused"])


def test_status_and_report_over_a_folder_of_three_plans_in_different_stages(estate: Path) -> None:
    assert cli("run", str(estate / "records.yaml"))[0] == 0
    assert cli("cutover", str(estate / "records.yaml"), "--yes")[0] == 0
    assert cli("run", str(estate / "documents.yaml"))[0] == 0
    rows = _status(estate)
    # most in need of attention first: still loading, then ready, then done
    assert [(r["component"], r["phase"]) for r in rows] == [
        ("intake", "LOADING"), ("documents", "READY FOR CUTOVER"), ("records", "CUT OVER")]
    documents = rows[1]
    assert documents["cutover"] == "idle" and documents["depends_on"] == ["records"]
    assert documents["last_verification"].endswith("clean") and documents["gates"].endswith("pass")
    assert rows[2]["cutover"] == "done" and rows[2]["lag"] == "reverse: not run yet"
    assert rows[0]["last_verification"] == "never"
    assert rows[0]["gates"] == "0/3 pass; failing: loaded, verified, max_lag"

    code, _, stderr = cli("report", str(estate), "--format", "html")
    assert code == 0, stderr
    page = (estate / "reports" / "estate.html").read_text()
    assert page.index(">intake<") < page.index(">documents<") < page.index(">records<")
    assert "LOADING" in page and "READY FOR CUTOVER" in page and "CUT OVER at" in page
    code, _, _ = cli("report", str(estate), "--format", "md", "--out", str(estate / "estate.md"))
    assert code == 0 and "| records | CUT OVER at" in (estate / "estate.md").read_text()
    code, _, stderr = cli("report", str(estate), "--format", "junit")
    assert code == 2 and "an estate report is md, html or json" in stderr

    code, _, stderr = cli("status", str(estate))
    assert code == 0 and "Estate:" in stderr and "records" in stderr

    assert cli("rollback", str(estate / "records.yaml"), "--yes")[0] == 0
    rolled = {r["component"]: r for r in _status(estate)}
    assert rolled["records"]["phase"] == "ROLLED BACK"
    assert rolled["records"]["headline"].startswith("ROLLED BACK at ")


def test_an_invalid_plan_in_the_folder_is_a_row_saying_why(estate: Path) -> None:
    (estate / "broken.yaml").write_text("version: 1\ncomponent: broken\nnot_a_key: 1\n")
    rows = _status(estate)
    assert rows[0]["phase"] == "INVALID" and rows[0]["plan"] == "broken.yaml"
    assert "not_a_key" in rows[0]["headline"]


def test_a_plan_cannot_depend_on_itself(estate: Path) -> None:
    plan = estate / "documents.yaml"
    plan.write_text(plan.read_text().replace("depends_on: [records]", "depends_on: [records, documents]"))
    code, _, stderr = cli("validate", str(plan))
    assert code == 2 and "documents.yaml:3:" in stderr
    assert "depends_on[1]: a component cannot depend on itself" in stderr
