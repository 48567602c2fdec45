"""Values compare exactly: floats by the shortest text that reads back, the same on PostgreSQL (float8out /
float4out) and in Python (SQLite's side and row comparisons); -0 equals 0; NaN and Infinity are values."""

from __future__ import annotations

import math
import random
import sqlite3
import struct
import textwrap
from pathlib import Path

import pytest
from test_db_postgres import pg, plan

from helpers import cli_process
from migrate.databases.values import float_text


def random_floats(n: int) -> list[float]:
    rng = random.Random(20261128)
    values = [1e15, 1e14, 1e16, 1e-4, 1e-5, 0.1, 1 / 3, 1e20, 1.000000000000001e20, 5e-324, 1.7976931348623157e308,
              2.2250738585072014e-308, 4000.567, 4000.571, 123.0, -2.566633e20, -0.0, math.inf, -math.inf]
    for _ in range(n):
        pick = rng.random()
        if pick < 0.4:
            value = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
            if not math.isnan(value):
                values.append(value)
        elif pick < 0.7:
            values.append(rng.uniform(-1e6, 1e6))
        else:
            values.append(round(rng.uniform(-1e4, 1e4), rng.randint(0, 6)) * 10 ** rng.randint(-8, 20))
    return values


@pytest.mark.postgres
def test_python_prints_every_float_as_postgresql_does(pg_url: str) -> None:
    values = random_floats(20_000) + [math.nan]
    rows = pg(pg_url, "SELECT CASE WHEN x = 0 THEN '0' ELSE x::text END, "
                      "CASE WHEN x = 0 THEN '0' WHEN abs(x) > 1.2e-38 AND abs(x) < 3.4e38 THEN x::float4::text END "
                      "FROM unnest(%s::float8[]) WITH ORDINALITY u(x, i) ORDER BY i", (values,))
    wrong8 = [(v, t8) for v, (t8, _) in zip(values, rows, strict=True) if float_text(v) != t8]
    wrong4 = [(v, t4) for v, (_, t4) in zip(values, rows, strict=True) if t4 and float_text(v, single=True) != t4]
    assert wrong8 == [] and wrong4 == []


@pytest.mark.postgres
def test_verify_sees_float_differences_far_below_the_old_digits(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    pg(pg_url, """CREATE TABLE readings (id int PRIMARY KEY, r real, d float8, updated_at timestamptz NOT NULL);
                  INSERT INTO readings VALUES (1, 4000.567, 1e20, now()), (2, -0.0, -0.0, now()),
                    (3, 'NaN', 'Infinity', now()), (4, 1.5, 1e-300, now()), (5, 0.1, 0.1, now())""")
    path = plan(tmp_path, pg_url, pg_url2)
    assert cli_process("run", str(path)).returncode == 0
    pg(pg_url2, "UPDATE readings SET r = 4000.571 WHERE id = 1")  # six significant digits agree
    pg(pg_url2, "UPDATE readings SET d = 1.000000000000001e20 WHERE id = 4")
    pg(pg_url2, "UPDATE readings SET r = 0.0, d = 0.0 WHERE id = 2")  # -0 and 0 are equal
    verified = cli_process("verify", str(path), "--json")
    assert verified.returncode == 3
    assert verified.stdout.count('"different"') == 2, verified.stdout
    assert "readings:id=1" in verified.stdout and "readings:id=4" in verified.stdout


@pytest.mark.postgres
def test_sqlite_floats_arrive_exactly_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    values = random_floats(500)
    with sqlite3.connect(tmp_path / "source.db") as conn:
        conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, d REAL)")
        conn.executemany("INSERT INTO readings VALUES (?, ?)", [(i, v) for i, v in enumerate(values)])
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: floats
        connections:
          src: {{url: "sqlite:///source.db"}}
          dst: {{url: "{pg_url}"}}
        databases:
          - {{name: r, source: src, target: dst, tables: ["*"], chunk_rows: 100}}
        """), encoding="utf-8")
    assert cli_process("run", str(path)).returncode == 0  # loaded and verified clean
    stored = [r[0] for r in pg(pg_url, "SELECT d FROM readings ORDER BY id")]
    assert all(a == b or (a == 0 and b == 0) for a, b in zip(stored, values, strict=True))
    pg(pg_url, "UPDATE readings SET d = d * (1 + 1e-15) WHERE id = 42")
    assert cli_process("verify", str(path)).returncode == 3


@pytest.mark.postgres
def test_midnight_at_the_end_of_the_day_is_its_own_value(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    pg(pg_url, """CREATE TABLE shifts (id int PRIMARY KEY, ends time, updated_at timestamptz NOT NULL);
                  INSERT INTO shifts VALUES (1, '24:00:00', now()), (2, '00:00:00', now())""")
    path = plan(tmp_path, pg_url, pg_url2)
    assert cli_process("run", str(path)).returncode == 0
    pg(pg_url2, "UPDATE shifts SET ends = '00:00:00' WHERE id = 1")
    verified = cli_process("verify", str(path), "--json")
    assert verified.returncode == 3 and "shifts:id=1" in verified.stdout and "shifts:id=2" not in verified.stdout


@pytest.mark.postgres
def test_char_n_to_sqlite_converges(tmp_path: Path, pg_url: str) -> None:
    pg(pg_url, """CREATE TABLE wards (code char(20) PRIMARY KEY, name char(20), updated_at timestamptz NOT NULL);
                  INSERT INTO wards SELECT 'W' || g, 'ward ' || g, now() - interval '1 day'
                  FROM generate_series(1, 40) g""")
    path = tmp_path / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: chars
        connections:
          src: {{url: "{pg_url}"}}
          dst: {{url: "sqlite:///target.db"}}
        databases:
          - {{name: w, source: src, target: dst, tables: ["*"], incremental: {{column: updated_at, overlap: 60s}}}}
        """), encoding="utf-8")
    ran = cli_process("run", str(path))
    assert ran.returncode == 0, ran.stderr  # loaded and verified clean
    with sqlite3.connect(tmp_path / "target.db") as conn:
        assert conn.execute("SELECT code, name FROM wards WHERE code = 'W7'").fetchone() == ("W7", "ward 7")
    pg(pg_url, "UPDATE wards SET name = 'renamed', updated_at = now() WHERE code = 'W3'")
    for expected in ('"updated": 1', '"updated": 0'):  # the change once, then nothing: converged
        synced = cli_process("sync", str(path), "--json")
        assert synced.returncode == 0 and expected in synced.stdout, synced.stdout + synced.stderr
    assert cli_process("verify", str(path)).returncode == 0
