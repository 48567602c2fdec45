"""Gentle on the source: a rate limit holds over a window, a pause holds progress flat until resumed (also for a
running `sync --watch`), a schedule switches limits at its boundary (DST included), and a probe over its ceiling
slows the work while its recovery speeds it up again."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from helpers import cli_process, wait_for
from migrate.plan.model import Throttle as Spec
from migrate.throttle import effective_limits
from migrate.throttle.bucket import Bucket
from migrate.throttle.control import Throttle


def estate(folder: Path, throttle: str, chunk_rows: int = 500) -> Path:
    from migrate.demo.flow import prepare_estate

    plan, _ = prepare_estate(folder, patients=2000, letters=5)
    plan.write_text(plan.read_text().replace("    chunk_rows: 5000\n",
                                             f"    chunk_rows: {chunk_rows}\n    throttle: {throttle}\n"))
    return plan


def target_rows(plan: Path) -> int:
    db = plan.parent / "azure" / "ppm.db"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            return sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for t in ("patients", "encounters", "observations"))
        except sqlite3.OperationalError:
            return 0


def test_a_load_limited_to_n_rows_per_second_keeps_to_it(tmp_path: Path) -> None:
    plan = estate(tmp_path / "e", "{rows_per_second: 6000}")
    ran = cli_process("run", str(plan), "--until", "load", "--item", "patient-record", "--json")
    assert ran.returncode == 0, ran.stderr
    stages = json.loads(ran.stdout)["result"]["items"][0]["stages"]
    load = next(s for s in stages if s["stage"] == "load")
    rows, seconds = load["metrics"]["rows"], load["metrics"]["seconds"]
    assert rows > 20_000
    assert seconds >= rows / 6000 * 0.9, (rows, seconds)  # at least the time the limit implies...
    assert rows / seconds <= 6000 * 1.1, (rows, seconds)  # ...and within 10% of the rate over the load
    assert rows / seconds >= 6000 * 0.75, (rows, seconds)  # (and not far below it on a loaded machine)
    events = json.loads(cli_process("report", str(plan), "--format", "json", "--out", "-").stdout)["events"]
    assert any(e["kind"] == "throttle" and "load:" in e["message"] and "plan limits" in e["message"]
               for e in events)
    board = cli_process("report", str(plan), "--out", "-").stdout
    row = next(line for line in board.splitlines() if line.startswith("| patient-record | load | plan limits |"))
    assert float(row.split("|")[4].strip().removesuffix(" s")) >= 1.0  # the board sees the source was protected


def test_pause_holds_a_running_load_flat_until_resume(tmp_path: Path) -> None:
    plan = estate(tmp_path / "e", "{rows_per_second: 4000}")
    runner = subprocess.Popen([sys.executable, "-m", "migrate", "run", str(plan), "--until", "load", "--item",
                               "patient-record"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: target_rows(plan) >= 3000, seconds=30)  # real work under way
        paused = cli_process("throttle", str(plan), "--pause")
        assert paused.returncode == 0 and "pause" in paused.stderr
        time.sleep(2.5)  # runners look every second; the chunks already in flight finish
        held = target_rows(plan)
        time.sleep(3)
        assert target_rows(plan) == held and runner.poll() is None  # flat, and still running (holding its lock)
        shown = json.loads(cli_process("throttle", str(plan), "--json").stdout)["result"]
        assert shown["items"]["patient-record"]["paused"] and "paused by" in shown["items"]["patient-record"]["why"]
        status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]["items"][0]
        assert status["throttle"]["paused"] and status["throttle"]["rows_per_second"] == 4000
        assert cli_process("throttle", str(plan), "--resume").returncode == 0
        out, err = runner.communicate(timeout=60)
        assert runner.returncode == 0, err
        assert target_rows(plan) > held
    finally:
        if runner.poll() is None:
            runner.kill()
    assert cli_process("verify", str(plan), "--item", "patient-record").returncode == 0
    events = json.loads(cli_process("report", str(plan), "--format", "json", "--out", "-").stdout)["events"]
    assert any(e["kind"] == "throttle" and "paused by" in e["message"] for e in events)


def test_pause_holds_a_running_sync_watch(tmp_path: Path) -> None:
    plan = estate(tmp_path / "e", "{}", chunk_rows=5000)
    plan.write_text(plan.read_text().replace("interval: 5s", "interval: 1s"))
    assert cli_process("run", str(plan)).returncode == 0
    watch = subprocess.Popen([sys.executable, "-m", "migrate", "sync", str(plan), "--watch"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert cli_process("throttle", str(plan), "--pause").returncode == 0
        time.sleep(2.5)
        with sqlite3.connect(plan.parent / "onprem" / "ppm.db") as conn:
            conn.execute("UPDATE patients SET family_name = 'Paused', updated_at = datetime('now') WHERE rowid <= 5")
        time.sleep(3)
        with sqlite3.connect(plan.parent / "azure" / "ppm.db") as conn:
            assert conn.execute("SELECT count(*) FROM patients WHERE family_name = 'Paused'").fetchone()[0] == 0
        assert cli_process("throttle", str(plan), "--clear").returncode == 0

        def arrived() -> bool:
            with sqlite3.connect(plan.parent / "azure" / "ppm.db") as conn:
                return conn.execute("SELECT count(*) FROM patients WHERE family_name = 'Paused'").fetchone()[0] == 5

        wait_for(arrived, seconds=15)
    finally:
        watch.terminate()
        watch.wait(timeout=20)


def test_a_schedule_switches_limits_at_its_boundary_in_its_time_zone() -> None:
    spec = Spec(rows_per_second=50_000, timezone="Europe/London", schedule=[
        {"at": "07:00-19:00", "days": "mon-fri", "rows_per_second": 2000},
        {"at": "19:00-07:00", "days": "fri-sun", "pause": False}])  # weekend nights: no limit at all

    def at(text: str) -> float | None:
        return effective_limits(spec, None, datetime.fromisoformat(text)).rows_per_second

    # London is UTC+0 in January: the ward-hours window opens at 07:00 UTC
    assert at("2026-01-07T06:59:59+00:00") == 50_000  # Wednesday, before the window: the plan's limit
    assert at("2026-01-07T07:00:00+00:00") == 2000
    assert at("2026-01-07T18:59:59+00:00") == 2000
    assert at("2026-01-07T19:00:00+00:00") == 50_000  # Wednesday night has no window: the plan's limit
    assert at("2026-01-09T19:00:00+00:00") is None  # Friday night window: no limit
    assert at("2026-01-10T03:00:00+00:00") is None  # Saturday early morning belongs to Friday's window
    assert at("2026-01-10T10:00:00+00:00") == 50_000  # Saturday daytime: no window, the plan's limit
    # British Summer Time (UTC+1): 07:00 in London is 06:00 UTC, also right after the clocks changed
    assert at("2026-03-30T05:59:59+00:00") is None  # Monday 06:59 BST: Sunday night's window is still open
    assert at("2026-03-31T05:59:59+00:00") == 50_000  # Tuesday 06:59 BST
    assert at("2026-03-31T06:00:00+00:00") == 2000  # Tuesday 07:00 BST
    assert at("2026-03-31T17:59:59+00:00") == 2000
    assert at("2026-03-31T18:00:00+00:00") == 50_000  # 19:00 BST: the window closed
    reasons = effective_limits(spec, None, datetime(2026, 1, 7, 8, tzinfo=UTC)).reasons
    assert reasons == ["schedule window 07:00-19:00 mon,tue,wed,thu,fri (Europe/London)"]


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_keeps_a_rate_and_a_manual_override_changes_it_at_once() -> None:
    fake = FakeTime()
    rate = {"value": 1000.0}
    bucket = Bucket(lambda: (rate["value"], False, "test"), fake.clock, fake.sleep)
    for _ in range(100):
        bucket.take(100)  # 10,000 units at 1,000/s
    assert 9.9 <= fake.now <= 10.1
    rate["value"] = 5000.0
    start = fake.now
    for _ in range(100):
        bucket.take(100)
    assert 1.9 <= fake.now - start <= 2.1
    assert 11.5 < bucket.waited["test"] < 12.5


def test_a_probe_over_its_ceiling_slows_the_work_and_recovery_speeds_it_up() -> None:
    fake = FakeTime()
    spec = Spec(rows_per_second=1000, probe={"sql": "SELECT 1", "max_latency": "200ms", "every": "1s"})
    readings = iter([(True, "probe query 900 ms")] * 6 + [(False, "probe query 20 ms")] * 1000)
    throttle = Throttle(spec, None, probe=lambda: next(readings), clock=fake.clock, sleep=fake.sleep)
    throttle.active  # noqa: B018 - a spec alone makes it active

    said: list[str] = []

    def rate_over(units: int) -> float:
        start = fake.now
        for _ in range(units // 100):
            throttle.rows(100)
            said.append(throttle.effective().why)
        return units / (fake.now - start)

    slow = rate_over(1000)  # a reading a second over the ceiling: 1000 -> 500 -> 250 -> 125 rows/s
    assert throttle.factor <= 0.25 and slow < 500
    assert "plan limits; source over its ceiling (probe query 900 ms): at 25%" in said
    fast = rate_over(20_000)  # healthy readings: +10% of the limit each, back to the full rate
    assert throttle.factor == 1.0 and fast > 2 * slow
    assert throttle.effective().rows_per_second == 1000


def test_a_probe_without_a_limit_is_a_located_plan_problem(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ncomponent: wards\nconnections:\n"
                    '  a: {url: "postgresql+psycopg://app@onprem.example:5432/ppm"}\n'
                    '  b: {url: "postgresql+psycopg://app@azure.example:5432/ppm"}\n'
                    "databases:\n  - name: x\n    source: a\n    target: b\n"
                    "    throttle: {probe: {sql: SELECT 1}}\n")
    checked = cli_process("validate", str(plan))
    assert checked.returncode == 2
    assert f"{plan}:10:23: databases[0].throttle.probe: a probe scales the limits" in checked.stderr
    plan.write_text(plan.read_text().replace("{probe:", "{rows_per_second: 500, probe:"))
    assert cli_process("validate", str(plan)).returncode == 0
