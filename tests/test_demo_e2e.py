"""End to end through the CLI on the embedded default: demo, kill -9 resume, lock contention, cutover."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import assert_identical, cli_process, loaded_estate
from migrate.demo.flow import prepare_estate


def test_demo_runs_end_to_end_and_reports(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    done = cli_process("demo", "--workdir", str(work), "--patients", "300", "--letters", "80")
    assert done.returncode == 0, done.stderr
    assert "all verified, cutover complete" in done.stderr
    report = work / "reports" / "ppm-demo.md"
    assert f"report: {report}" in done.stderr
    text = report.read_text()
    assert "**CUT OVER at " in text and "NOT READY" not in text
    for section in ("Write-freeze window:** ", "## Cutover and rollback steps", "## Counts: source vs target",
                    "## Verification history", "## Not migrated / not verified", "- CAB chair: name"):
        assert section in text, section
    assert (work / "active-site").read_text().strip() == "azure"
    assert_identical(work)
    status = cli_process("status", str(work / "plan.yaml"), "--json")
    body = json.loads(status.stdout)
    assert status.returncode == 0 and body["result"]["cutover"]["status"] == "done"
    assert {i["item"]: i["last_verification"]["clean"] for i in body["result"]["items"]} == {
        "patient-record": True, "letters": True}


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_ends_clean(tmp_path: Path) -> None:
    plan, _ = prepare_estate(tmp_path / "estate", patients=3000, letters=400)
    rng = random.Random()
    for _attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-m", "migrate", "run", str(plan)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.5))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    resumed = cli_process("run", str(plan))
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(plan.parent)
    verify = cli_process("verify", str(plan), "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["result"]["clean"] is True


def test_second_concurrent_run_exits_1_naming_the_owner(tmp_path: Path) -> None:
    plan, _ = prepare_estate(tmp_path / "estate", patients=4000, letters=600)
    first = subprocess.Popen([sys.executable, "-m", "migrate", "run", str(plan)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        journal = plan.parent / ".migrate" / "ppm-demo.db"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=30) as conn:
                    if conn.execute("SELECT count(*) FROM locks").fetchone()[0]:
                        break
            except sqlite3.OperationalError:  # the journal or its tables are not there yet
                pass
            time.sleep(0.05)
        second = cli_process("run", str(plan))
        assert first.poll() is None, "the first run finished before the second started: enlarge the estate"
        assert second.returncode == 1
        assert "plan is locked by" in second.stderr and f"pid {first.pid}" in second.stderr
    finally:
        first.wait(timeout=300)
    assert first.returncode == 0


@pytest.fixture
def loaded_demo(tmp_path: Path) -> Path:
    return loaded_estate(tmp_path / "estate", patients=200, letters=40)


def test_cutover_refuses_with_reasons_then_runs_once(loaded_demo: Path) -> None:
    work = loaded_demo.parent
    (work / "postpone-cutover").write_text("ward managers not ready\n")
    refused = cli_process("cutover", str(loaded_demo), "--yes", "--json")
    body = json.loads(refused.stdout)
    assert refused.returncode == 3 and body["ok"] is False
    assert any(r.startswith("postpone_file:") for r in body["result"]["refused"])
    (work / "postpone-cutover").unlink()
    no_tty = cli_process("cutover", str(loaded_demo))
    assert no_tty.returncode == 2 and "pass --yes" in no_tty.stderr
    done = cli_process("cutover", str(loaded_demo), "--yes")
    assert done.returncode == 0, done.stderr
    assert (work / "active-site").read_text().strip() == "azure"
    again = cli_process("cutover", str(loaded_demo), "--yes", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["result"]["status"] == "already_done"
    back = cli_process("rollback", str(loaded_demo), "--yes")
    assert back.returncode == 0, back.stderr
    assert (work / "active-site").read_text().strip() == "onprem"


def test_failing_step_rolls_back_and_next_cutover_starts_from_the_first_step(loaded_demo: Path) -> None:
    work = loaded_demo.parent
    switch = work / "runbooks" / "switch.sh"
    switch.write_text("#!/bin/sh\necho switching >> switch.log\necho 'DNS update refused' >&2\nexit 7\n")
    failed = cli_process("cutover", str(loaded_demo), "--yes")
    assert failed.returncode == 1
    assert "step 'switch application to Azure' exited 7: DNS update refused" in failed.stderr
    assert (work / "active-site").read_text().strip() == "onprem"  # the rollback step ran
    switch.write_text("#!/bin/sh\necho azure > active-site\n")
    (work / "freeze.count").unlink(missing_ok=True)
    freeze = work / "runbooks" / "freeze.sh"
    freeze.write_text("#!/bin/sh\necho x >> freeze.count\n")
    done = cli_process("cutover", str(loaded_demo), "--yes")
    assert done.returncode == 0, done.stderr
    assert (work / "freeze.count").read_text().count("x") == 1
    assert (work / "active-site").read_text().strip() == "azure"


def test_interrupted_cutover_resumes_at_the_interrupted_step(loaded_demo: Path) -> None:
    work = loaded_demo.parent
    (work / "runbooks" / "freeze.sh").write_text("#!/bin/sh\necho x >> freeze.count\n")
    # the switch step kills the runner (kill -9 of its parent) the first time only
    (work / "runbooks" / "switch.sh").write_text(
        "#!/bin/sh\nif [ ! -f once ]; then touch once; kill -9 $PPID; sleep 5; fi\necho azure > active-site\n")
    lost = cli_process("cutover", str(loaded_demo), "--yes")
    assert lost.returncode == -signal.SIGKILL
    status = json.loads(cli_process("status", str(loaded_demo), "--json").stdout)["result"]
    # freeze, final sync, final verify, sequences, switch: the switch is step 4 (from 0)
    assert status["cutover"]["status"] == "running" and status["cutover"]["step"] == 4
    resumed = cli_process("cutover", str(loaded_demo), "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed an interrupted cutover at step 5" in resumed.stderr
    assert (work / "freeze.count").read_text().count("x") == 1  # the freeze did not run twice
    assert (work / "active-site").read_text().strip() == "azure"


def test_plan_is_a_dry_run_with_detailed_exit_codes(tmp_path: Path) -> None:
    plan, _ = prepare_estate(tmp_path / "estate", patients=50, letters=10)
    work = plan.parent
    before = cli_process("plan", str(plan), "--detailed-exitcode", "--json")
    body = json.loads(before.stdout)
    assert before.returncode == 4 and body["result"]["changes"] is True
    assert {p["item"]: p["create"] for p in body["result"]["previews"]}["letters"] == 10
    assert not (work / "azure" / "ppm.db").exists() and not (work / "azure" / "letters").exists()
    assert cli_process("run", str(plan)).returncode == 0
    after = cli_process("plan", str(plan), "--detailed-exitcode")
    assert after.returncode == 0 and "Nothing to do" in after.stderr
