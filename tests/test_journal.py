"""The state journal and the plan lock, across real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from migrate.errors import LockHeld, MigrateError
from migrate.state.journal import Journal
from migrate.state.lock import PlanLock, break_lock, current_lock

HOLDER = """
import sys, time
from migrate.state.journal import Journal
from migrate.state.lock import PlanLock
lock = PlanLock(Journal(sys.argv[1]), "ppm", ttl=float(sys.argv[2]))
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def hold_lock(url: str, ttl: float = 120) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, str(ttl)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_and_told_the_owner(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    holder = hold_lock(url)
    try:
        with pytest.raises(LockHeld) as caught:
            PlanLock(Journal(url), "ppm").acquire()
        assert f"pid {holder.pid}" in str(caught.value) and "@" in str(caught.value)
        with pytest.raises(MigrateError, match="the lock is live"):
            break_lock(Journal(url), "ppm")
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    holder = hold_lock(url)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    journal = Journal(url)
    assert current_lock(journal, "ppm") is not None  # left behind by kill -9
    with PlanLock(journal, "ppm"):
        assert current_lock(journal, "ppm").pid == os.getpid()
    assert current_lock(journal, "ppm") is None
    assert any("took over a stale lock" in e["message"] for e in journal.events())


def test_force_unlock_breaks_a_live_lock(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    holder = hold_lock(url)
    try:
        released = break_lock(Journal(url), "ppm", force=True)
        assert released is not None and released.pid == holder.pid
        assert current_lock(Journal(url), "ppm") is None
    finally:
        holder.kill()
        holder.wait()


def test_heartbeat_extends_expiry(tmp_path: Path) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 'state.db'}")
    with PlanLock(journal, "ppm", ttl=2.0):
        first = current_lock(journal, "ppm").expires_at
        time.sleep(1.2)
        assert current_lock(journal, "ppm").expires_at > first


def test_journal_records_stages_chunks_state_and_events(tmp_path: Path) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 'state.db'}", command="run")
    run_id = journal.begin_run("f" * 64)
    journal.set_stage("letters", "blob", "load", "running", run_id=run_id)
    journal.mark_chunks("letters", "load", [("a.pdf", "done", 10, {"md5": "x"}), ("b.pdf", "pending", 0, None)])
    journal.mark_chunk("letters", "load", "b.pdf", "done", 20)
    journal.set_stage("letters", "blob", "load", "done", run_id=run_id, fingerprint="f" * 64)
    journal.put("letters", "watermark", {"updated_at": "2026-01-01T00:00:00+00:00"})
    journal.event("load", "password=hunter2 AccountKey=abc123== done", item="letters")
    journal.record_verification("letters", True, 2, 0)
    journal.end_run(run_id, "ok")

    reopened = Journal(f"sqlite:///{tmp_path / 'state.db'}")
    assert reopened.item("letters").status == "done" and reopened.item("letters").fingerprint == "f" * 64
    assert reopened.chunks("letters", "load") == {"a.pdf": ("done", 10, {"md5": "x"}), "b.pdf": ("done", 20, {})}
    assert reopened.get("letters", "watermark") == {"updated_at": "2026-01-01T00:00:00+00:00"}
    assert [s["status"] for s in reopened.stage_log("letters")] == ["running", "done"]
    assert reopened.last_done("letters", "load") is not None and reopened.last_done("letters", "verify") is None
    message = reopened.events()[-1]["message"]
    assert "hunter2" not in message and "abc123" not in message
    assert reopened.last_verification("letters").clean


def test_unreadable_state_url_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(MigrateError, match="cannot open the state journal"):
        Journal(f"sqlite:///{blocker / 'sub' / 'state.db'}")


@pytest.mark.postgres
def test_postgresql_journal_records_a_whole_run_and_locks(tmp_path: Path, pg_url: str) -> None:
    from helpers import cli_process
    from migrate.demo.flow import prepare_estate

    plan, _ = prepare_estate(tmp_path / "estate", patients=100, letters=20)
    plan.write_text(plan.read_text().replace("component: ppm-demo", f"component: ppm-demo\nstate: \"{pg_url}\""))
    ran = cli_process("run", str(plan))
    assert ran.returncode == 0, ran.stderr
    assert not (plan.parent / ".migrate").exists()  # nothing journaled beside the plan
    journal = Journal(pg_url)
    assert journal.last_verification("letters").clean and journal.last_verification("patient-record").clean
    assert sum(1 for c in journal.chunks("letters", "load").values() if c[0] == "done") == 20
    holder = hold_lock(pg_url)
    try:
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"):
            PlanLock(Journal(pg_url), "ppm").acquire()
    finally:
        holder.kill()
        holder.wait()


def _log(*entries: str) -> list[dict[str, Any]]:
    at = datetime(2026, 11, 29, tzinfo=UTC)
    return [{"stage": e.split()[0], "status": e.split()[1], "at": at + timedelta(minutes=n)}
            for n, e in enumerate(entries)]


def test_standing_is_the_furthest_stage_reached_not_the_last_command() -> None:
    from migrate.state.journal import standing

    assert standing([]) is None
    loaded = ("preflight done", "schema done", "load done", "verify done")
    assert standing(_log(*loaded))[:2] == ("verify", "done")
    dual = (*loaded, "sync done", "sync done")
    assert standing(_log(*dual, "verify done", "preflight done"))[:2] == ("sync", "done")
    assert standing(_log(*dual, "verify failed"))[:2] == ("verify", "failed")  # trouble shows as it is
    assert standing(_log(*dual, "verify failed", "verify done"))[:2] == ("sync", "done")
    assert standing(_log(*dual, "load running"))[:2] == ("load", "running")  # a table added: loading now
    cut = (*dual, "cutover done")
    assert standing(_log(*cut, "sync done", "verify done"))[:2] == ("cutover", "done")
    assert standing(_log(*cut, "rollback done"))[:2] == ("rollback", "done")
    assert standing(_log(*cut, "rollback done", "sync done"))[:2] == ("sync", "done")


def test_status_shows_dual_running_after_a_verify_and_no_forward_lag_after_cutover(tmp_path: Path) -> None:
    import json

    from helpers import cli_process, loaded_estate

    plan = loaded_estate(tmp_path / "estate", patients=20, letters=3)
    for verb in ("sync", "verify"):
        assert cli_process(verb, str(plan)).returncode == 0
    shown = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]["items"]
    assert {(i["stage"], i["status"]) for i in shown} == {("sync", "done")}
    assert all(i["lag_seconds"] is not None for i in shown)
    assert cli_process("cutover", str(plan), "--yes", "--approved-by", "CAB-1").returncode == 0
    assert cli_process("verify", str(plan)).returncode == 0
    shown = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]["items"]
    assert {(i["stage"], i["status"]) for i in shown} == {("cutover", "done")}
    assert all(i["lag_seconds"] is None for i in shown)  # the source is no longer authoritative
