"""The work table of `migrate worker`: claims by real processes on a real PostgreSQL journal, leases judged by
the journal's clock, fences that refuse a superseded runner's writes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate.errors import UsageError
from migrate.state.claims import Claim, WorkTable, bucket_of, parse_shard
from migrate.state.journal import Journal

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]

CLAIMER = """
import json, sys
sys.path.insert(0, {repo!r})
from migrate.state.claims import WorkTable
from migrate.state.journal import Journal
work = WorkTable(Journal(sys.argv[1]), owner=sys.argv[2], ttl=60)
print("ready", flush=True)
sys.stdin.readline()  # all start claiming together
got = []
while claims := work.claim("obs", "load", limit=3):
    for claim in claims:
        assert work.done(claim, units=1)
        got.append(claim.task)
print(json.dumps(got))
"""


def test_runners_claiming_at_once_take_every_task_exactly_once(pg_url: str) -> None:
    work = WorkTable(Journal(pg_url), owner="setup")
    assert work.add("obs", "load", [f"chunk#{i}" for i in range(300)]) == 300
    assert work.add("obs", "load", [f"chunk#{i}" for i in range(300)]) == 0  # a second runner adds nothing
    script = CLAIMER.format(repo=str(REPO))
    runners = [subprocess.Popen([sys.executable, "-c", script, pg_url, f"runner-{n}"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for n in range(4)]
    for runner in runners:  # every runner connected before any claims
        assert runner.stdout is not None and runner.stdout.readline().strip() == "ready"
    for runner in runners:
        assert runner.stdin is not None
        runner.stdin.write("go\n")
        runner.stdin.close()
    taken = [json.loads(r.stdout.read()) for r in runners if r.stdout is not None]
    for runner in runners:
        runner.wait(timeout=120)
    assert all(r.returncode == 0 for r in runners)
    everything = [task for part in taken for task in part]
    assert sorted(everything) == sorted(f"chunk#{i}" for i in range(300))  # each once: no gap, no overlap
    assert sum(1 for part in taken if part) >= 2  # the work was shared
    progress = work.progress("obs", "load")
    assert (progress.pending, progress.leased, progress.done, progress.units) == (0, 0, 300, 300)


def taken_over(journal: Journal, item: str, stage: str, task: str) -> tuple[WorkTable, Claim, WorkTable, Claim]:
    """Runner a claims the task and freezes past its 1 s lease; runner b claims it again: (a, a's claim, b, b's)."""
    a = WorkTable(journal, owner="a", ttl=1)
    b = WorkTable(journal, owner="b", ttl=30)
    a.add(item, stage, [task])
    (first,) = a.claim(item, stage)
    assert b.claim(item, stage) == []  # live lease
    assert a.progress(item, stage).leased == 1
    time.sleep(1.3)  # a froze past its lease (judged by the journal's clock)
    (second,) = b.claim(item, stage)
    return a, first, b, second


def test_an_expired_lease_is_claimed_again_and_the_old_holder_is_fenced_off(pg_url: str) -> None:
    a, first, b, second = taken_over(Journal(pg_url), "obs", "load", "chunk#0")
    assert (second.task, second.fence) == ("chunk#0", first.fence + 1)
    assert a.heartbeat([first]) == [first]  # a learns it lost the task
    assert not a.done(first, units=5)  # and cannot mark it done
    assert b.done(second, units=7)
    assert b.holder("obs", "load", "chunk#0") == ("b", 2, "done")
    assert b.progress("obs", "load").units == 7


def test_heartbeats_keep_a_lease_and_release_gives_the_task_back(pg_url: str) -> None:
    journal = Journal(pg_url)
    a = WorkTable(journal, owner="a", ttl=1)
    b = WorkTable(journal, owner="b", ttl=1)
    a.add("obs", "load", ["chunk#0"])
    (held,) = a.claim("obs", "load")
    for _ in range(5):
        time.sleep(0.4)
        assert a.heartbeat([held]) == []
        assert b.claim("obs", "load") == []
    a.release([held])
    (again,) = b.claim("obs", "load")
    assert again.fence == held.fence + 1


def test_a_task_failing_max_attempts_times_is_failed(pg_url: str) -> None:
    work = WorkTable(Journal(pg_url), owner="a", max_attempts=2)
    work.add("obs", "load", ["chunk#0"])
    for attempt in (1, 2):
        (claim,) = work.claim("obs", "load")
        assert work.failed(claim, f"attempt {attempt}: connection reset")
    assert work.claim("obs", "load") == []
    progress = work.progress("obs", "load")
    assert (progress.pending, progress.failed, progress.finished) == (0, 1, True)


def test_a_shard_claims_its_own_hash_bucket_first(pg_url: str) -> None:
    journal = Journal(pg_url)
    tasks = [f"letters/{i:05}" for i in range(64)]
    WorkTable(journal, owner="setup").add("docs", "copy", tasks)
    mine = [t for t in tasks if bucket_of(t) % 4 == 1]
    claims = WorkTable(journal, owner="a", shard=parse_shard("1/4")).claim("docs", "copy", limit=len(mine))
    assert sorted(c.task for c in claims) == sorted(mine)
    assert [bucket_of(c.task) for c in claims] == sorted(bucket_of(c.task) for c in claims)  # hash order


def test_workers_need_a_postgres_journal_and_a_good_shard(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="PostgreSQL journal"):
        WorkTable(Journal(f"sqlite:///{tmp_path / 'state.db'}"), owner="a")
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(UsageError, match="bad shard"):
            parse_shard(bad)


OPENER = """
import sys
sys.path.insert(0, {repo!r})
from migrate.state.claims import WorkTable
from migrate.state.journal import Journal
WorkTable(Journal(sys.argv[1]), owner=sys.argv[2]).add("obs", "load", ["chunk#0"])
"""


def test_runners_opening_a_fresh_journal_at_once_all_start(pg_cluster) -> None:
    url = pg_cluster.create_database()  # empty: every runner finds the journal's tables missing
    script = OPENER.format(repo=str(REPO))
    runners = [subprocess.Popen([sys.executable, "-c", script, url, f"r{n}"], stderr=subprocess.PIPE, text=True)
               for n in range(6)]
    errors = [r.communicate(timeout=60)[1] for r in runners]
    assert [r.returncode for r in runners] == [0] * 6, errors
    assert WorkTable(Journal(url), owner="check").progress("obs", "load").pending == 1


def test_stages_give_rates_and_an_eta_at_the_pace_so_far_computed_in_the_journal(pg_url: str) -> None:
    from migrate.state.claims import runners, stages

    journal = Journal(pg_url)
    work = WorkTable(journal, owner="w1", ttl=60)
    work.add("obs", "load", [f"observations#{i}" for i in range(8)])
    assert stages(journal, "obs") == [{"stage": "load", "tasks": 8, "done": 0, "left": 8, "failed": 0, "units": 0,
                                       "units_per_second": None, "eta_seconds": None}]  # no pace yet
    started = time.monotonic()
    for _ in range(2):
        [claim] = work.claim("obs", "load")
        time.sleep(0.5)
        assert work.done(claim, units=1000)
    elapsed = time.monotonic() - started
    [load] = stages(journal, "obs")
    assert (load["tasks"], load["done"], load["left"], load["units"]) == (8, 2, 6, 2000)
    assert 2000 / elapsed * 0.8 < load["units_per_second"] < 2000 / elapsed * 1.25
    assert elapsed / 2 * 6 * 0.8 < load["eta_seconds"] < elapsed / 2 * 6 * 1.5  # six more tasks at that pace
    [w1] = runners(journal, "obs")
    assert w1["owner"] == "w1" and w1["units"] == 2000 and w1["units_per_second"] == load["units_per_second"]
    while claims := work.claim("obs", "load", limit=8):
        for claim in claims:
            work.done(claim, units=10)
    assert stages(journal, "obs")[0]["eta_seconds"] is None  # nothing left


def test_a_parts_record_goes_in_with_its_done_mark_or_not_at_all(pg_url: str) -> None:
    journal = Journal(pg_url)
    a, first, b, second = taken_over(journal, "letters", "sync", "copy:x")  # b finishes it first
    assert b.done(second, 10, [("letters", "sync-part", "c1/copy:x", "done", 10, {"by": "b", "deletes": []})])
    # a resumes with its own, older findings (a delete proposal b's listing no longer makes): refused, not written
    assert not a.done(first, 9, [("letters", "sync-part", "c1/copy:x", "done", 9, {"by": "a", "deletes": ["x/1"]}),
                                 ("letters", "sync-part", "c1/copy:y", "done", 1, {"by": "a"})])
    records = journal.chunks("letters", "sync-part")
    assert records == {"c1/copy:x": ("done", 10, {"by": "b", "deletes": []})}
