"""Every type through every path: load, sync (insert, update, delete) and verify, PostgreSQL -> PostgreSQL and
SQLite -> PostgreSQL, with extreme values; both sides compared outside the tool (md5 of COPY in key order)."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path

import pytest
from test_db_postgres import pg, plan
from test_direction import dsn_of, table_md5

from helpers import cli_process

PG_MATRIX = """
CREATE TYPE mood AS ENUM ('calm', 'agitated');
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE TABLE matrix (id int PRIMARY KEY, i2 smallint, i8 bigint, n numeric(38,10), nbig numeric, f4 real,
  f8 float8, b boolean, t text, vc varchar(20), c char(5), d date, ts timestamp, tstz timestamptz, tm time,
  u uuid, by bytea, j json, jb jsonb, ia int[], ta text[], e mood, dom positive, iv interval,
  updated_at timestamptz NOT NULL DEFAULT now() - interval '1 day');
INSERT INTO matrix VALUES
 (1, -32768, -9223372036854775808, 9999999999999999999999999999.9999999999, 1e100, 'NaN', 'Infinity', true,
  'Siân Ó Briain ✓', 'x', 'ab', '0001-01-01', '0001-01-01 00:00:00', '0001-01-01 00:00:00+00', '24:00',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '{"b": 1,  "a": [true, null]}', '{"k": {"n": 1.5}}',
  '{1,NULL,3}', '{"a,b","",NULL}', 'calm', 1, '1 year 2 days 03:04:05'),
 (2, 32767, 9223372036854775807, -9999999999999999999999999999.9999999999, -1e-100, '-Infinity', 5e-324,
  false, '', NULL, 'abcde', '9999-12-31', '9999-12-31 23:59:59.999999', '9999-12-31 23:59:59.999999+00',
  '00:00', '00000000-0000-0000-0000-000000000000', '\\x', '[]', '[1, "2", {"3": null}]', '{}', '{}',
  'agitated', 2147483647, '-1 microsecond'),
 (3, NULL, NULL, 0, 0, -0.0, 1.7976931348623157e308, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  'null', 'null', NULL, NULL, NULL, NULL, NULL);
"""


@pytest.mark.postgres
def test_every_postgresql_type_through_load_sync_and_verify(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    pg(pg_url, PG_MATRIX)
    path = plan(tmp_path, pg_url, pg_url2, chunk_rows=2)
    ran = cli_process("run", str(path))
    assert ran.returncode == 0, ran.stderr  # loaded and verified clean
    assert table_md5(dsn_of(pg_url), "matrix") == table_md5(dsn_of(pg_url2), "matrix")
    pg(pg_url, """INSERT INTO matrix SELECT 4, i2, i8, n, nbig, f4, f8, b, t, vc, c, d, ts, tstz, tm, u, by, j, jb,
                  ia, ta, e, dom, iv, now() FROM matrix WHERE id = 1""")
    pg(pg_url, """UPDATE matrix SET (i2, i8, n, nbig, f4, f8, b, t, vc, c, d, ts, tstz, tm, u, by, j, jb, ia, ta, e,
                  dom, iv, updated_at) = (SELECT i2, i8, n, nbig, f4, f8, b, t, vc, c, d, ts, tstz, tm, u, by, j, jb,
                  ia, ta, e, dom, iv, now() FROM matrix WHERE id = 1) WHERE id = 2""")
    pg(pg_url, "DELETE FROM matrix WHERE id = 3")
    synced = cli_process("sync", str(path), "--json")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert '"created": 1' in synced.stdout and '"updated": 1' in synced.stdout and '"deleted": 1' in synced.stdout
    assert table_md5(dsn_of(pg_url), "matrix") == table_md5(dsn_of(pg_url2), "matrix")
    assert cli_process("verify", str(path)).returncode == 0
    idle = cli_process("sync", str(path), "--json")
    assert '"updated": 0' in idle.stdout and '"created": 0' in idle.stdout and '"deleted": 0' in idle.stdout


SQLITE_MATRIX = """
CREATE TABLE matrix (id INTEGER PRIMARY KEY, i INTEGER, r REAL, n NUMERIC(12,4), t TEXT, v VARCHAR(30),
  b BOOLEAN, d DATE, ts TIMESTAMP, dt DATETIME, bl BLOB, u UUID, updated_at TIMESTAMP NOT NULL);
"""
SQLITE_ROWS = [
    (1, -9223372036854775808, 1e308, "12345678.1234", "Siân ✓", "x", 1, "0001-01-01", "0001-01-01 00:00:00",
     "2024-03-01 08:00:00.123456", b"\x00\xff", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2024-01-01 00:00:00"),
    (2, 9223372036854775807, 5e-324, "-0.0001", "", None, 0, "9999-12-31", "9999-12-31 23:59:59.999999",
     None, b"", None, "2024-01-01 00:00:00"),
    (3, None, float("inf"), None, None, "", None, None, None, None, None, None, "2024-01-01 00:00:00"),
]


@pytest.mark.postgres
def test_every_sqlite_type_through_load_sync_and_verify_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    with sqlite3.connect(tmp_path / "source.db") as conn:
        conn.executescript(SQLITE_MATRIX)
        conn.executemany(f"INSERT INTO matrix VALUES ({', '.join('?' * 13)})", SQLITE_ROWS)
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: sqlite-matrix
        connections:
          src: {{url: "sqlite:///source.db"}}
          dst: {{url: "{pg_url}"}}
        databases:
          - {{name: m, source: src, target: dst, tables: ["*"], chunk_rows: 2,
             incremental: {{column: updated_at, overlap: 60s}}}}
        """), encoding="utf-8")
    ran = cli_process("run", str(path))
    assert ran.returncode == 0, ran.stderr  # loaded and verified clean
    with sqlite3.connect(tmp_path / "source.db") as conn:
        conn.execute("INSERT INTO matrix SELECT 4, i, r, n, t, v, b, d, ts, dt, bl, u, '2030-01-01 00:00:00' "
                     "FROM matrix WHERE id = 1")
        conn.execute("UPDATE matrix SET (i, r, n, t, v, b, d, ts, dt, bl, u, updated_at) = (SELECT i, r, n, t, v, b, "
                     "d, ts, dt, bl, u, '2030-01-01 00:00:00' FROM matrix WHERE id = 1) WHERE id = 2")
        conn.execute("DELETE FROM matrix WHERE id = 3")
    synced = cli_process("sync", str(path), "--json")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert '"created": 1' in synced.stdout and '"updated": 1' in synced.stdout and '"deleted": 1' in synced.stdout
    assert cli_process("verify", str(path)).returncode == 0
    assert [r[0] for r in pg(pg_url, "SELECT id FROM matrix ORDER BY id")] == [1, 2, 4]
    idle = cli_process("sync", str(path), "--json")
    assert '"updated": 0' in idle.stdout and '"created": 0' in idle.stdout and '"deleted": 0' in idle.stdout
