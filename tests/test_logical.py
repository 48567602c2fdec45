"""Change capture from the PostgreSQL log (logical decoding, pgoutput): every change reaches the target, compared
outside the tool (md5 of the sorted COPY output of both sides), including updates that never touch a watermark,
deletes, truncates, TOASTed values, a transaction spanning the load and a runner killed between apply and confirm."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest
from test_db_postgres import pg
from test_direction import dsn_of, table_md5

from helpers import build_tree, cli_process

pytestmark = pytest.mark.postgres

SCHEMA = """
CREATE TABLE patients (id int PRIMARY KEY, name text NOT NULL, notes text, updated_at timestamptz DEFAULT now());
CREATE TABLE letters (id bigint PRIMARY KEY, patient_id int REFERENCES patients(id), body text);
INSERT INTO patients SELECT g, 'patient ' || g, NULL, now() - interval '1 day' FROM generate_series(1, 2000) g;
INSERT INTO letters SELECT g, 1 + g % 2000, 'letter ' || g FROM generate_series(1, 3000) g;
"""
BIG = "(SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 400))"  # 12.8 kB of hex: TOASTed


def md5_of(url: str, table: str) -> str:
    rows = pg(url, f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY id), '')) FROM {table} t")
    return str(rows[0][0])


def same(source: str, target: str) -> None:
    for table in ("patients", "letters"):
        assert md5_of(source, table) == md5_of(target, table), table


def logical_plan(folder: Path, source: str, target: str, tables: str = "['*']") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: capture
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - {{name: epr, source: src, target: dst, tables: {tables}, incremental: {{method: logical}},
             chunk_rows: 500}}
        """), encoding="utf-8")
    return path


def slot(url: str) -> tuple[str, int] | None:
    rows = pg(url, "SELECT confirmed_flush_lsn::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                   "FROM pg_replication_slots WHERE slot_name = 'migrate_capture_epr'")
    return (rows[0][0], int(rows[0][1])) if rows else None


def sync(plan: Path, *extra: str) -> dict:
    done = cli_process("sync", str(plan), "--json", *extra)
    body = json.loads(done.stdout)
    assert done.returncode == 0, body["error"]
    return body["result"]["results"][0]


@pytest.fixture
def loaded(tmp_path: Path, pg_url: str, pg_url2: str) -> tuple[Path, str, str]:
    pg(pg_url, SCHEMA)
    plan = logical_plan(tmp_path, pg_url, pg_url2)
    ran = cli_process("run", str(plan))
    assert ran.returncode == 0, ran.stderr
    assert slot(pg_url) is not None  # made before the load; kept until finish or abandon
    yield plan, pg_url, pg_url2
    cli_process("abandon", str(plan), "--yes")


def test_inserts_updates_without_watermark_deletes_and_toasted_values(loaded: tuple[Path, str, str]) -> None:
    plan, source, target = loaded
    pg(source, "UPDATE patients SET name = name || ' (corrected)' WHERE id <= 300")  # updated_at untouched
    pg(source, f"INSERT INTO patients SELECT g, 'new ' || g, {BIG}, now() FROM generate_series(5001, 5100) g")
    pg(source, "DELETE FROM letters WHERE id % 10 = 0")
    pg(source, "INSERT INTO letters VALUES (9001, 5001, 'to a new patient')")
    cycle = sync(plan)
    assert (cycle["created"], cycle["updated"], cycle["deleted"]) == (101, 300, 300)
    same(source, target)
    # an update that leaves the TOASTed column out of the change stream: the column is fetched, not lost
    pg(source, "UPDATE patients SET name = 'renamed' WHERE id BETWEEN 5001 AND 5010")
    assert sync(plan)["updated"] == 10
    same(source, target)
    assert pg(target, "SELECT length(notes) FROM patients WHERE id = 5001")[0][0] == 12800
    # and the slot moved past what was applied: the next cycle finds nothing
    quiet = sync(plan)
    assert (quiet["created"], quiet["updated"], quiet["deleted"]) == (0, 0, 0)


def test_truncate_obeys_the_mass_delete_guard(loaded: tuple[Path, str, str]) -> None:
    plan, source, target = loaded
    pg(source, "TRUNCATE letters")
    pg(source, "INSERT INTO letters VALUES (1, 1, 'after the truncate')")
    refused = cli_process("sync", str(plan))
    assert refused.returncode == 1 and "mass delete refused" in refused.stderr
    assert pg(target, "SELECT count(*) FROM letters")[0][0] == 3000  # nothing deleted
    assert sync(plan, "--allow-mass-delete")["deleted"] == 3000
    same(source, target)
    assert pg(target, "SELECT body FROM letters")[0][0] == "after the truncate"


def test_a_transaction_spanning_the_load_is_not_missed(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    """A transaction that begins after the slot exists and commits after the load finished: the load cannot
    see its rows (uncommitted), the slot can."""
    pg(pg_url, SCHEMA)
    pg(pg_url, "INSERT INTO patients SELECT g, 'bulk ' || g, NULL, now() FROM generate_series(10001, 60000) g")
    plan = logical_plan(tmp_path, pg_url, pg_url2)
    runner = subprocess.Popen([sys.executable, "-m", "migrate", "run", str(plan)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while slot(pg_url) is None:
        assert time.monotonic() < deadline and runner.poll() is None, runner.communicate()
        time.sleep(0.02)
    with psycopg.connect(dsn_of(pg_url)) as conn:  # one transaction, open across the load
        conn.execute("UPDATE patients SET name = 'in the long transaction' WHERE id BETWEEN 1 AND 50")
        conn.execute("INSERT INTO patients VALUES (70000, 'inserted during the load', NULL, now())")
        conn.execute("DELETE FROM letters WHERE id <= 20")
        out, err = runner.communicate(timeout=120)
        assert runner.returncode == 0, err
        conn.commit()
    try:
        assert pg(pg_url2, "SELECT count(*) FROM patients WHERE id = 70000")[0][0] == 0  # the load missed it
        sync(plan)
        same(pg_url, pg_url2)
    finally:
        cli_process("abandon", str(plan), "--yes")


KILL_AT_CONFIRM = """
import os, signal, sys
from migrate.databases import logical
def confirm(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # the target has committed; the slot has not heard
logical.confirm = confirm
from migrate.cli import main
sys.argv = ["migrate", "sync", sys.argv[1]]
main()
"""


def test_kill_9_between_apply_and_confirm_replays_and_never_skips(loaded: tuple[Path, str, str]) -> None:
    plan, source, target = loaded
    before = slot(source)
    pg(source, "UPDATE patients SET notes = 'first' WHERE id <= 100")
    pg(source, "DELETE FROM letters WHERE id > 2900")
    killed = subprocess.run([sys.executable, "-c", KILL_AT_CONFIRM, str(plan)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr
    same(source, target)  # applied...
    assert slot(source)[0] == before[0]  # ...but not confirmed: the slot will replay it
    pg(source, "UPDATE patients SET notes = 'second' WHERE id <= 10")  # and more arrives meanwhile
    replayed = sync(plan)
    assert replayed["updated"] == 100 and replayed["deleted"] == 100  # the same changes again, converging
    same(source, target)
    assert slot(source)[0] != before[0]


def test_a_table_without_primary_key_is_refused_until_replica_identity_full(tmp_path: Path, pg_url: str,
                                                                           pg_url2: str) -> None:
    pg(pg_url, "CREATE TABLE readings (id int NOT NULL, ward text, value numeric);"
               "INSERT INTO readings SELECT g, 'ward ' || g % 7, g / 3.0 FROM generate_series(1, 500) g")
    plan = logical_plan(tmp_path, pg_url, pg_url2, tables="[{name: public.readings, key: [id]}]")
    refused = cli_process("run", str(plan))
    assert refused.returncode == 1
    assert 'public.readings has no primary key' in refused.stderr
    assert 'ALTER TABLE "public"."readings" REPLICA IDENTITY FULL;' in refused.stderr
    assert slot(pg_url) is None  # refused in preflight: nothing made on the source
    pg(pg_url, 'ALTER TABLE "public"."readings" REPLICA IDENTITY FULL')
    try:
        assert cli_process("run", str(plan)).returncode == 0
        pg(pg_url, "DELETE FROM readings WHERE id <= 5; UPDATE readings SET value = 0 WHERE id = 6")
        cycle = sync(plan)
        assert (cycle["updated"], cycle["deleted"]) == (1, 5)
        assert md5_of(pg_url, "readings") == md5_of(pg_url2, "readings")
    finally:
        cli_process("abandon", str(plan), "--yes")


def test_wal_level_below_logical_is_refused_with_the_fix(tmp_path: Path) -> None:
    from fixtures_postgres import PostgresCluster

    cluster = PostgresCluster(settings={"wal_level": "replica"}).start()
    try:
        source, target = cluster.create_database(), cluster.create_database()
        pg(source, SCHEMA)
        refused = cli_process("run", str(logical_plan(tmp_path, source, target)))
        assert refused.returncode == 1
        assert "wal_level is replica" in refused.stderr and "ALTER SYSTEM SET wal_level = logical" in refused.stderr
    finally:
        cluster.stop()


def test_plan_shows_the_wal_the_slot_holds_and_finish_and_abandon_drop_it(loaded: tuple[Path, str, str]) -> None:
    plan, source, _ = loaded
    pg(source, f"INSERT INTO patients SELECT g, 'x', {BIG}, now() FROM generate_series(20001, 20200) g")
    plan.write_text(plan.read_text().replace("chunk_rows: 500", "chunk_rows: 500, max_retained_wal: 1 KiB"))
    shown = cli_process("plan", str(plan))
    assert shown.returncode == 0, shown.stderr
    assert "replication slot migrate_capture_epr" in shown.stderr and "over max_retained_wal (1.0 KiB)" in shown.stderr
    sync(plan)  # reads the slot's retention into the journal: status, the report and the gate show it
    status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]
    assert status["items"][0]["slot"]["slot"] == "migrate_capture_epr"
    assert status["items"][0]["slot"]["retained_bytes"] > 1024
    refused = json.loads(cli_process("cutover", "--check", str(plan), "--json").stdout)["result"]["refused"]
    assert any(r.startswith("replication_slot: epr: slot migrate_capture_epr holds") and "(limit 1.0 KiB)" in r
               for r in refused), refused
    board = cli_process("report", str(plan), "--out", "-").stdout
    assert "## Replication slots" in board and "| epr | migrate_capture_epr |" in board
    as_json = json.loads(cli_process("report", str(plan), "--format", "json", "--out", "-").stdout)
    assert as_json["items"][0]["slot"]["retained_bytes"] > 1024
    finish = cli_process("finish", str(plan), "--yes")
    assert finish.returncode == 2 and "not" in finish.stderr  # not cut over: finish refuses
    abandoned = cli_process("abandon", str(plan), "--yes")
    assert abandoned.returncode == 0 and "dropped replication slot migrate_capture_epr" in abandoned.stderr
    assert slot(source) is None
    assert not pg(source, "SELECT 1 FROM pg_publication WHERE pubname = 'migrate_capture_epr'")
    # a later sync makes a new slot first, then compares the tables in full once: nothing is lost meanwhile
    pg(source, "UPDATE patients SET name = 'while there was no slot' WHERE id <= 5")
    sync(plan)
    assert slot(source) is not None
    same(source, loaded[2])


def test_the_slot_is_created_before_concurrent_writers_and_threads_do_not_race(tmp_path: Path, pg_url: str,
                                                                                pg_url2: str) -> None:
    """Writes running all through load and several sync cycles: after a last cycle both sides are equal."""
    pg(pg_url, SCHEMA)
    plan = logical_plan(tmp_path, pg_url, pg_url2)
    stop = threading.Event()

    def writer() -> None:
        n = 100000
        with psycopg.connect(dsn_of(pg_url), autocommit=True) as conn:
            while not stop.is_set():
                n += 1
                conn.execute("INSERT INTO patients VALUES (%s, 'w', NULL, now())", (n,))
                conn.execute("UPDATE patients SET notes = %s WHERE id = %s", (str(n), n % 2000 + 1))
                # never all the letters: emptying a table is a mass delete
                conn.execute("DELETE FROM letters WHERE id = %s", (n % 1000 + 1,))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert cli_process("run", str(plan), "--until", "load").returncode == 0  # verify would see live writes
        for _ in range(2):
            sync(plan)
    finally:
        stop.set()
        thread.join()
    try:
        sync(plan)
        same(pg_url, pg_url2)
    finally:
        cli_process("abandon", str(plan), "--yes")


KILL_MID_MERGE = """
import os, signal, sys
from migrate.databases.dialects.postgresql import PostgresOps
copy = PostgresOps.copy_between
def staged_then_killed(self, *args, **kwargs):
    copy(self, *args, **kwargs)  # the changed rows are in the staging table, the merge not yet committed
    os.kill(os.getpid(), signal.SIGKILL)
PostgresOps.copy_between = staged_then_killed
from migrate.cli import main
sys.argv = ["migrate", "sync", sys.argv[1]]
main()
"""


def test_kill_9_in_the_middle_of_a_watermark_merge_loses_nothing(tmp_path: Path, pg_url: str,
                                                                 pg_url2: str) -> None:
    """The staged merge (watermark method, PostgreSQL -> PostgreSQL) killed after staging, before its commit:
    the target is as it was, and the next sync brings both sides equal (md5 of each side's COPY output)."""
    pg(pg_url, SCHEMA)
    plan = logical_plan(tmp_path, pg_url, pg_url2).read_text().replace(
        "incremental: {method: logical}", "incremental: {column: updated_at, overlap: 1s}")
    (tmp_path / "plan.yaml").write_text(plan)
    plan_path = tmp_path / "plan.yaml"
    assert cli_process("run", str(plan_path)).returncode == 0
    before = table_md5(dsn_of(pg_url2), "patients")
    pg(pg_url, "UPDATE patients SET name = name || ' (amended)', updated_at = now() WHERE id <= 700")
    pg(pg_url, "INSERT INTO patients SELECT g, 'new ' || g, NULL, now() FROM generate_series(3001, 3500) g")
    killed = subprocess.run([sys.executable, "-c", KILL_MID_MERGE, str(plan_path)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert killed.returncode == -9, killed.stderr  # it was killed at work, not before it
    assert table_md5(dsn_of(pg_url2), "patients") == before  # nothing half-merged
    assert cli_process("sync", str(plan_path)).returncode == 0
    for table in ("patients", "letters"):
        assert table_md5(dsn_of(pg_url), table) == table_md5(dsn_of(pg_url2), table), table


def cutover_plan(folder: Path, source: str, target: str) -> Path:
    build_tree(folder, {
        "runbooks/switch.sh": "#!/bin/sh\necho target > active\n",
        "runbooks/back.sh": "#!/bin/sh\necho source > active\n"})
    plan = logical_plan(folder, source, target)
    plan.write_text(plan.read_text() + textwrap.dedent("""\
        cutover:
          gates: {max_lag: 1h}
          steps: [{name: switch, run: runbooks/switch.sh}]
        rollback:
          reverse_sync: true
          steps: [{name: back, run: runbooks/back.sh}]
        """), encoding="utf-8")
    return plan


def reverse_slot(url: str) -> list[tuple]:
    return pg(url, "SELECT database FROM pg_replication_slots WHERE slot_name = 'migrate_capture_epr_reverse'")


def test_reverse_replication_decodes_the_targets_own_log_and_finish_drops_both_slots(
        tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    pg(pg_url, SCHEMA)
    plan = cutover_plan(tmp_path, pg_url, pg_url2)
    assert cli_process("run", str(plan)).returncode == 0
    sync(plan)  # the replication_slot gate wants a cycle that read the slot
    check = json.loads(cli_process("cutover", str(plan), "--check", "--json").stdout)["result"]
    ready = {g["gate"]: g for g in check["gates"]}["reverse_ready"]
    assert "its log (logical decoding) for patients, letters" in ready["evidence"], ready
    cut = cli_process("cutover", str(plan), "--yes")
    assert cut.returncode == 0, cut.stderr
    with psycopg.connect(dsn_of(pg_url2), autocommit=True) as conn:  # the application now writes on Azure
        conn.execute("INSERT INTO patients (id, name) VALUES (5001, 'new on azure')")
        conn.execute("DELETE FROM letters WHERE id = 9")
    first = sync(plan)  # the first reverse cycle makes the target's slot, then compares in full once
    assert reverse_slot(pg_url2) == [(pg_url2.rsplit("/", 1)[1],)]
    assert first["lag_detail"]["patients"]["watermark"] == "logical decoding"
    same(pg_url, pg_url2)
    with psycopg.connect(dsn_of(pg_url2), autocommit=True) as conn:
        conn.execute("UPDATE patients SET name = 'renamed, updated_at untouched' WHERE id IN (3, 4)")
        conn.execute(f"UPDATE patients SET notes = {BIG} WHERE id = 5")
        conn.execute("DELETE FROM letters WHERE id IN (10, 11)")
    second = sync(plan)
    assert second["metrics"]["logical"]["changes"] == 5  # read from the target's log, not a full comparison
    assert (second["updated"], second["deleted"]) == (3, 2)
    same(pg_url, pg_url2)
    finished = cli_process("finish", str(plan), "--yes")
    assert finished.returncode == 0, finished.stderr
    assert "migrate_capture_epr_reverse" in finished.stderr and slot(pg_url) is None
    assert reverse_slot(pg_url2) == []
    after = cli_process("sync", str(plan))  # finished: nothing replicates, and no slot is made again
    assert after.returncode == 1 and "reverse sync refused: the component was finished" in after.stderr
    assert reverse_slot(pg_url2) == []
    for url in (pg_url, pg_url2):
        assert not pg(url, "SELECT 1 FROM pg_publication WHERE pubname LIKE 'migrate_capture_epr%'")


def test_rollback_brings_the_targets_writes_home_then_drops_the_targets_slot(
        tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    """After a rollback nobody reads the target's log again (the next cutover starts reverse replication
    afresh): its slot would hold the target's WAL for good. Status shows that slot while it exists."""
    pg(pg_url, SCHEMA)
    plan = cutover_plan(tmp_path, pg_url, pg_url2)
    assert cli_process("run", str(plan)).returncode == 0
    sync(plan)
    assert cli_process("cutover", str(plan), "--yes").returncode == 0
    sync(plan)  # the first reverse cycle makes the target's slot
    with psycopg.connect(dsn_of(pg_url2), autocommit=True) as conn:
        conn.execute("INSERT INTO patients (id, name) VALUES (7001, 'written on azure before the rollback')")
        conn.execute("DELETE FROM letters WHERE id = 12")
    sync(plan)  # the cycle that reads the target's slot records what it holds
    status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]["items"][0]
    assert status["reverse_slot"]["slot"] == "migrate_capture_epr_reverse"
    assert status["reverse_slot"]["retained_bytes"] >= 0
    assert reverse_slot(pg_url2)
    back = cli_process("rollback", str(plan), "--yes")
    assert back.returncode == 0, back.stderr
    same(pg_url, pg_url2)  # the target's writes came home
    assert reverse_slot(pg_url2) == []
    assert "migrate_capture_epr_reverse" in back.stderr
    status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]["items"][0]
    assert status["reverse_slot"] is None
    assert slot(pg_url) is not None  # forward replication goes on from the source's slot
    cli_process("abandon", str(plan), "--yes")


def test_a_large_cycle_merges_in_parallel_even_rows_that_refer_to_rows_of_another_part(
        tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    """The target's sessions run as replication (`session_replication_role = replica`): a child's part may commit
    before its parents' part, and the foreign key still holds once the cycle is done."""
    pg(pg_url, "CREATE TABLE tree (id int PRIMARY KEY, parent int REFERENCES tree(id), label text)")
    pg(pg_url, "CREATE TABLE flat (id int PRIMARY KEY, label text)")
    plan = logical_plan(tmp_path, pg_url, pg_url2, tables="[tree, flat]")
    assert cli_process("run", str(plan)).returncode == 0
    # parents committed first carry the higher keys and are the heavier part: the children's part lands first
    pg(pg_url, "INSERT INTO tree SELECT g, NULL, (SELECT string_agg(md5(random()::text || i || g.g), '') "
               "FROM generate_series(1, 100) i) FROM generate_series(6001, 12000) g(g)")
    pg(pg_url, "INSERT INTO tree SELECT g, g + 6000, 'child' FROM generate_series(1, 6000) g")
    pg(pg_url, "INSERT INTO flat SELECT g, 'row ' || g FROM generate_series(1, 12000) g")
    result = sync(plan)
    assert result["created"] == 24000
    for table in ("tree", "flat"):
        assert md5_of(pg_url, table) == md5_of(pg_url2, table), table
    assert pg(pg_url2, "SELECT count(*) FROM tree c LEFT JOIN tree p ON p.id = c.parent "
                       "WHERE c.parent IS NOT NULL AND p.id IS NULL") == [(0,)]
    cli_process("abandon", str(plan), "--yes")
