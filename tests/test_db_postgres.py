"""PostgreSQL: PostgreSQL to PostgreSQL and SQLite to PostgreSQL on a real throwaway cluster."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from test_db_sqlite import Harness, build_source

from migrate.errors import EndpointError, MigrateError

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]

PG_SCHEMA = """
CREATE TABLE patients (id bigint PRIMARY KEY, mrn uuid NOT NULL UNIQUE, name text NOT NULL, born date,
  weight numeric(5,1), active boolean NOT NULL DEFAULT true, photo bytea, updated_at timestamptz NOT NULL);
CREATE TABLE encounters (id bigint PRIMARY KEY, patient_id bigint NOT NULL REFERENCES patients(id),
  ward varchar(40), started_at timestamptz NOT NULL, score double precision, updated_at timestamptz NOT NULL);
CREATE INDEX ix_encounters_patient ON encounters (patient_id);
CREATE TABLE observations (encounter_id bigint NOT NULL REFERENCES encounters(id), seq int NOT NULL,
  code text NOT NULL, value numeric(12,4), note text, observed_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL, PRIMARY KEY (encounter_id, seq));
"""

PG_ROWS = """
INSERT INTO patients SELECT g, md5(g::text)::uuid,
  (ARRAY['Siân Ó Briain','Zoë Ng','李小龙','Ægir'])[1 + g % 4] || ' ' || g,
  date '1950-01-01' + g, CASE WHEN g % 7 = 0 THEN NULL ELSE 50 + (g % 300) / 10.0 END, g % 5 <> 0,
  CASE WHEN g % 3 = 0 THEN NULL WHEN g % 3 = 1 THEN '\\x'::bytea ELSE decode(md5(g::text), 'hex') END,
  timestamptz '2024-03-01 08:00:00+00' + g * interval '1 minute' FROM generate_series(1, {patients}) g;
INSERT INTO encounters SELECT g, 1 + g % {patients}, CASE WHEN g % 9 = 0 THEN NULL ELSE 'Ward ' || (g % 12) END,
  timestamptz '2024-03-01 08:00:00+00' + g * interval '1 second', g / 3.0,
  timestamptz '2024-03-01 08:00:00+00' + g * interval '1 second' FROM generate_series(1, {encounters}) g;
INSERT INTO observations SELECT e, s, 'LOINC-' || s, CASE WHEN s = 4 THEN NULL ELSE e / 8.0 + s END,
  CASE WHEN s = 1 THEN NULL WHEN s = 2 THEN '' ELSE 'note ✓ ' || e END,
  timestamptz '2024-03-01 08:00:00.123456+00' + e * interval '1 second',
  timestamptz '2024-03-01 08:00:00+00' + e * interval '1 second'
  FROM generate_series(1, {encounters}) e, generate_series(1, 4) s;
ANALYZE;
"""


def dsn(url: str) -> str:
    u = make_url(url)
    return f"host={u.host} port={u.port} user={u.username} dbname={u.database}" + \
        (f" password={u.password}" if u.password else "")


def pg(url: str, sql: str, params: tuple | None = None) -> list[tuple]:
    with psycopg.connect(dsn(url), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def fill(url: str, patients: int = 500, encounters: int = 1500) -> int:
    pg(url, PG_SCHEMA)
    pg(url, PG_ROWS.format(patients=patients, encounters=encounters))
    return patients + encounters * 5


def plan(folder: Path, source: str, target: str, extra: str = "", chunk_rows: int = 700) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: pgtest
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - name: epr
            source: src
            target: dst
            incremental: {{column: updated_at, overlap: 60s}}
            chunk_rows: {chunk_rows}
            parallel: 3
        """) + extra, encoding="utf-8")
    return path


TABLES = {"patients": "id", "encounters": "id", "observations": "encounter_id, seq"}


def same_rows(a: str, b: str) -> None:
    for table, order in TABLES.items():
        assert pg(a, f"SELECT * FROM {table} ORDER BY {order}") == pg(b, f"SELECT * FROM {table} ORDER BY {order}")


COLUMNS_SQL = """SELECT c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1, 2"""


def test_postgres_to_postgres_keeps_types_constraints_and_rows(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    total = fill(pg_url)
    h = Harness(plan(tmp_path, pg_url, pg_url2))
    preview = h.engine.preview(h.ctx)
    assert preview.create == total
    assert pg(pg_url2, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    h.run()
    same_rows(pg_url, pg_url2)
    assert pg(pg_url2, COLUMNS_SQL) == pg(pg_url, COLUMNS_SQL)
    constraints = "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = " \
                  "'public'::regnamespace ORDER BY 1"
    assert {r[2] for r in pg(pg_url2, constraints)} == {r[2] for r in pg(pg_url, constraints)}
    assert ("ix_encounters_patient",) in pg(pg_url2, "SELECT indexname FROM pg_indexes")
    # analyzed after the load: column statistics exist only once ANALYZE ran (an index build does not make them)
    assert pg(pg_url2, "SELECT DISTINCT tablename FROM pg_stats WHERE schemaname = 'public' ORDER BY 1") == \
        [("encounters",), ("observations",), ("patients",)]
    result = h.engine.verify(h.ctx)
    assert result.clean and result.checked == total
    h.close()


def test_sqlite_to_postgres_maps_types_and_verifies(tmp_path: Path, pg_url: str) -> None:
    build_source(tmp_path / "source.db")
    h = Harness(plan(tmp_path, "sqlite:///source.db", pg_url))
    h.run()
    types = {(r[0], r[2]): r[3] for r in pg(pg_url, COLUMNS_SQL)}
    assert types[("patients", "id")] == "bigint"
    assert types[("patients", "weight_kg")] == "numeric(5,1)"
    assert types[("patients", "active")] == "boolean"
    assert types[("patients", "born")] == "date"
    assert types[("patients", "updated_at")] == "timestamp without time zone"
    assert types[("observations", "value")] == "numeric(12,4)"
    row = pg(pg_url, "SELECT name, weight_kg, active, born FROM patients WHERE id = 9")[0]
    assert row == ("Zoë Ng 9", Decimal("69.5"), True, datetime(1959, 1, 19).date())
    assert pg(pg_url, "SELECT count(*) FILTER (WHERE note IS NULL), count(*) FILTER (WHERE note = '') "
                      "FROM observations") == [(900, 900)]
    assert pg(pg_url, "SELECT value FROM observations WHERE encounter_id = 3 AND seq = 1") == [(Decimal("3.0001"),)]
    result = h.engine.verify(h.ctx)
    assert result.clean, result.differences[:5]
    assert result.checked == 4800
    # the same tampering as on PostgreSQL sources is found across dialects too
    pg(pg_url, "UPDATE observations SET note = 'x' WHERE encounter_id = 2 AND seq = 1")
    pg(pg_url, "UPDATE patients SET updated_at = updated_at + interval '1 microsecond' WHERE id = 8")
    found = {(d.kind, d.key, d.detail) for d in h.engine.verify(h.ctx).differences}
    assert found == {("different", "observations:encounter_id=2, seq=1", "columns: note"),
                     ("different", "patients:id=8", "columns: updated_at")}
    h.close()


def test_postgres_to_sqlite_round_trips_uuid_bytea_and_timestamptz(tmp_path: Path, pg_url: str) -> None:
    total = fill(pg_url, patients=200, encounters=400)
    h = Harness(plan(tmp_path, pg_url, "sqlite:///copy.db"))
    h.run()
    assert h.engine.verify(h.ctx).clean
    conn = sqlite3.connect(tmp_path / "copy.db")
    mrn, photo, stamp = conn.execute("SELECT mrn, photo, updated_at FROM patients WHERE id = 2").fetchone()
    assert uuid.UUID(mrn) == pg(pg_url, "SELECT mrn FROM patients WHERE id = 2")[0][0]
    assert photo == pg(pg_url, "SELECT photo FROM patients WHERE id = 2")[0][0]
    assert stamp == "2024-03-01 08:02:00.000000+00:00"
    assert sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES) == total
    conn.close()
    h.close()


def test_verify_names_tampered_rows_including_null_to_text(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    fill(pg_url)
    h = Harness(plan(tmp_path, pg_url, pg_url2))
    h.run()
    pg(pg_url2, "UPDATE observations SET note = 'typed in' WHERE encounter_id = 10 AND seq = 1")  # NULL -> text
    pg(pg_url2, "UPDATE observations SET note = NULL WHERE encounter_id = 11 AND seq = 2")  # '' -> NULL
    pg(pg_url2, "UPDATE patients SET mrn = gen_random_uuid(), photo = '\\x00' WHERE id = 5")
    pg(pg_url2, "UPDATE patients SET active = NOT active, weight = weight + 0.1 WHERE id = 6")
    pg(pg_url2, "UPDATE encounters SET started_at = started_at + interval '1 microsecond' WHERE id = 77")
    pg(pg_url2, "UPDATE encounters SET score = score + 1e-12 WHERE id = 78")  # floats compare exactly
    pg(pg_url2, "DELETE FROM observations WHERE encounter_id = 1200 AND seq = 4")
    pg(pg_url2, "INSERT INTO observations VALUES (1200, 5, 'x', 1, NULL, now(), now())")
    found = {(d.kind, d.key, d.detail) for d in h.engine.verify(h.ctx).differences}
    assert found == {
        ("different", "observations:encounter_id=10, seq=1", "columns: note"),
        ("different", "observations:encounter_id=11, seq=2", "columns: note"),
        ("different", "patients:id=5", "columns: mrn,photo"),
        ("different", "patients:id=6", "columns: weight,active"),
        ("different", "encounters:id=77", "columns: started_at"),
        ("different", "encounters:id=78", "columns: score"),
        ("missing_on_target", "observations:encounter_id=1200, seq=4", ""),
        ("missing_on_source", "observations:encounter_id=1200, seq=5", ""),
    }
    h.close()


def test_sync_picks_up_inserts_updates_and_deletes(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    fill(pg_url)
    h = Harness(plan(tmp_path, pg_url, pg_url2))
    h.run()
    pg(pg_url, "INSERT INTO patients VALUES (501, gen_random_uuid(), 'Nia', NULL, NULL, true, NULL, now())")
    pg(pg_url, "INSERT INTO encounters VALUES (1501, 501, 'Ward Ω', now(), NULL, now())")
    pg(pg_url, "UPDATE patients SET name = 'Renamed', photo = NULL, updated_at = now() WHERE id IN (3, 4)")
    pg(pg_url, "UPDATE observations SET note = NULL, updated_at = now() WHERE encounter_id = 9 AND seq = 3")
    pg(pg_url, "DELETE FROM observations WHERE encounter_id IN (20, 21)")
    pg(pg_url, "DELETE FROM encounters WHERE id = 20")
    result = h.engine.sync(h.ctx)
    assert (result.created, result.updated, result.deleted) == (2, 3, 9)
    assert result.lag_seconds == 0.0
    assert h.engine.verify(h.ctx).clean
    same_rows(pg_url, pg_url2)
    quiet = h.engine.sync(h.ctx)
    assert (quiet.created, quiet.updated, quiet.deleted) == (0, 0, 0)
    h.close()


def test_writes_during_the_load_are_caught_by_sync(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    fill(pg_url, patients=2000, encounters=8000)
    h = Harness(plan(tmp_path, pg_url, pg_url2))
    h.engine.preflight(h.ctx)
    h.engine.schema(h.ctx)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            h.engine.load(h.ctx)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=load)
    worker.start()
    writes = 0
    while worker.is_alive() or writes < 5:
        writes += 1
        pg(pg_url, "UPDATE observations SET note = %s, updated_at = now() WHERE encounter_id = %s AND seq = 3",
           (f"during load {writes}", 1 + (writes * 997) % 8000))
        pg(pg_url, "INSERT INTO encounters VALUES (%s, 1, 'late', now(), NULL, now())", (100_000 + writes,))
        pg(pg_url, "DELETE FROM observations WHERE encounter_id = %s AND seq = 4", (1 + (writes * 613) % 8000,))
        time.sleep(0.005)
    worker.join()
    assert not errors and writes >= 5
    h.engine.sync(h.ctx)
    assert h.engine.verify(h.ctx).clean
    same_rows(pg_url, pg_url2)
    h.close()


KILLABLE_LOAD = """
import sys, time
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from migrate.databases import load as loading
from test_db_sqlite import Harness

real = loading.copy_range
def paced(pair, rng, mode="replace"):
    if pair.label == "observations":  # tables are copied side by side, each opened whole: this one last
        time.sleep(1.0)
    rows = real(pair, rng, mode)
    time.sleep(0.02)  # committed, not yet journaled: the worst moment to die
    return rows
loading.copy_range = paced
h = Harness({plan!r})
h.engine.preflight(h.ctx)
h.engine.schema(h.ctx)
h.engine.load(h.ctx)
print("finished")
"""


def test_kill_9_during_load_resumes_with_exact_counts(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    total = fill(pg_url, patients=3000, encounters=12000)
    plan_path = plan(tmp_path, pg_url, pg_url2)
    script = tmp_path / "load.py"
    script.write_text(KILLABLE_LOAD.format(repo=str(REPO), tests=str(REPO / "tests"), plan=str(plan_path)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    journal = tmp_path / ".migrate" / "pgtest.db"
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists():
            try:
                conn = sqlite3.connect(journal, timeout=1)
                done = conn.execute("SELECT count(*) FROM chunks WHERE status = 'done'").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                done = 0
            if done >= 8:
                break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = sum(pg(pg_url2, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES)
    assert 0 < partial < total
    h = Harness(plan_path)
    result = h.engine.load(h.ctx)
    assert result.metrics["rows"] == total
    for table in TABLES:
        assert pg(pg_url2, f"SELECT count(*) FROM {table}") == pg(pg_url, f"SELECT count(*) FROM {table}")
    verify = h.engine.verify(h.ctx)
    assert verify.clean and verify.checked == total
    h.close()


def test_connection_errors_are_one_line_with_the_name_and_no_password(pg_cluster, pg_url: str,
                                                                       tmp_path: Path) -> None:
    fill(pg_url, patients=10, encounters=10)
    secret = "S3cret-Pass-91"
    pg(pg_url, f"CREATE ROLE clinician LOGIN PASSWORD '{secret}'")
    good = make_url(pg_url).set(username="clinician", password=secret)
    wrong = good.set(password="not-" + secret)
    down = good.set(port=1)
    cases = [
        (wrong, "bad credentials"),
        (down, "server unreachable"),
        (good, "permission denied"),  # clinician may log in but not read the tables
    ]
    for number, (url, cause) in enumerate(cases):
        folder = tmp_path / str(number)
        h = Harness(plan(folder, url.render_as_string(hide_password=False), "sqlite:///t.db"))
        with pytest.raises(EndpointError) as caught:
            h.engine.preflight(h.ctx)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith("source connection 'src' (postgresql+psycopg://clinician:***@")
        assert cause in message
        assert secret not in message
        h.close()
    pg(pg_url, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO clinician")
    h = Harness(plan(tmp_path / "ok", good.render_as_string(hide_password=False), "sqlite:///t.db",
                     extra="    tables: [patients, ward_rounds]\n"))
    with pytest.raises(EndpointError, match="source connection 'src' .*: table 'ward_rounds' not found"):
        h.engine.preflight(h.ctx)
    h.close()


def test_text_keys_keep_one_order_across_dialects(pg_cluster, tmp_path: Path) -> None:
    """SQLite orders text by code point; a PostgreSQL database with a linguistic (ICU) collation does not.
    Chunk ranges and bisection must still put every key in the same range on both sides."""
    name = f"icu_{uuid.uuid4().hex[:8]}"
    try:
        pg(pg_cluster.url(), f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                             "LOCALE 'C.UTF-8'")
    except psycopg.Error as exc:
        pytest.skip(f"no ICU collation in this PostgreSQL: {exc}")
    target = pg_cluster.url(name)
    assert pg(target, "SELECT 'a' < 'B' COLLATE \"default\"") == [(True,)]  # linguistic, not code point
    conn = sqlite3.connect(tmp_path / "source.db")
    conn.execute("CREATE TABLE wards (code TEXT PRIMARY KEY, name TEXT, updated_at TIMESTAMP)")
    codes = [f"{prefix}{n}" for prefix in ("a", "B", "ä", "Z", "é", "É", "10", "9", "_x", "ß") for n in range(30)]
    conn.executemany("INSERT INTO wards VALUES (?, ?, '2024-01-01 00:00:00')", [(c, f"Ward {c}") for c in codes])
    conn.commit()
    conn.close()
    h = Harness(plan(tmp_path, "sqlite:///source.db", target, extra="    tables: [wards]\n", chunk_rows=7))
    h.run()
    assert pg(target, "SELECT count(*) FROM wards") == [(300,)]
    result = h.engine.verify(h.ctx)
    assert result.clean, result.differences[:5]
    pg(target, "UPDATE wards SET name = NULL WHERE code = 'ä7'")
    pg(target, "DELETE FROM wards WHERE code = 'B12'")
    found = {(d.kind, d.key, d.detail) for d in h.engine.verify(h.ctx).differences}
    assert found == {("different", "wards:code=ä7", "columns: name"), ("missing_on_target", "wards:code=B12", "")}
    synced = h.engine.sync(h.ctx)
    assert (synced.created, synced.updated, synced.deleted) == (1, 1, 0)
    assert h.engine.verify(h.ctx).clean
    h.close()


def test_empty_table_loads_verifies_and_syncs(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    pg(pg_url, PG_SCHEMA)
    h = Harness(plan(tmp_path, pg_url, pg_url2))
    h.run()
    assert h.engine.verify(h.ctx).clean
    pg(pg_url, "INSERT INTO patients VALUES (1, gen_random_uuid(), 'First', NULL, NULL, true, NULL, now())")
    synced = h.engine.sync(h.ctx)
    assert (synced.created, synced.updated, synced.deleted) == (1, 0, 0)
    assert pg(pg_url2, "SELECT name FROM patients") == [("First",)]
    h.close()


def test_schema_qualified_tables_with_their_own_watermark(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    pg(pg_url, "CREATE SCHEMA clinical; CREATE TABLE clinical.alerts (id int PRIMARY KEY, msg text, "
               "raised_at timestamptz NOT NULL); INSERT INTO clinical.alerts SELECT g, 'alert ' || g, "
               "timestamptz '2024-01-01' + g * interval '1 minute' FROM generate_series(1, 50) g")
    extra = "    tables: [{name: clinical.alerts, incremental: {column: raised_at, overlap: 0s}}]\n"
    h = Harness(plan(tmp_path, pg_url, pg_url2, extra=extra))
    h.run()
    assert pg(pg_url2, "SELECT count(*) FROM clinical.alerts") == [(50,)]
    pg(pg_url, "UPDATE clinical.alerts SET msg = 'escalated', raised_at = now() WHERE id = 7")
    synced = h.engine.sync(h.ctx)
    assert (synced.updated, synced.lag_detail["clinical.alerts"]["watermark"]) == (1, "raised_at")
    assert h.engine.verify(h.ctx).clean
    h.close()


def test_lossy_types_are_refused_unless_accepted(pg_url: str, tmp_path: Path) -> None:
    pg(pg_url, "CREATE TABLE waits (id int PRIMARY KEY, waited interval, tags text[]); "
               "INSERT INTO waits VALUES (1, interval '90 minutes', ARRAY['a', 'b'])")
    h = Harness(plan(tmp_path / "refuse", pg_url, "sqlite:///t.db"))
    with pytest.raises(MigrateError, match="refusing lossy type mappings.*waits.waited: interval has no "
                                           "equivalent.*waits.tags: text.. has no equivalent"):
        h.engine.preflight(h.ctx)
    h.close()
    h = Harness(plan(tmp_path / "accept", pg_url, "sqlite:///t.db", extra="    accept_lossy: true\n"))
    h.run()
    conn = sqlite3.connect(tmp_path / "accept" / "t.db")
    assert conn.execute("SELECT waited, tags FROM waits").fetchall() == [("01:30:00", "{a,b}")]
    conn.close()
    assert h.engine.verify(h.ctx).clean
    h.close()
