"""The plan lock fences: one winner of a stale lock, a runner that lost its lock writes nothing more, expiry by
the journal database's clock, and --lock-timeout waits. Real processes throughout."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert

from helpers import cli_process, loaded_estate
from migrate.errors import LockHeld
from migrate.plan.loader import load_plan
from migrate.state.journal import Journal, lock_t, now
from migrate.state.lock import PlanLock, current_lock

RACER = """
import sys, time
from migrate.errors import LockHeld
from migrate.state.journal import Journal
from migrate.state.lock import PlanLock
journal = Journal(sys.argv[1])
start = float(sys.argv[2])
while time.time() < start:
    pass
try:
    PlanLock(journal, "ppm").acquire()
    print("won", flush=True)
    time.sleep(3)
except LockHeld:
    print("held", flush=True)
"""

WRITER = """
import sys, time
from migrate.errors import LockLost
from migrate.state.journal import Journal
from migrate.state.lock import PlanLock
journal = Journal(sys.argv[1], command="sync")
PlanLock(journal, "ppm", ttl=float(sys.argv[2])).acquire()
n = 0
try:
    while True:
        n += 1
        journal.put("patients", "written", n)
        print(n, flush=True)
        time.sleep(0.2)
except LockLost as exc:
    print("lost:", exc, flush=True)
    sys.exit(5)
"""

HOLDER = """
import sys, time
from migrate.state.journal import Journal
from migrate.state.lock import PlanLock
with PlanLock(Journal(sys.argv[1], command="sync"), sys.argv[2]):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def plant_stale_lock(url: str) -> None:
    """A lock left by a runner on another host whose heartbeat stopped a minute ago."""
    at = now() - timedelta(minutes=5)
    journal = Journal(url)
    with journal.connect() as conn:
        conn.execute(insert(lock_t).values(name="ppm", owner="migrate run by ops@elsewhere", host="elsewhere",
                                           pid=1, token="dead-runner", acquired_at=at, heartbeat_at=at,
                                           expires_at=at + timedelta(minutes=2)))


@pytest.mark.parametrize("journal_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_runners_racing_for_a_stale_lock_exactly_one_wins(tmp_path: Path, journal_kind: str,
                                                          request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}" if journal_kind == "sqlite" else request.getfixturevalue("pg_url")
    for round_ in range(3):
        with Journal(url).connect() as conn:
            conn.execute(lock_t.delete())
        plant_stale_lock(url)
        start = time.time() + 2.0  # every racer is up and spinning before the start
        racers = [subprocess.Popen([sys.executable, "-c", RACER, url, str(start)], stdout=subprocess.PIPE,
                                   text=True) for _ in range(4)]
        outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
        assert outcomes == ["held", "held", "held", "won"], (round_, outcomes)


def test_take_over_compares_the_token_it_judged_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worst interleaving, made certain: runner B takes the stale lock over after runner A judged it stale
    and before A's swap. A must lose (its swap names the token it judged), not take the lock from B."""
    import migrate.state.lock as lock_module

    url = f"sqlite:///{tmp_path / 'state.db'}"
    plant_stale_lock(url)
    a, b = PlanLock(Journal(url), "ppm"), PlanLock(Journal(url), "ppm")
    read = lock_module.current_lock

    def a_reads_then_b_wins(journal: Journal, name: str) -> object:
        seen = read(journal, name)
        monkeypatch.setattr(lock_module, "current_lock", read)
        b.acquire()  # between A's judgement and A's swap
        return seen

    monkeypatch.setattr(lock_module, "current_lock", a_reads_then_b_wins)
    try:
        with pytest.raises(LockHeld, match="took over the stale lock first"):
            a.acquire()
        assert current_lock(Journal(url), "ppm").token == b.token
    finally:
        b.release()


def test_a_runner_whose_lock_was_taken_over_stops_at_its_next_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, "1.5"], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    while int(writer.stdout.readline()) < 3:  # it is writing under its lock
        pass
    writer.send_signal(signal.SIGSTOP)  # a runner frozen (GC pause, VM suspended): its heartbeat stops too
    time.sleep(2.5)  # past its 1.5 s expiry
    journal = Journal(url)
    frozen_at = journal.get("patients", "written")
    with PlanLock(journal, "ppm"):  # the expired lock is taken over
        journal.put("patients", "owner", "the new runner")
        writer.send_signal(signal.SIGCONT)
        out, _ = writer.communicate(timeout=30)
        assert writer.returncode == 5, out
        assert "lost: another runner took over the plan's lock" in out
        assert journal.get("patients", "written") == frozen_at  # nothing of the old runner's after the take-over
        assert journal.get("patients", "owner") == "the new runner"
        assert current_lock(journal, "ppm").pid != writer.pid


@pytest.mark.postgres
def test_expiry_is_judged_by_the_journal_database_clock(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, pg_url, "ppm-clock", "30"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # this runner's own clock is an hour fast: by it the fresh lock (120 s ttl) has long expired
        import migrate.state.journal as journal_module
        monkeypatch.setattr(journal_module, "now", lambda: journal_module.datetime.now(journal_module.UTC)
                            + timedelta(hours=1))
        with pytest.raises(LockHeld, match="migrate sync by"):
            PlanLock(Journal(pg_url), "ppm-clock").acquire()
        assert current_lock(Journal(pg_url), "ppm-clock").pid == holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def demo_plan(tmp_path: Path) -> Path:
    return loaded_estate(tmp_path / "estate", patients=50, letters=5)


def test_lock_timeout_waits_for_the_holder_then_runs(demo_plan: Path) -> None:
    loaded = load_plan(demo_plan)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, loaded.state_url, loaded.plan.component, "3"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    started = time.monotonic()
    verified = cli_process("verify", str(demo_plan), "--lock-timeout", "60s")
    assert verified.returncode == 0, verified.stderr
    assert time.monotonic() - started >= 2  # it waited for the holder, then verified
    assert "waiting for the plan's lock" in verified.stderr and "migrate sync by" in verified.stderr
    holder.wait()


def test_lock_timeout_gives_up_with_who_holds_it_and_when_it_expires(demo_plan: Path) -> None:
    loaded = load_plan(demo_plan)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, loaded.state_url, loaded.plan.component, "60"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = cli_process("sync", str(demo_plan), "--lock-timeout", "2s")
        assert refused.returncode == 1
        assert "plan is locked by migrate sync by" in refused.stderr and f"pid {holder.pid}" in refused.stderr
        assert "expires" in refused.stderr and "waited 2s" in refused.stderr and "Traceback" not in refused.stderr
        bad = cli_process("run", str(demo_plan), "--lock-timeout", "soon")
        assert bad.returncode == 2 and "--lock-timeout" in bad.stderr
    finally:
        holder.kill()
        holder.wait()
