"""Text keys sorted differently on the two sides (an ICU locale on premises, `C` on Azure) lose no row: load,
kill -9 and resume, sync and verify all cut key ranges in one byte order. Compared outside the tool."""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path

import psycopg
import pytest
from test_db_postgres import pg, plan
from test_direction import dsn_of

from helpers import cli_process, start_cli

ROWS = """INSERT INTO patients
SELECT p || '-' || g, 'patient ' || g, now() - interval '1 day'
FROM generate_series(1, {n}) g, unnest(ARRAY['rx', 'RX', 'Rx', 'rX', 'ré', 'Ré', 'r-x', 'r x']) p"""


def md5_in_byte_order(url: str) -> tuple[int, str]:
    digest, count = hashlib.md5(), 0
    with psycopg.connect(dsn_of(url)) as conn, conn.cursor() as cur:
        with cur.copy('COPY (SELECT mrn, name FROM patients ORDER BY mrn COLLATE "C") TO STDOUT') as copy:
            for block in copy:
                digest.update(bytes(block))
        count = cur.execute("SELECT count(*) FROM patients").fetchone()[0]
    return count, digest.hexdigest()


def two_orders(source: str, target: str, n: int) -> None:
    pg(source, 'CREATE TABLE patients (mrn varchar(20) COLLATE "en-US-x-icu" PRIMARY KEY, name text, '
               "updated_at timestamptz NOT NULL)")
    pg(target, 'CREATE TABLE patients (mrn varchar(20) COLLATE "C" PRIMARY KEY, name text, '
               "updated_at timestamptz NOT NULL)")
    pg(source, ROWS.format(n=n))
    # the two orders really differ: the ICU order puts 'rx-1' before 'RX-1', byte order the other way round
    assert pg(source, "SELECT mrn FROM patients WHERE mrn IN ('rx-1', 'RX-1') ORDER BY mrn")[0][0] == "rx-1"
    assert pg(target, "SELECT min(x COLLATE \"C\") FROM (VALUES ('rx-1'), ('RX-1')) v(x)")[0][0] == "RX-1"


@pytest.mark.postgres
def test_keys_in_two_collations_keep_every_row_through_load_sync_and_verify(tmp_path: Path, pg_url: str,
                                                                            pg_url2: str) -> None:
    two_orders(pg_url, pg_url2, 300)
    path = plan(tmp_path, pg_url, pg_url2, chunk_rows=97)
    ran = cli_process("run", str(path))
    assert ran.returncode == 0, ran.stderr
    assert md5_in_byte_order(pg_url) == md5_in_byte_order(pg_url2) and md5_in_byte_order(pg_url)[0] == 2400
    pg(pg_url, "DELETE FROM patients WHERE mrn = 'Rx-150'")
    pg(pg_url, "UPDATE patients SET name = 'renamed', updated_at = now() WHERE mrn IN ('rX-7', 'r x-9')")
    synced = cli_process("sync", str(path), "--json")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert '"deleted": 1' in synced.stdout and '"created": 0' in synced.stdout and '"updated": 2' in synced.stdout
    assert md5_in_byte_order(pg_url) == md5_in_byte_order(pg_url2)
    assert cli_process("verify", str(path)).returncode == 0


@pytest.mark.postgres
def test_a_load_killed_and_resumed_across_two_collations_keeps_every_row(tmp_path: Path, pg_url: str,
                                                                         pg_url2: str) -> None:
    from migrate.plan.loader import load_plan
    from migrate.state.journal import Journal

    two_orders(pg_url, pg_url2, 25_000)  # 200,000 rows
    path = plan(tmp_path, pg_url, pg_url2, chunk_rows=2000)
    runner = start_cli("run", str(path))
    journal_url = load_plan(path).state_url
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill only once real work is under way: some chunks done, not all
        try:
            done = sum(1 for c in Journal(journal_url).chunks("epr", "load").values() if c[0] == "done")
        except Exception:  # noqa: BLE001 - the journal may not exist yet
            done = 0
        if done >= 5:
            break
        time.sleep(0.05)
    assert runner.poll() is None, "the load finished before it could be interrupted"
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    resumed = cli_process("run", str(path))
    assert resumed.returncode == 0, resumed.stderr
    assert md5_in_byte_order(pg_url) == md5_in_byte_order(pg_url2)
    assert md5_in_byte_order(pg_url2)[0] == 200_000
