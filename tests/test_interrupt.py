"""Ctrl-C and faults while dual-running, against real processes: SIGINT to `migrate verify` and
`migrate sync --watch` on SQLite (exit 130 within 1 s, never a database error), and `sync --watch` surviving
a PostgreSQL target that refuses connections for a while (and stopping on a missing table)."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fixtures_postgres import PostgresCluster, find_pg_bin

from helpers import build_tree, cli_process, wait_for
from migrate.plan.loader import load_plan
from migrate.state.journal import Journal

ROWS = 300_000  # enough that one verify or sync cycle scans for several seconds on this machine

PLAN = """
version: 1
component: intr
connections:
  a: {{url: "sqlite:///src.db"}}
  b: {{url: "{target}"}}
databases:
  - {{name: db, source: a, target: b, tables: [obs], incremental: {{column: updated_at}}}}
dual_run: {{interval: 1s}}
"""


def build_source(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE obs (id INTEGER PRIMARY KEY, v NUMERIC(12,4), at TIMESTAMP, note TEXT, "
                 "updated_at TIMESTAMP NOT NULL)")
    conn.executemany("INSERT INTO obs VALUES (?,?,?,?,?)", (
        (i, f"{i % 997}.{i % 10000:04d}", f"2024-03-01 08:00:00.{i % 999999:06d}", f"note {i}",
         "2024-03-01 08:00:00") for i in range(1, rows + 1)))
    conn.commit()
    conn.close()


def sqlite_md5(path: Path) -> str:
    """md5 of every row, sorted by key: proof from outside the tool."""
    conn = sqlite3.connect(path)
    digest = hashlib.md5()
    for row in conn.execute("SELECT id, CAST(v AS TEXT), at, note, updated_at FROM obs ORDER BY id"):
        digest.update(repr(row).encode())
    conn.close()
    return digest.hexdigest()


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A loaded SQLite → SQLite plan of ROWS rows."""
    root = tmp_path_factory.mktemp("big")
    build_tree(root, {"plan.yaml": PLAN.format(target="sqlite:///dst.db")})
    build_source(root / "src.db", ROWS)
    done = cli_process("run", str(root / "plan.yaml"), "--until", "load")
    assert done.returncode == 0, done.stderr
    return root / "plan.yaml"


class Runner:
    """`python -m migrate ARGS` with its stderr read line by line as it comes."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "migrate", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def interrupt(self) -> float:
        """SIGINT; return the seconds until the process was gone."""
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        elapsed = time.monotonic() - sent
        self.reader.join(5)
        return elapsed



def stage_running(plan: Path, stage: str) -> Callable[[], bool]:
    journal = Journal(load_plan(plan).state_url)

    def check() -> bool:
        record = journal.item("db")
        return record is not None and record.stage == stage and record.status == "running"

    return check


def test_ctrl_c_during_a_long_sqlite_verify_exits_130_within_a_second(big: Path) -> None:
    runner = Runner("verify", str(big))
    wait_for(stage_running(big, "verify"))  # progress first: the checksum scan has begun
    time.sleep(1.0)  # well inside the scan (it takes several seconds)
    assert runner.proc.poll() is None
    elapsed = runner.interrupt()
    assert runner.proc.returncode == 130, runner.text
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    assert "interrupted" in runner.text
    for wrong in ("database error", "user-defined function", "Traceback", "internal error"):
        assert wrong not in runner.text
    runs = Journal(load_plan(big).state_url).engine.connect().exec_driver_sql(
        "SELECT outcome FROM runs WHERE command = 'verify' ORDER BY id DESC LIMIT 1").scalar()
    assert runs == "interrupted"


def test_ctrl_c_during_sync_watch_on_sqlite_exits_130_nothing_half_written(big: Path) -> None:
    before = sqlite_md5(big.parent / "src.db")
    runner = Runner("sync", str(big), "--watch")
    wait_for(stage_running(big, "sync"))
    time.sleep(0.5)  # inside the first cycle's read of the source (user-defined functions at work)
    elapsed = runner.interrupt()
    assert runner.proc.returncode == 130, runner.text
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    for wrong in ("database error", "user-defined function", "Traceback", "internal error"):
        assert wrong not in runner.text
    # nothing half-written: the target still holds exactly the source's rows
    assert sqlite_md5(big.parent / "dst.db") == before == sqlite_md5(big.parent / "src.db")


def test_sync_watch_stops_on_a_missing_table(tmp_path: Path) -> None:
    build_tree(tmp_path, {"plan.yaml": PLAN.format(target="sqlite:///dst.db")})
    build_source(tmp_path / "src.db", 50)
    assert cli_process("run", str(tmp_path / "plan.yaml"), "--until", "load").returncode == 0
    runner = Runner("sync", str(tmp_path / "plan.yaml"), "--watch")
    wait_for(lambda: "cycle 1 db" in runner.text)
    with sqlite3.connect(tmp_path / "src.db") as conn:
        conn.execute("DROP TABLE obs")
    runner.proc.wait(timeout=30)
    runner.reader.join(5)
    assert runner.proc.returncode == 1, runner.text
    assert "table 'obs' not found" in runner.text
    assert "skipped" not in runner.text and "Traceback" not in runner.text


@pytest.mark.skipif(find_pg_bin() is None, reason="PostgreSQL is not installed")
def test_sync_watch_skips_cycles_while_the_target_refuses_connections(tmp_path: Path) -> None:
    cluster = PostgresCluster().start()  # its own cluster (a folder the postgres user can enter): stopped here
    try:
        build_tree(tmp_path, {"plan.yaml": PLAN.format(target=cluster.create_database("target"))})
        build_source(tmp_path / "src.db", 200)
        assert cli_process("run", str(tmp_path / "plan.yaml"), "--until", "load").returncode == 0
        runner = Runner("sync", str(tmp_path / "plan.yaml"), "--watch")
        wait_for(lambda: "cycle 1 db" in runner.text)
        cluster.pause()  # the target now refuses connections
        wait_for(lambda: "skipped" in runner.text)
        with sqlite3.connect(tmp_path / "src.db") as conn:  # a clinical write while the target is away
            conn.execute("INSERT INTO obs VALUES (201, '1.5000', '2024-03-02 09:00:00', 'late', "
                         "'2024-03-02 09:00:00')")
        skipped_at = len(runner.lines)
        cluster.resume()
        wait_for(lambda: any("1 created" in line for line in runner.lines[skipped_at:]))
        assert runner.proc.poll() is None  # it kept going
        assert runner.interrupt() < 1.0 and runner.proc.returncode == 130
        skips = [line for line in runner.lines if "skipped" in line]
        assert skips and all("server unreachable" in line and "next try in" in line for line in skips)
        import psycopg

        with psycopg.connect(cluster.dsn("target")) as conn:
            row = conn.execute("SELECT note, count(*) OVER () FROM obs WHERE id = 201").fetchone()
        assert row == ("late", 1)
        journal = Journal(load_plan(tmp_path / "plan.yaml").state_url)
        assert any(e["outcome"] == "skipped" and "server unreachable" in e["message"] for e in journal.events())
    finally:
        cluster.stop()
