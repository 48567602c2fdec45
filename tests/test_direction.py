"""Direction is state: which side is authoritative decides which way replication runs, and nothing written on
either side is lost across cutover, an interrupted cutover, reverse replication and rollback.

Every guarantee is checked outside the tool: SQLite rows read with sqlite3, file bytes hashed, PostgreSQL
tables compared by md5 of their sorted COPY output.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from fixtures_postgres import PostgresCluster

from helpers import assert_identical, build_tree, cli_process
from migrate.demo.flow import prepare_estate
from migrate.state.journal import Journal

TABLES = ("patients", "encounters", "observations")


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def azure_writes(work: Path, tag: str) -> None:
    """What the application does on Azure after the switch: insert, update, delete rows; new and modified blobs."""
    with sqlite3.connect(work / "azure" / "ppm.db") as conn:
        new_id = conn.execute("SELECT max(id) + 1 FROM patients").fetchone()[0]
        conn.execute("INSERT INTO patients (id, nhs_number, given_name, family_name, date_of_birth, postcode, "
                     "deceased, updated_at) VALUES (?, ?, 'Azure', ?, '1990-01-01', 'LS1 4AP', 0, ?)",
                     (new_id, f"999{new_id:07d}"[:10], tag, stamp()))
        conn.execute("UPDATE patients SET postcode = ?, updated_at = ? WHERE id = 2", (tag[:8], stamp()))
        victim = conn.execute("SELECT max(id) FROM observations").fetchone()[0]
        conn.execute("DELETE FROM observations WHERE id = ?", (victim,))
    letters = work / "azure" / "letters"
    (letters / f"written on azure {tag}.pdf").write_bytes(f"%PDF-1.4 {tag}".encode())
    first = sorted(p for p in letters.rglob("*.pdf") if p.stat().st_size > 0)[0]
    first.write_bytes(first.read_bytes() + f" amended {tag}".encode())  # modified on Azure


def rows(db: Path, table: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


def set_rollback(plan: Path, reverse_sync: bool) -> None:
    text = "".join(line for line in plan.read_text().splitlines(keepends=True)
                   if not line.startswith("  reverse_sync:"))
    plan.write_text(text + f"  reverse_sync: {'true' if reverse_sync else 'false'}\n")


@pytest.fixture
def cut_over(tmp_path: Path) -> Path:
    plan, _ = prepare_estate(tmp_path / "estate", patients=150, letters=30)
    set_rollback(plan, reverse_sync=True)
    assert cli_process("run", str(plan)).returncode == 0
    done = cli_process("cutover", str(plan), "--yes")
    assert done.returncode == 0, done.stderr
    return plan


def test_interrupted_cutover_after_the_switch_refuses_forward_sync_and_keeps_azure_writes(tmp_path: Path) -> None:
    plan, _ = prepare_estate(tmp_path / "estate", patients=150, letters=30)
    work = plan.parent
    assert cli_process("run", str(plan)).returncode == 0
    build_tree(work, {"runbooks/switch.sh": "#!/bin/sh\nif [ ! -f once ]; then touch once; kill -9 $PPID; sleep 5; fi\n"
                                            "echo azure > active-site\n"})
    lost = cli_process("cutover", str(plan), "--yes")
    assert lost.returncode == -signal.SIGKILL
    azure_writes(work, "interrupted")  # the application was already being switched: it writes on Azure
    before = {t: rows(work / "azure" / "ppm.db", t) for t in TABLES}
    letters_before = sorted(p.name for p in (work / "azure" / "letters").rglob("*"))

    for argv in (("sync", str(plan)), ("sync", str(plan), "--watch", "--cycles", "2")):
        refused = cli_process(*argv)
        assert refused.returncode == 1, refused.stderr
        assert "interrupted after its switch began" in refused.stderr and "migrate cutover" in refused.stderr
    assert {t: rows(work / "azure" / "ppm.db", t) for t in TABLES} == before  # nothing deleted or overwritten
    assert sorted(p.name for p in (work / "azure" / "letters").rglob("*")) == letters_before
    status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]
    assert status["authoritative"] == "target" and status["cutover"]["status"] == "running"

    resumed = cli_process("cutover", str(plan), "--yes")  # finish it; then reverse replication brings them home
    assert resumed.returncode == 0, resumed.stderr
    synced = cli_process("sync", str(plan), "--json")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["result"]["direction"] == "reverse"
    assert_identical(work)


def test_reverse_replication_after_cutover_then_rollback_loses_nothing(cut_over: Path) -> None:
    plan, work = cut_over, cut_over.parent
    azure_writes(work, "after-cutover")
    synced = cli_process("sync", str(plan), "--json")
    body = json.loads(synced.stdout)
    assert synced.returncode == 0, synced.stderr
    assert body["result"]["direction"] == "reverse"
    moved = {r["item"]: (r["created"], r["updated"], r["deleted"]) for r in body["result"]["results"]}
    assert moved["patient-record.reverse"] == (1, 1, 1)
    assert moved["letters.reverse"][:2] == (1, 1)  # the modified blob is a change, not a conflict
    assert_identical(work)  # insert, update, delete, new and modified file: all on premises now

    status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]
    assert status["authoritative"] == "target"
    assert all(i["reverse_lag_seconds"] is not None and i["lag_seconds"] is None for i in status["items"])
    out = work / "board.md"
    assert cli_process("report", str(plan), "--format", "md", "--out", str(out)).returncode == 0
    assert "| reverse " in out.read_text()  # the board sees reverse lag, not a forward lag that keeps growing

    azure_writes(work, "before-rollback")  # written after the last reverse cycle: rollback brings them home
    back = cli_process("rollback", str(plan), "--yes", "--json")
    assert back.returncode == 0, back.stderr
    assert (work / "active-site").read_text().strip() == "onprem"
    assert_identical(work)

    forward = cli_process("sync", str(plan), "--json")  # dual-running again: deletes nothing written on Azure
    result = json.loads(forward.stdout)["result"]
    assert forward.returncode == 0 and result["direction"] == "forward"
    assert all(r["deleted"] == 0 for r in result["results"]), result
    assert_identical(work)
    names = [r[3] for r in rows(work / "onprem" / "ppm.db", "patients")]
    assert "after-cutover" in names and "before-rollback" in names


def test_rollback_without_reverse_sync_refuses_while_the_target_has_changes(cut_over: Path) -> None:
    plan, work = cut_over, cut_over.parent
    set_rollback(plan, reverse_sync=False)
    azure_writes(work, "stranded")
    refused = cli_process("rollback", str(plan), "--yes", "--json")
    body = json.loads(refused.stdout)
    assert refused.returncode == 3, refused.stderr
    assert "change(s) the source lacks" in body["error"] and "--discard-target-changes" in body["error"]
    keys = {d["key"] for d in body["result"]["differences"]}
    assert any("written on azure stranded.pdf" in k for k in keys)
    assert (work / "active-site").read_text().strip() == "azure"  # the switch-back did not run
    assert cli_process("sync", str(plan)).returncode == 1  # a rollback is under way: no direction is safe

    discarded = cli_process("rollback", str(plan), "--yes", "--discard-target-changes")
    assert discarded.returncode == 0, discarded.stderr
    assert (work / "active-site").read_text().strip() == "onprem"
    journal = Journal(f"sqlite:///{work / '.migrate' / 'ppm-demo.db'}")
    assert any("discarded" in e["message"] for e in journal.events() if e["kind"] == "rollback")
    journal.close()


def test_failed_reverse_sync_stops_the_switch_back_unless_forced(cut_over: Path) -> None:
    plan, work = cut_over, cut_over.parent
    azure_writes(work, "unreachable-home")
    home = work / "onprem" / "ppm.db"
    home.rename(home.with_suffix(".away"))  # the on-premises database is gone: nothing can be brought home
    failed = cli_process("rollback", str(plan), "--yes")
    assert failed.returncode == 1
    assert "reverse sync failed, so the switch-back steps did not run" in failed.stderr
    assert (work / "active-site").read_text().strip() == "azure"
    status = json.loads(cli_process("status", str(plan), "--json").stdout)["result"]
    assert status["authoritative"] == "target" and status["cutover"]["status"] == "rolling_back"

    home.unlink(missing_ok=True)
    home.with_suffix(".away").rename(home)  # back: the rerun finishes the rollback with nothing lost
    again = cli_process("rollback", str(plan), "--yes")
    assert again.returncode == 0, again.stderr
    assert (work / "active-site").read_text().strip() == "onprem"
    assert_identical(work)


def test_force_switches_back_past_a_failed_reverse_sync(cut_over: Path) -> None:
    plan, work = cut_over, cut_over.parent
    (work / "onprem" / "ppm.db").rename(work / "onprem" / "ppm.away")
    forced = cli_process("rollback", str(plan), "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (work / "active-site").read_text().strip() == "onprem"
    journal = Journal(f"sqlite:///{work / '.migrate' / 'ppm-demo.db'}")
    assert any("forced past a failed reverse sync" in e["message"] for e in journal.events())
    journal.close()


def test_rollback_resets_dual_running_for_min_dual_run(tmp_path: Path) -> None:
    plan, _ = prepare_estate(tmp_path / "estate", patients=60, letters=10)
    plan.write_text(plan.read_text().replace("    max_lag: 60s\n", "    max_lag: 60s\n    min_dual_run: 1s\n"))
    assert cli_process("run", str(plan)).returncode == 0
    assert cli_process("sync", str(plan)).returncode == 0
    time.sleep(1.2)
    assert cli_process("cutover", str(plan), "--yes").returncode == 0
    assert cli_process("rollback", str(plan), "--yes", "--discard-target-changes").returncode == 0
    check = cli_process("cutover", str(plan), "--check", "--json")
    assert check.returncode == 3 and any(r.startswith("min_dual_run") for r in json.loads(check.stdout)["result"]
                                         ["refused"])
    assert cli_process("sync", str(plan)).returncode == 0
    time.sleep(1.2)
    assert cli_process("cutover", str(plan), "--check").returncode == 0


def test_sync_watch_carries_on_in_reverse_after_the_cutover(tmp_path: Path) -> None:
    import subprocess
    import sys
    import threading

    plan, _ = prepare_estate(tmp_path / "estate", patients=100, letters=10)
    work = plan.parent
    plan.write_text(plan.read_text().replace("  interval: 5s", "  interval: 1s"))
    assert cli_process("run", str(plan)).returncode == 0
    watch = subprocess.Popen([sys.executable, "-m", "migrate", "sync", str(plan), "--watch"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(watch.stderr.readline, "")), daemon=True)
    reader.start()
    try:
        time.sleep(2)
        for _ in range(20):  # takes the lock between cycles
            done = cli_process("cutover", str(plan), "--yes")
            if "plan is locked" not in done.stderr:
                break
            time.sleep(0.3)
        assert done.returncode == 0, done.stderr
        azure_writes(work, "watched")
        deadline, seen = time.monotonic() + 90, None
        while time.monotonic() < deadline:  # the row home, then a whole reverse cycle with nothing left to copy
            if seen is None and any(r[3] == "watched" for r in rows(work / "onprem" / "ppm.db", "patients")):
                seen = len(lines)
            if seen is not None and any("letters (reverse: target → source): 0 created, 0 updated" in line
                                        for line in lines[seen:]):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"reverse replication did not bring the Azure-side insert home: {lines[-5:]}")
    finally:
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=30)
        reader.join(timeout=5)
    assert_identical(work)


# --- PostgreSQL → PostgreSQL -----------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE patients (id int PRIMARY KEY, mrn varchar(20) NOT NULL, name text,
                       updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE observations (id bigint PRIMARY KEY, patient_id int NOT NULL REFERENCES patients(id),
                           value numeric(12,4), updated_at timestamptz NOT NULL DEFAULT now());
INSERT INTO patients SELECT g, 'RX-' || g, 'patient ' || g, now() - interval '1 day' FROM generate_series(1, 500) g;
INSERT INTO observations SELECT g, 1 + g % 500, g / 7.0, now() - interval '1 day' FROM generate_series(1, 3000) g;
"""


def table_md5(dsn: str, table: str) -> str:
    """md5 of the table's COPY output in key order: an oracle independent of migrate."""
    digest = hashlib.md5()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT") as copy:
            for block in copy:
                digest.update(bytes(block))
    return digest.hexdigest()


def pg_plan(folder: Path, source: str, target: str, extra: str = "") -> Path:
    build_tree(folder, {
        "runbooks/freeze.sh": "#!/bin/sh\ntouch frozen\n",
        "runbooks/switch.sh": "#!/bin/sh\necho target > active\n",
        "runbooks/back.sh": "#!/bin/sh\necho source > active\n",
        "plan.yaml": f"""
            version: 1
            component: pg-direction
            connections:
              onprem: {{url: "{source}"}}
              azure: {{url: "{target}"}}
            databases:
              - name: records
                source: onprem
                target: azure
                tables: ["*"]
                incremental: {{column: updated_at, overlap: 1m}}
            cutover:
              gates: {{max_lag: 1h}}
              steps:
                - {{name: freeze, run: runbooks/freeze.sh}}
                - {{name: switch, run: runbooks/switch.sh}}
            rollback:
              reverse_sync: true
              steps:
                - {{name: back, run: runbooks/back.sh}}
            {extra}
            """})
    return folder / "plan.yaml"


def dsn_of(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.mark.postgres
def test_postgres_reverse_replication_and_rollback_match_outside_the_tool(tmp_path: Path, pg_url: str,
                                                                         pg_url2: str) -> None:
    with psycopg.connect(dsn_of(pg_url)) as conn:
        conn.execute(SCHEMA)
    plan = pg_plan(tmp_path, pg_url, pg_url2)
    ran = cli_process("run", str(plan))
    assert ran.returncode == 0, ran.stderr
    check = json.loads(cli_process("cutover", str(plan), "--check", "--json").stdout)["result"]
    ready = {g["gate"]: g for g in check["gates"]}["reverse_ready"]
    assert ready["passed"] and "INSERT, UPDATE, DELETE checked" in ready["evidence"]
    assert cli_process("cutover", str(plan), "--yes").returncode == 0
    with psycopg.connect(dsn_of(pg_url2)) as conn:  # the application on Azure
        conn.execute("INSERT INTO patients VALUES (501, 'rx-501', 'new on azure', now())")
        conn.execute("UPDATE patients SET name = 'renamed on azure', updated_at = now() WHERE id = 7")
        conn.execute("DELETE FROM observations WHERE id IN (10, 11, 12)")
        conn.execute("INSERT INTO observations VALUES (3001, 501, 1.5, now())")
    synced = cli_process("sync", str(plan), "--json")
    assert synced.returncode == 0, synced.stderr
    for table in ("patients", "observations"):
        assert table_md5(dsn_of(pg_url), table) == table_md5(dsn_of(pg_url2), table)

    with psycopg.connect(dsn_of(pg_url2)) as conn:
        conn.execute("UPDATE observations SET value = 42, updated_at = now() WHERE id = 20")
    back = cli_process("rollback", str(plan), "--yes")
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "active").read_text().strip() == "source"
    forward = cli_process("sync", str(plan), "--json")
    assert forward.returncode == 0 and all(r["deleted"] == 0 for r in json.loads(forward.stdout)["result"]["results"])
    for table in ("patients", "observations"):
        assert table_md5(dsn_of(pg_url), table) == table_md5(dsn_of(pg_url2), table)


@pytest.mark.postgres
def test_reverse_ready_gate_refuses_a_source_the_runner_cannot_write(tmp_path: Path, pg_cluster: PostgresCluster,
                                                                     pg_url: str, pg_url2: str) -> None:
    database = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(dsn_of(pg_url), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("DROP ROLE IF EXISTS reader")
        conn.execute("CREATE ROLE reader LOGIN PASSWORD 'read-only-pw'")
        conn.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
    reader = f"postgresql+psycopg://reader:${{READER_PW}}@127.0.0.1:{pg_cluster.port}/{database}"
    plan = pg_plan(tmp_path, reader, pg_url2)
    env = {"READER_PW": "read-only-pw"}
    assert cli_process("run", str(plan), env=env).returncode == 0
    check = cli_process("cutover", str(plan), "--check", "--json", env=env)
    assert check.returncode == 3, check.stderr
    refused = json.loads(check.stdout)["result"]["refused"]
    assert any(r.startswith("reverse_ready:") and "permission denied" in r for r in refused), refused
    assert "read-only-pw" not in check.stdout + check.stderr


def test_a_journal_without_a_direction_record_is_read_safely(tmp_path: Path) -> None:
    from migrate.state.direction import PLAN_ITEM, read_direction, set_authority

    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    assert read_direction(journal).authority == "source"
    journal.put(PLAN_ITEM, "cutover", {"status": "done", "step": 4})  # written by an older version
    assert read_direction(journal).authority == "target"
    set_authority(journal, "source", "rollback complete")
    assert read_direction(journal).authority == "source"
    journal.close()


def test_reverse_sync_and_rollback_keep_the_mass_delete_guard(cut_over: Path) -> None:
    """An emptied target table after cutover (a bad job on Azure) must not empty the source through reverse sync
    or the final reverse sync of a rollback."""
    work = cut_over.parent
    with sqlite3.connect(work / "azure" / "ppm.db") as conn:
        conn.execute("DELETE FROM observations")
    before = rows(work / "onprem" / "ppm.db", "observations")
    assert len(before) > 100
    refused = cli_process("sync", str(cut_over))
    assert refused.returncode == 1 and "mass delete refused, nothing was deleted" in refused.stderr
    back = cli_process("rollback", str(cut_over), "--yes")
    assert back.returncode == 1 and "mass delete refused" in back.stderr and "did not run" in back.stderr
    assert rows(work / "onprem" / "ppm.db", "observations") == before  # the source kept every row
