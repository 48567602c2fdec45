"""`migrate worker`: N stateless runners sharing one plan's load through a PostgreSQL journal. Real processes,
real PostgreSQL, kill -9 and SIGSTOP of a runner holding a chunk whose target writes are not committed; both
sides compared outside the tool (md5 of COPY output)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_db_postgres import dsn, pg
from test_direction import table_md5

from helpers import cli_process
from migrate.databases.keyranges import decode_ranges
from migrate.databases.load import chunk_lock

pytestmark = pytest.mark.postgres

ROWS = 120_000


def worker_plan(folder: Path, source: str, target: str, journal: str, chunk_rows: int = 10_000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: scale
        state: "{journal}"
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - {{name: obs, source: src, target: dst, tables: [observations], chunk_rows: {chunk_rows}}}
        """), encoding="utf-8")
    return path


def fill(url: str) -> None:
    pg(url, "CREATE TABLE observations (id bigint PRIMARY KEY, patient int NOT NULL, code text, value numeric, "
            "note text)")
    pg(url, f"INSERT INTO observations SELECT g, g % 997, 'LOINC-' || g % 400, g / 7.0, repeat('note ', 40) "
            f"FROM generate_series(1, {ROWS}) g")


def start_workers(plan: Path, count: int, lease: str = "3s", until: str = "load") -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "migrate", "worker", str(plan), "--shard", f"{i}/{count}",
                              "--lease", lease, "--until", until, "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for i in range(count)]


def loaded_by_workers(pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path, chunk_rows: int) -> tuple[str, Path]:
    """The observations table loaded by two workers; (journal URL, plan)."""
    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=chunk_rows)
    assert [outcome(w)[0] for w in start_workers(plan, 2)] == [0, 0]
    return journal, plan


def synced_in_all(journal: str) -> tuple[int, int, int]:
    """(created, updated, deleted) summed over every sync cycle the journal records as done."""
    details = [json.loads(d) for (d,) in pg(journal, "SELECT detail FROM stage_log WHERE stage = 'sync' AND "
                                                     "status = 'done'")]
    return tuple(sum(d.get(k, 0) for d in details) for k in ("created", "updated", "deleted"))  # type: ignore


def tasks(journal: str) -> list[tuple]:
    if pg(journal, "SELECT to_regclass('tasks')") == [(None,)]:  # no worker has made the work table yet
        return []
    return pg(journal, "SELECT task, status, owner, fence FROM tasks WHERE stage = 'load' AND spec IS NULL "
                       "ORDER BY task")  # the chunks (not the tasks planning a table's ranges)


def held_in_flight(journal: str, target: str) -> tuple[int, str] | None:
    """(pid, task) of a worker holding a chunk's lock on the target right now: its copy is not committed."""
    locks = {(int(c) << 32) | int(o) for c, o in pg(target, "SELECT classid::bigint, objid::bigint FROM pg_locks "
                                                            "WHERE locktype = 'advisory' AND granted")}
    for task, status, owner, _ in tasks(journal):
        if "#" not in task:  # a blob item's task: no lock on a database target
            continue
        label, index = task.rsplit("#", 1)
        if status == "leased" and chunk_lock(label, int(index)) & 0xFFFFFFFFFFFFFFFF in locks:
            return int(owner.rsplit(":", 1)[1]), task
    return None


def stop_holding(journal: str, probe, stage: str = "load") -> tuple[int, str]:
    """SIGSTOP the worker `probe()` finds holding a task of `stage` and return (pid, task) once it is stopped while
    still holding it: it may finish that task between the look and the stop, and is then let go and looked at
    again."""
    while True:
        pid, task = poll(probe)
        os.kill(pid, signal.SIGSTOP)
        if pg(journal, "SELECT status, owner FROM tasks WHERE task = %s AND stage = %s", (task, stage)) == [
                ("leased", f"{os.uname().nodename}:{pid}")]:
            return pid, task
        os.kill(pid, signal.SIGCONT)


def poll(probe, timeout: float = 60, interval: float = 0.005):
    """The first truthy value `probe()` returns (fails the test after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while not (found := probe()):
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(interval)
    return found


def outcome(proc: subprocess.Popen) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=180)
    return proc.returncode, (json.loads(out) if out.strip() else {"stderr": err})


def test_four_workers_one_killed_mid_chunk_load_every_row_once(pg_cluster, pg_url: str, pg_url2: str,
                                                               tmp_path: Path) -> None:
    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal)
    workers = start_workers(plan, 4)
    pid, task = stop_holding(journal, lambda: held_in_flight(journal, pg_url2))
    os.kill(pid, signal.SIGKILL)  # its target transaction holds rows of `task`, uncommitted
    victim = next(w for w in workers if w.pid == pid)
    victim.wait()
    results = [outcome(w) for w in workers if w is not victim]
    assert all(code == 0 for code, _ in results), results
    # every row once: equal to the source outside the tool, and the primary key (built after the last chunk)
    assert table_md5(dsn(pg_url), "observations") == table_md5(dsn(pg_url2), "observations")
    assert pg(pg_url2, "SELECT count(*), count(DISTINCT id) FROM observations") == [(ROWS, ROWS)]
    assert pg(pg_url2, "SELECT count(*) FROM pg_indexes WHERE indexname = 'observations_pkey'") == [(1,)]
    # each chunk done once, the killed one by a later claim; the chunks tile the key space
    final = {t: (status, owner, fence) for t, status, owner, fence in tasks(journal)}
    ranges = load_ranges(journal)
    assert ranges[0].lo is None and ranges[-1].hi is None  # the ranges tile the key space: no gap, no overlap
    assert all(a.hi == b.lo for a, b in zip(ranges, ranges[1:], strict=False))
    assert sorted(final) == sorted(f"observations#{i}" for i in range(len(ranges)))
    assert all(status == "done" for status, _, _ in final.values())
    assert final[task][2] >= 2 and final[task][1] != f"{os.uname().nodename}:{pid}"
    reclaimed = pg(journal, "SELECT message FROM events WHERE kind = 'worker' AND message LIKE %s", (f"{task}:%",))
    assert reclaimed and "claimed again (fence" in reclaimed[0][0]
    done_by = [r["result"]["items"][0] for _, r in results]
    by_victim = sum(1 for _, owner, _ in final.values() if owner == f"{os.uname().nodename}:{pid}")
    assert sum(d["done"] for d in done_by) + by_victim >= len(final)  # (chunks it finished before the kill)
    assert sum(d["finished_stage"] for d in done_by) == 1
    verify = cli_process("verify", str(plan), "--json")
    assert verify.returncode == 0, verify.stdout
    status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]["items"][0]
    assert status["load_chunks_done"] == status["load_chunks_total"] == len(ranges)
    by_runner = {w["owner"]: w for w in status["workers"]}  # computed in SQL, per runner
    # the chunks, the task that planned them and the finishing task
    assert sum(w["done"] for w in by_runner.values()) == len(ranges) + 2
    assert pg(journal, "SELECT status, units FROM tasks WHERE task = 'observations#ranges'") == [("done", 0)]
    assert sum(w["units"] for w in by_runner.values()) == ROWS  # (a task counts for its latest claimer only)


def test_a_frozen_lease_holder_resumed_after_a_take_over_is_refused_and_nothing_is_duplicated(
        pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=40_000)
    first = start_workers(plan, 1)[0]
    pid, task = stop_holding(journal, lambda: held_in_flight(journal, pg_url2))  # frozen mid-chunk, holding its lock
    try:
        time.sleep(4)  # past its 3 s lease
        second = start_workers(plan, 1)[0]
        # the second claims the chunk (fence 2) and waits on the target lock the frozen one holds
        poll(lambda: dict((t, f) for t, _, _, f in tasks(journal)).get(task, 0) >= 2, timeout=30)
    finally:
        os.kill(pid, signal.SIGCONT)
    code_first, body_first = outcome(first)
    code_second, body_second = outcome(second)
    assert code_second == 0, body_second
    assert code_first == 0, body_first  # it finished other chunks, but not this one
    refused = body_first["result"]["items"][0]["refused"]
    assert any(m.startswith(f"{task}: done-mark refused: this claim's fence 1 was superseded by fence 2")
               for m in refused), refused
    assert table_md5(dsn(pg_url), "observations") == table_md5(dsn(pg_url2), "observations")
    assert pg(pg_url2, "SELECT count(*), count(DISTINCT id) FROM observations") == [(ROWS, ROWS)]


def test_a_worker_needs_a_postgres_journal(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    plan = worker_plan(tmp_path, pg_url, pg_url2, f"sqlite:///{tmp_path / 'state.db'}")
    done = cli_process("worker", str(plan))
    assert done.returncode == 2 and "PostgreSQL journal" in done.stderr
    bad = cli_process("worker", str(plan), "--shard", "4/4")
    assert bad.returncode == 2 and "bad shard" in bad.stderr


def test_sigterm_gives_the_task_back_and_exits_130(pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=40_000)
    worker = start_workers(plan, 1, lease="60s")[0]
    pid, task = stop_holding(journal, lambda: held_in_flight(journal, pg_url2))  # held still while cutover looks,
    # then told to stop before it can run on
    try:
        refused = json.loads(cli_process("cutover", "--check", str(plan), "--json").stdout)["result"]["refused"]
    finally:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    assert any(r.startswith("workers: 1 task(s) leased by ") and f":{pid}" in r for r in refused), refused
    assert worker.wait(timeout=30) == 130
    state = {t: (status, fence) for t, status, _, fence in tasks(journal)}
    # given back at once, never left to its 60 s lease (or finished: SIGCONT can let a COPY already sent
    # complete before the stop is seen, and the chunk is then done, not half-done)
    assert state[task][0] in ("pending", "done"), state[task]
    rest = start_workers(plan, 1)[0]
    assert outcome(rest)[0] == 0
    assert table_md5(dsn(pg_url), "observations") == table_md5(dsn(pg_url2), "observations")


def test_a_defect_in_a_task_gives_it_back_at_once_and_the_next_worker_finishes(
        pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception (a bug, not a MigrateError) stops the worker, but its task is not left leased
    until the lease runs out: it is pending again at once, the attempt counted, the error on record."""
    from migrate.databases.engine import DatabaseEngine
    from migrate.stages.worker import run_worker

    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=40_000)
    real = DatabaseEngine.load_task

    def broken(self, ctx, task, spec=None):  # noqa: ANN001, ANN202
        raise RuntimeError(f"bug while loading {task}")

    monkeypatch.setattr(DatabaseEngine, "load_task", broken)
    with pytest.raises(RuntimeError, match="bug while loading"):
        run_worker(plan, shard=(0, 1), until="load", ttl=600)  # a lease that would outlive the test
    [(task, status, attempts, lease_until, error)] = pg(
        journal, "SELECT task, status, attempts, lease_until, error FROM tasks WHERE stage = 'load' AND attempts > 0")
    assert (status, attempts, lease_until) == ("pending", 1, None)
    assert error == f"unexpected RuntimeError: bug while loading {task}"
    monkeypatch.setattr(DatabaseEngine, "load_task", real)
    started = time.monotonic()
    assert not run_worker(plan, shard=(0, 1), until="load", ttl=600).failed
    assert time.monotonic() - started < 60  # did not wait for the first worker's lease
    assert table_md5(dsn(pg_url), "observations") == table_md5(dsn(pg_url2), "observations")


def load_ranges(journal: str) -> list:
    """The table's load key ranges as the journal holds them."""
    [(value,)] = pg(journal, "SELECT value FROM item_state WHERE key = 'ranges:observations'")
    return decode_ranges(json.loads(value))


def verify_tasks(journal: str) -> list[tuple]:
    return pg(journal, "SELECT stage, task, status, fence FROM tasks WHERE stage IN ('verify', 'verify:finish') "
                       "ORDER BY stage, task")


def test_workers_verify_in_parts_one_verification_dated_by_its_earliest_part(pg_cluster, pg_url: str, pg_url2: str,
                                                                             tmp_path: Path) -> None:
    """Two workers load, then verify in parts (one per load key range): one verification, complete when every
    part is, with the rows of all parts and the date of the earliest; the next run finds it current."""
    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=20_000)
    workers = start_workers(plan, 2, until="verify")
    results = [outcome(w) for w in workers]
    assert [code for code, _ in results] == [0, 0], [(body.get("error"), body.get("result")) for _, body in results]
    ranges = load_ranges(journal)
    parts = verify_tasks(journal)
    assert sorted(task for stage, task, _, _ in parts if stage == "verify") == sorted(
        f"observations#{i}" for i in range(len(ranges)))
    [(verification,)] = [(task,) for stage, task, _, _ in parts if stage == "verify:finish"]
    assert all(status == "done" for _, _, status, _ in parts)
    [(at, clean, checked, differences, detail)] = pg(
        journal, "SELECT at, clean, checked, differences, detail FROM verifications")
    assert (clean, checked, differences) == (True, ROWS, 0)
    detail = json.loads(detail)
    assert detail["verification"] == verification and detail["parts"] == len(ranges)
    assert detail["tables"]["observations"]["rows"] == ROWS
    starts = [json.loads(v)["started"] for (v,) in pg(journal, "SELECT detail FROM chunks WHERE chunk LIKE %s",
                                                      (f"{detail['verification']}/%",))]
    assert len(starts) == len(ranges) and at.isoformat() == min(starts)
    assert all(body["result"]["items"][0]["verification"] == f"clean, {ROWS:,} checked" for _, body in results)
    status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]["items"][0]["workers"]
    assert sum(w["verified"] for w in status) == ROWS and sum(w["units"] for w in status) == ROWS
    # current: a second worker run verifies nothing again
    code, body = outcome(start_workers(plan, 1, until="verify")[0])
    assert code == 0 and body["result"]["items"][0]["claimed"] == 0
    assert len(pg(journal, "SELECT id FROM verifications")) == 1



def test_a_verification_in_parts_finds_what_an_outside_comparison_finds_and_a_rerun_verifies_again(
        pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    journal, plan = loaded_by_workers(pg_cluster, pg_url, pg_url2, tmp_path, chunk_rows=20_000)
    # two rows made different on the target, in different parts, behind the tool's back
    pg(pg_url2, "UPDATE observations SET note = 'changed' WHERE id = 30001; DELETE FROM observations WHERE id = 90001")
    source = dict(pg(pg_url, "SELECT id, md5(observations::text) FROM observations"))
    target = dict(pg(pg_url2, "SELECT id, md5(observations::text) FROM observations"))
    outside = sorted(k for k in source if source[k] != target.get(k))  # compared outside the tool
    assert outside == [30001, 90001]
    results = [outcome(w) for w in start_workers(plan, 2, until="verify")]
    assert [code for code, _ in results] == [3, 3], results
    [(clean, differences, detail)] = pg(journal, "SELECT clean, differences, detail FROM verifications")
    found = json.loads(detail)["differences"]
    assert (clean, differences) == (False, 2)
    assert sorted((d["kind"], d["key"]) for d in found) == [
        ("different", "observations:id=30001"), ("missing_on_target", "observations:id=90001")]
    # not clean, so not current: a rerun makes a new verification (and finds the same)
    assert outcome(start_workers(plan, 1, until="verify")[0])[0] == 3
    ids = [json.loads(d)["verification"] for (d,) in pg(journal, "SELECT detail FROM verifications ORDER BY id")]
    assert len(ids) == 2 and ids[0] != ids[1]
    # 1,200 more in one part: a part lists 1,000 in full, and the verification still counts every one
    pg(pg_url2, "UPDATE observations SET note = 'bulk' WHERE id BETWEEN 40001 AND 41200")
    target = dict(pg(pg_url2, "SELECT id, md5(observations::text) FROM observations"))
    outside = [k for k in source if source[k] != target.get(k)]
    assert len(outside) == 1202
    result = outcome(start_workers(plan, 1, until="verify")[0])
    assert result[0] == 3 and "1202 difference(s)" in result[1]["result"]["differences"][0], result
    [(differences, detail)] = pg(journal, "SELECT differences, detail FROM verifications ORDER BY id DESC LIMIT 1")
    assert differences == len(outside) and len(json.loads(detail)["differences"]) == 1000


def test_run_with_workers_loads_and_verifies_through_them_once(pg_cluster, pg_url: str, pg_url2: str,
                                                               tmp_path: Path) -> None:
    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=30_000)
    done = cli_process("run", str(plan), "--workers", "2", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    body = json.loads(done.stdout)
    [item] = body["result"]["items"]
    assert "verify" in item["skipped"]  # the workers' verification is current: not repeated here
    assert table_md5(dsn(pg_url), "observations") == table_md5(dsn(pg_url2), "observations")
    ranges = load_ranges(journal)
    [(clean, checked, detail)] = pg(journal, "SELECT clean, checked, detail FROM verifications")
    assert (clean, checked, json.loads(detail)["parts"]) == (True, ROWS, len(ranges))
    assert pg(journal, "SELECT count(*) FROM tasks WHERE stage = 'verify' AND status = 'done'") == [(len(ranges),)]


def test_a_task_failed_too_often_fails_the_worker_and_the_next_run_retries_it(
        pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.databases.engine import DatabaseEngine
    from migrate.errors import EndpointError
    from migrate.stages.worker import run_worker

    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=40_000)
    real = DatabaseEngine.load_task

    def flaky(self, ctx, task, spec=None):  # noqa: ANN001, ANN202
        if task == "observations#1":
            raise EndpointError("dst: connection reset (simulated)")
        return real(self, ctx, task, spec)

    monkeypatch.setattr(DatabaseEngine, "load_task", flaky)
    first = run_worker(plan, shard=(0, 1), until="load", ttl=600)
    assert first.exit_code == 1 and first.failed == ["obs: 1 load task(s) failed: dst: connection reset (simulated)"]
    assert pg(journal, "SELECT status, attempts FROM tasks WHERE task = 'observations#1'") == [("failed", 3)]
    monkeypatch.setattr(DatabaseEngine, "load_task", real)
    second = run_worker(plan, shard=(0, 1), until="load", ttl=600)
    assert second.exit_code == 0, second.failed
    assert pg(journal, "SELECT status, attempts FROM tasks WHERE task = 'observations#1'") == [("done", 1)]
    assert table_md5(dsn(pg_url), "observations") == table_md5(dsn(pg_url2), "observations")


def test_workers_plan_each_tables_ranges_in_a_task_of_its_own(pg_cluster, pg_url: str, pg_url2: str,
                                                             tmp_path: Path) -> None:
    """Key ranges are planned by claimable tasks, one per table (tables side by side), each replaced by its
    table's chunks in the transaction that marks it done; the first plan journaled is the one kept."""
    names = ["wards", "beds", "visits"]
    for number, name in enumerate(names):
        pg(pg_url, f"CREATE TABLE {name} (id bigint PRIMARY KEY, v text); INSERT INTO {name} SELECT g, repeat('x', "
                   f"g % 50) FROM generate_series(1, {20_000 * (number + 1)}) g")
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=7_000)
    plan.write_text(plan.read_text().replace("tables: [observations]", "tables: [wards, beds, visits]"))
    assert [outcome(w)[0] for w in start_workers(plan, 2)] == [0, 0]
    planning = pg(journal, "SELECT task, status, fence, units FROM tasks WHERE spec = 'ranges' ORDER BY task")
    assert planning == [(f"{name}#ranges", "done", 1, 0) for name in sorted(names)]
    for name in names:
        [(value,)] = pg(journal, "SELECT value FROM item_state WHERE key = %s", (f"ranges:{name}",))
        ranges = decode_ranges(json.loads(value))
        chunks = pg(journal, "SELECT task FROM tasks WHERE spec IS NULL AND task LIKE %s AND status = 'done'",
                    (f"{name}#%",))
        assert sorted(t for (t,) in chunks) == sorted(f"{name}#{i}" for i in range(len(ranges)))
        assert table_md5(dsn(pg_url), name) == table_md5(dsn(pg_url2), name)


def test_of_runners_journaling_one_value_at_once_the_first_wins(pg_cluster) -> None:
    from migrate.state.journal import Journal

    url = pg_cluster.create_database()
    first, second = Journal(url), Journal(url)
    try:
        assert first.put_once("obs", "ranges:t", [[None, 5], [5, None]]) == [[None, 5], [5, None]]
        assert second.put_once("obs", "ranges:t", [[None, 7], [7, None]]) == [[None, 5], [5, None]]
        assert second.get("obs", "ranges:t") == [[None, 5], [5, None]]
    finally:
        first.close()
        second.close()


def test_a_worker_killed_holding_a_verify_part_is_replaced_and_the_verification_stays_whole(
        pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    journal, plan = loaded_by_workers(pg_cluster, pg_url, pg_url2, tmp_path, chunk_rows=10_000)
    # a verify rate limit keeps each part's lease held for about half a second after its comparison
    plan.write_text(plan.read_text().replace("chunk_rows: 10000}", "chunk_rows: 10000, throttle: "
                                             "{verify_rows_per_second: 20000}}"))
    workers = start_workers(plan, 2, until="verify")

    def leased_part() -> tuple[int, str] | None:
        rows = pg(journal, "SELECT owner, task FROM tasks WHERE stage = 'verify' AND status = 'leased'")
        return (int(rows[0][0].rsplit(":", 1)[1]), rows[0][1]) if rows else None

    pid, task = stop_holding(journal, leased_part, stage="verify")
    os.kill(pid, signal.SIGKILL)
    victim = next(w for w in workers if w.pid == pid)
    victim.wait()
    [(code, body)] = [outcome(w) for w in workers if w is not victim]
    assert code == 0, body
    ranges = load_ranges(journal)
    assert pg(journal, "SELECT status, fence >= 2 FROM tasks WHERE stage = 'verify' AND task = %s", (task,)) == [
        ("done", True)]
    assert pg(journal, "SELECT count(*) FROM tasks WHERE stage = 'verify' AND status = 'done'") == [(len(ranges),)]
    [(clean, checked, detail)] = pg(journal, "SELECT clean, checked, detail FROM verifications")
    assert (clean, checked, json.loads(detail)["parts"]) == (True, ROWS, len(ranges))


def test_a_planner_frozen_past_its_lease_keeps_the_plan_of_the_runner_that_took_over(
        pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker A claims a table's planning task and stalls (no heartbeat) while planning. Its lease runs out;
    worker B plans the table, loads every chunk and finishes. A then ends its own, different plan: the plan B
    journaled is the one kept, A's replacement chunks are refused, and every row is on the target once."""
    from migrate.databases import load as loading
    from migrate.stages.worker import Worker, run_worker

    fill(pg_url)
    journal = pg_cluster.create_database()
    plan = worker_plan(tmp_path, pg_url, pg_url2, journal, chunk_rows=20_000)
    real = loading.new_ranges
    planned_by_a: list = []

    def stalled(pair, chunk_rows):  # noqa: ANN001, ANN202
        assert outcome(start_workers(plan, 1)[0])[0] == 0  # B claims the task once A's 3 s lease is out
        planned_by_a.extend(real(pair, chunk_rows // 2))  # A's plan, finer than B's
        return planned_by_a

    monkeypatch.setattr(Worker, "_heartbeat", lambda self: None)  # A's lease is never renewed
    monkeypatch.setattr(loading, "new_ranges", stalled)
    result = run_worker(plan, shard=(0, 1), until="load", ttl=3)
    assert result.exit_code == 0
    [a] = result.items
    assert len(a.refused) == 1 and "observations#ranges" in a.refused[0]
    ranges = load_ranges(journal)
    assert len(ranges) < len(planned_by_a)  # B's plan is the one journaled, not A's
    assert sorted(t for t, status, _, _ in tasks(journal) if status == "done") == sorted(
        f"observations#{i}" for i in range(len(ranges)))  # no chunk of A's plan was added
    assert pg(journal, "SELECT fence FROM tasks WHERE task = 'observations#ranges'") == [(2,)]
    assert table_md5(dsn(pg_url), "observations") == table_md5(dsn(pg_url2), "observations")
    assert pg(pg_url2, "SELECT count(*), count(DISTINCT id) FROM observations") == [(ROWS, ROWS)]



def sync_workers(plan: Path, count: int, *extra: str) -> list[tuple[int, dict]]:
    return [outcome(w) for w in [subprocess.Popen([sys.executable, "-m", "migrate", "worker", str(plan), "--sync",
                                                   "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                  text=True) for _ in range(count)]]


def test_workers_sync_a_table_in_parts_and_decide_its_deletes_on_the_totals(pg_cluster, pg_url: str, pg_url2: str,
                                                                            tmp_path: Path) -> None:
    journal, plan = loaded_by_workers(pg_cluster, pg_url, pg_url2, tmp_path, chunk_rows=20_000)
    plan.write_text(plan.read_text().replace("chunk_rows: 20000}", "chunk_rows: 20000, delete: true}"))
    pg(pg_url, "UPDATE observations SET value = value + 1 WHERE id IN (7, 70000, 119999)")
    pg(pg_url, "DELETE FROM observations WHERE id IN (3, 60000)")
    pg(pg_url, "INSERT INTO observations SELECT g, 1, 'new', 1.5, 'n' FROM generate_series(200001, 200004) g")
    results = sync_workers(plan, 2)
    assert [code for code, _ in results] == [0, 0], results
    assert table_md5(dsn(pg_url2), "observations") == table_md5(dsn(pg_url), "observations")
    # one part per load key range (no watermark column: compared in full), each done once; then the closing task
    chunks = pg(journal, "SELECT count(*) FROM tasks WHERE stage = 'load' AND spec IS NULL")[0][0]
    assert pg(journal, "SELECT count(*), min(status), max(status) FROM tasks WHERE stage = 'sync'") == [
        (chunks, "done", "done")] and chunks > 1
    assert pg(journal, "SELECT count(*), min(status) FROM tasks WHERE stage = 'sync:finish'") == [(1, "done")]
    assert synced_in_all(journal) == (4, 3, 2)
    # a whole range gone from the source (20,000 rows, one part's all): a sixth of the table, so the guard on
    # the table's totals lets it through, as it would one runner's cycle
    pg(pg_url, "DELETE FROM observations WHERE id BETWEEN 20001 AND 40000")
    assert [code for code, _ in sync_workers(plan, 2)] == [0, 0]
    assert table_md5(dsn(pg_url2), "observations") == table_md5(dsn(pg_url), "observations")
    # most of the table gone: refused on the totals, nothing deleted, the workers say why and exit 1
    pg(pg_url, "DELETE FROM observations WHERE id > 40000")
    held = pg(pg_url2, "SELECT count(*) FROM observations")
    results = sync_workers(plan, 2)
    assert [code for code, _ in results] == [1, 1], results
    assert any("mass delete refused" in f for _, r in results for f in r["result"]["failed"]), results
    assert pg(pg_url2, "SELECT count(*) FROM observations") == held
    assert [code for code, _ in sync_workers(plan, 2, "--allow-mass-delete")] == [0, 0]
    assert table_md5(dsn(pg_url2), "observations") == table_md5(dsn(pg_url), "observations")
    usage = subprocess.run([sys.executable, "-m", "migrate", "worker", str(plan), "--until", "sync"],
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "--sync" in usage.stderr, usage.stderr


def test_a_worker_killed_holding_a_table_sync_part_is_replaced_and_the_rows_match_outside(
        pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    journal, plan = loaded_by_workers(pg_cluster, pg_url, pg_url2, tmp_path, chunk_rows=20_000)
    plan.write_text(plan.read_text().replace("chunk_rows: 20000}", "chunk_rows: 20000, delete: true}"))
    pg(pg_url, "UPDATE observations SET value = value + 1, note = 'changed'")  # every part has rows to merge
    pg(pg_url, "DELETE FROM observations WHERE id % 1000 = 0")
    workers = [subprocess.Popen([sys.executable, "-m", "migrate", "worker", str(plan), "--shard", f"{i}/2", "--sync",
                                 "--lease", "3s", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]

    def merging() -> tuple[int, str] | None:  # a worker holding a part once others are done: the cycle under way
        rows = pg(journal, "SELECT task, status, owner FROM tasks WHERE stage = 'sync'")
        held = [(int(owner.rsplit(":", 1)[1]), task) for task, status, owner in rows if status == "leased"]
        return held[0] if held and any(status == "done" for _, status, _ in rows) else None

    pid, task = stop_holding(journal, merging, stage="sync")
    os.kill(pid, signal.SIGKILL)
    results = [outcome(w) for w in workers]
    assert sorted(code for code, _ in results) == [-signal.SIGKILL, 0], results
    assert table_md5(dsn(pg_url2), "observations") == table_md5(dsn(pg_url), "observations")  # outside the tool
    assert pg(pg_url2, "SELECT count(*), count(DISTINCT id) FROM observations") == [(ROWS - 120, ROWS - 120)]
    [(status, fence)] = pg(journal, "SELECT status, fence FROM tasks WHERE stage = 'sync' AND task = %s", (task,))
    assert status == "done" and fence >= 2  # claimed again after the killed worker's lease expired
    assert synced_in_all(journal) == (0, ROWS - 120, 120)
