"""SQLite to SQLite end to end: schema, chunked load, checksum verify, sync, preview, errors."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from migrate.databases import DatabaseEngine
from migrate.databases import load as loading
from migrate.errors import EndpointError, MigrateError
from migrate.plan.loader import LoadedPlan, load_plan
from migrate.stages.engine import StageContext
from migrate.state.journal import Journal

T0 = datetime(2024, 3, 1, 8, 0, 0)
NAMES = ["Siân Ó Briain", "Zoë Ng", "李小龙", "Ægir Þórsson", "O'Neil", "Ada", "José Müller", "Ngũgĩ"]

SCHEMA = """
CREATE TABLE patients (
    id INTEGER PRIMARY KEY, nhs_number TEXT NOT NULL, name TEXT NOT NULL, born DATE,
    weight_kg NUMERIC(5,1), active BOOLEAN NOT NULL DEFAULT 1, updated_at TIMESTAMP NOT NULL);
CREATE TABLE encounters (
    id INTEGER PRIMARY KEY, patient_id INTEGER NOT NULL REFERENCES patients(id), ward TEXT,
    started_at TIMESTAMP NOT NULL, ended_at TIMESTAMP, updated_at TIMESTAMP NOT NULL);
CREATE INDEX ix_encounters_patient ON encounters (patient_id);
CREATE TABLE observations (
    encounter_id INTEGER NOT NULL REFERENCES encounters(id), seq INTEGER NOT NULL, code TEXT NOT NULL,
    value NUMERIC(12,4), unit TEXT, note TEXT, observed_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (encounter_id, seq));
"""


def ts(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).strftime("%Y-%m-%d %H:%M:%S.%f")


def build_source(path: Path, patients: int = 300, per_patient: int = 3, per_encounter: int = 4) -> None:
    """A small EPR: NULLs, '' vs NULL, unicode, decimals stored as text and as numbers, timestamps."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    enc_id = 0
    for pid in range(1, patients + 1):
        weight = None if pid % 7 == 0 else (f"{60 + pid % 40}.5" if pid % 2 else 70 + pid % 30)
        conn.execute("INSERT INTO patients VALUES (?,?,?,?,?,?,?)",
                     (pid, f"{9_000_000_000 + pid}", f"{NAMES[pid % len(NAMES)]} {pid}",
                      None if pid % 11 == 0 else f"19{50 + pid % 50}-0{1 + pid % 9}-1{pid % 10}",
                      weight, pid % 5 != 0, ts(pid)))
        for _ in range(per_patient):
            enc_id += 1
            conn.execute("INSERT INTO encounters VALUES (?,?,?,?,?,?)",
                         (enc_id, pid, None if enc_id % 9 == 0 else f"Ward {enc_id % 12}", ts(enc_id),
                          None if enc_id % 3 == 0 else ts(enc_id + 90), ts(enc_id)))
            for seq in range(1, per_encounter + 1):
                note = None if seq == 1 else ("" if seq == 2 else f"note {enc_id}/{seq} — ✓")
                value = f"{enc_id % 200}.{seq:04d}" if seq % 2 else Decimal(enc_id) / 8
                conn.execute("INSERT INTO observations VALUES (?,?,?,?,?,?,?,?)",
                             (enc_id, seq, f"LOINC-{seq}", str(value) if seq != 4 else None,
                              "mmol/L", note, ts(enc_id + seq), ts(enc_id)))
    conn.commit()
    conn.close()


@dataclass
class RecordingProgress:
    advanced: dict[str, float] = field(default_factory=dict)

    def task(self, description: str, total: float | None = None, unit: str = "",
             items_total: int | None = None) -> RecordingProgress._Task:
        return RecordingProgress._Task(self, description)

    @dataclass
    class _Task:
        owner: RecordingProgress
        description: str

        def advance(self, amount: float = 1, items: int = 0) -> None:
            self.owner.advanced[self.description] = self.owner.advanced.get(self.description, 0) + amount

        def close(self) -> None:
            pass


def write_plan(folder: Path, item_extra: str = "", source: str = "source.db", target: str = "target.db") -> Path:
    plan = folder / "plan.yaml"
    plan.write_text(f"""version: 1
component: demo-epr
connections:
  src: {{url: "sqlite:///{source}"}}
  dst: {{url: "sqlite:///{target}"}}
databases:
  - name: epr
    source: src
    target: dst
    tables: ["*"]
    incremental: {{column: updated_at, overlap: 60s}}
    chunk_rows: 500
{item_extra}""", encoding="utf-8")
    return plan


class Harness:
    """A plan, its journal, and the engine of its one database item."""

    def __init__(self, plan: Path) -> None:
        self.loaded: LoadedPlan = load_plan(plan, env={})
        self.journal = Journal(self.loaded.state_url)
        self.progress = RecordingProgress()
        self.ctx = StageContext(self.loaded, self.journal, self.progress)
        self.engine = DatabaseEngine(self.loaded.plan.databases[0], self.loaded)

    def run(self) -> None:
        self.engine.preflight(self.ctx)
        self.engine.schema(self.ctx)
        self.engine.load(self.ctx)

    def close(self) -> None:
        self.engine.close()
        self.journal.close()


@pytest.fixture
def demo(tmp_path: Path) -> Harness:
    build_source(tmp_path / "source.db")
    harness = Harness(write_plan(tmp_path))
    yield harness
    harness.close()


def rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


TABLES = ("patients", "encounters", "observations")


def test_load_copies_every_row_exactly_and_verify_is_clean(demo: Harness, tmp_path: Path) -> None:
    demo.run()
    src, dst = tmp_path / "source.db", tmp_path / "target.db"
    for table in TABLES:
        order = "encounter_id, seq" if table == "observations" else "id"
        query = f"SELECT * FROM {table} ORDER BY {order}"
        assert rows(dst, query) == rows(src, query)
        # values keep their storage class too (text decimals stay text, NULL stays NULL, '' stays '')
        assert rows(dst, f"SELECT typeof(updated_at), count(*) FROM {table} GROUP BY 1") == \
            rows(src, f"SELECT typeof(updated_at), count(*) FROM {table} GROUP BY 1")
    assert rows(dst, "SELECT count(*) FROM observations WHERE note IS NULL")[0][0] == 900
    assert rows(dst, "SELECT count(*) FROM observations WHERE note = ''")[0][0] == 900
    # same dialect: names, order and declared types exactly as on the source
    for table in TABLES:
        assert rows(dst, f"PRAGMA table_info({table})") == rows(src, f"PRAGMA table_info({table})")
    assert ("ix_encounters_patient",) in rows(dst, "SELECT name FROM sqlite_master WHERE type = 'index'")
    assert rows(dst, "PRAGMA foreign_key_list(observations)")[0][2] == "encounters"
    result = demo.engine.verify(demo.ctx)
    assert result.clean, result.differences
    assert result.checked == 300 + 900 + 3600
    assert demo.progress.advanced["epr: load"] == 4800
    chunks = demo.journal.chunks("epr", "load")
    assert all(status == "done" for status, _, _ in chunks.values())
    assert sum(units for _, units, _ in chunks.values()) == 4800


def test_verify_names_every_tampered_row(demo: Harness, tmp_path: Path) -> None:
    demo.run()
    conn = sqlite3.connect(tmp_path / "target.db")
    conn.execute("UPDATE observations SET note = 'typed in' WHERE encounter_id = 17 AND seq = 1")  # NULL -> text
    conn.execute("UPDATE observations SET note = NULL WHERE encounter_id = 18 AND seq = 2")  # '' -> NULL
    conn.execute("UPDATE patients SET name = 'Someone Else', weight_kg = 99.9 WHERE id = 42")
    conn.execute("DELETE FROM encounters WHERE id = 500")
    conn.execute("INSERT INTO patients VALUES (9999, 'x', 'Ghost', NULL, NULL, 1, '2024-01-01 00:00:00')")
    conn.commit()
    conn.close()
    result = demo.engine.verify(demo.ctx)
    found = {(d.kind, d.key, d.detail) for d in result.differences}
    assert found == {
        ("different", "observations:encounter_id=17, seq=1", "columns: note"),
        ("different", "observations:encounter_id=18, seq=2", "columns: note"),
        ("different", "patients:id=42", "columns: name,weight_kg"),
        ("missing_on_target", "encounters:id=500", ""),
        ("missing_on_source", "patients:id=9999", ""),
    }
    assert all(d.item == "epr" for d in result.differences)


def test_verify_bisects_large_ranges_down_to_the_row(tmp_path: Path) -> None:
    build_source(tmp_path / "source.db", patients=600, per_encounter=5)
    plan = write_plan(tmp_path)
    plan.write_text(plan.read_text().replace("chunk_rows: 500", "chunk_rows: 100000"))
    harness = Harness(plan)
    harness.run()
    conn = sqlite3.connect(tmp_path / "target.db")
    conn.execute("UPDATE observations SET value = '1.0001' WHERE encounter_id = 1234 AND seq = 3")
    conn.commit()
    conn.close()
    engine = harness.engine
    result = engine.verify(harness.ctx)
    assert [(d.kind, d.key, d.detail) for d in result.differences] == [
        ("different", "observations:encounter_id=1234, seq=3", "columns: value")]
    assert result.metrics["tables"]["observations"]["bisected"] >= 1
    harness.close()


def test_equal_values_in_other_spellings_are_equal(demo: Harness, tmp_path: Path) -> None:
    """Normalisation: '12.5' vs 12.50, '2024-03-01T08:00:00Z' vs '2024-03-01 08:00:00', 1 vs 'true'."""
    demo.run()
    conn = sqlite3.connect(tmp_path / "target.db")
    conn.execute("UPDATE patients SET updated_at = replace(updated_at, ' ', 'T') || 'Z' WHERE id = 3")
    conn.execute("UPDATE patients SET weight_kg = '63.50' WHERE id = 3")
    conn.execute("UPDATE patients SET active = 'true' WHERE id = 4")
    conn.commit()
    conn.close()
    assert rows(tmp_path / "source.db", "SELECT weight_kg, active FROM patients WHERE id IN (3, 4)") == \
        [(63.5, 1), (74, 1)]
    assert demo.engine.verify(demo.ctx).clean


def test_sync_mirrors_inserts_updates_and_deletes(demo: Harness, tmp_path: Path) -> None:
    demo.run()
    now = datetime.now(UTC).replace(tzinfo=None)
    conn = sqlite3.connect(tmp_path / "source.db")
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    conn.execute("INSERT INTO patients VALUES (301, '9000000301', 'Nia Jones', NULL, 55.0, 1, ?)", (stamp,))
    conn.execute("INSERT INTO encounters VALUES (901, 301, 'Ward Ω', ?, NULL, ?)", (stamp, stamp))
    conn.execute("UPDATE patients SET name = 'Zoë Renamed', updated_at = ? WHERE id = 10", (stamp,))
    conn.execute("UPDATE observations SET note = NULL, updated_at = ? WHERE encounter_id = 5 AND seq = 3", (stamp,))
    conn.execute("DELETE FROM observations WHERE encounter_id = 7")
    conn.execute("DELETE FROM encounters WHERE id = 7")
    conn.commit()
    conn.close()
    result = demo.engine.sync(demo.ctx)
    assert (result.created, result.updated, result.deleted) == (2, 2, 5)
    assert result.lag_seconds == 0.0
    assert set(result.lag_detail) == set(TABLES)
    assert demo.engine.verify(demo.ctx).clean
    again = demo.engine.sync(demo.ctx)
    assert (again.created, again.updated, again.deleted) == (0, 0, 0)
    assert rows(tmp_path / "target.db", "SELECT name FROM patients WHERE id = 10") == [("Zoë Renamed",)]


def test_sync_catches_a_late_commit_inside_the_overlap(demo: Harness, tmp_path: Path) -> None:
    demo.run()
    conn = sqlite3.connect(tmp_path / "source.db")
    conn.execute("UPDATE patients SET updated_at = ? WHERE id = 5", (ts(400),))
    conn.commit()
    demo.engine.sync(demo.ctx)  # watermark now ts(400)
    # a transaction that started earlier commits now, stamped 30 s before the watermark (overlap is 60 s)
    conn.execute("UPDATE patients SET name = 'late', updated_at = ? WHERE id = 6", (ts(399.5),))
    conn.commit()
    conn.close()
    result = demo.engine.sync(demo.ctx)
    assert result.updated == 1
    assert rows(tmp_path / "target.db", "SELECT name FROM patients WHERE id = 6") == [("late",)]


def test_interrupted_load_resumes_without_duplicates(demo: Harness, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    demo.engine.preflight(demo.ctx)
    demo.engine.schema(demo.ctx)
    real = loading.copy_range
    calls = {"n": 0}

    def crash_after_three(pair, rng, fresh=False):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            real(pair, rng, fresh)  # the data commits ...
            raise KeyboardInterrupt  # ... but the process dies before the journal hears of it
        return real(pair, rng, fresh)

    monkeypatch.setattr(loading, "copy_range", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        demo.engine.load(demo.ctx)
    monkeypatch.setattr(loading, "copy_range", real)
    done_before = [c for c, (s, _, _) in demo.journal.chunks("epr", "load").items() if s == "done"]
    assert len(done_before) == 3
    result = demo.engine.load(demo.ctx)
    assert result.metrics["rows"] == 4800
    for table in TABLES:
        assert rows(tmp_path / "target.db", f"SELECT count(*) FROM {table}") == \
            rows(tmp_path / "source.db", f"SELECT count(*) FROM {table}")
    assert demo.engine.verify(demo.ctx).clean


def test_preview_writes_nothing(demo: Harness, tmp_path: Path) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    preview = demo.engine.preview(demo.ctx)
    assert not (tmp_path / "target.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert preview.units == "rows" and preview.create == 4800 and preview.changes
    assert any("create table observations" in d for d in preview.details)
    demo.run()
    target_bytes = (tmp_path / "target.db").read_bytes()
    after = demo.engine.preview(demo.ctx)
    assert (tmp_path / "target.db").read_bytes() == target_bytes
    assert (after.create, after.update, after.unchanged, after.changes) == (0, 0, 4800, False)
    assert not any("refus" in w for w in after.warnings)
    conn = sqlite3.connect(tmp_path / "source.db")
    conn.execute("UPDATE patients SET name = 'x', updated_at = ? WHERE id < 4", (ts(10_000),))
    conn.commit()
    conn.close()
    assert demo.engine.preview(demo.ctx).update == 3


def test_existing_target_rows_are_refused_unless_truncate(tmp_path: Path) -> None:
    build_source(tmp_path / "source.db", patients=20)
    conn = sqlite3.connect(tmp_path / "target.db")
    conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, nhs_number TEXT, name TEXT, born DATE, "
                 "weight_kg NUMERIC(5,1), active BOOLEAN, updated_at TIMESTAMP)")
    conn.execute("INSERT INTO patients (id, name) VALUES (1, 'precious')")
    conn.commit()
    conn.close()
    harness = Harness(write_plan(tmp_path))
    with pytest.raises(MigrateError, match="'patients'.*already holds 1 rows.*existing_target: truncate"):
        harness.engine.schema(harness.ctx)
    assert rows(tmp_path / "target.db", "SELECT name FROM patients") == [("precious",)]
    harness.close()
    harness = Harness(write_plan(tmp_path, "    existing_target: truncate\n"))
    harness.run()
    assert harness.engine.verify(harness.ctx).clean
    harness.engine.schema(harness.ctx)  # re-running schema after our own load is fine (journal knows)
    assert rows(tmp_path / "target.db", "SELECT count(*) FROM patients") == [(20,)]
    harness.close()


def test_table_without_primary_key_needs_a_key_in_the_plan(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "source.db")
    conn.execute("CREATE TABLE audit (at TIMESTAMP NOT NULL, who TEXT NOT NULL, what TEXT)")
    conn.executemany("INSERT INTO audit VALUES (?, ?, ?)", [(ts(i), f"user{i}", None) for i in range(50)])
    conn.commit()
    conn.close()
    harness = Harness(write_plan(tmp_path))
    with pytest.raises(MigrateError, match="table 'audit' .*has no primary key; name one in the plan"):
        harness.engine.preflight(harness.ctx)
    harness.close()
    plan = write_plan(tmp_path).read_text().replace('tables: ["*"]', 'tables: [{name: audit, key: [at, who]}]')
    (tmp_path / "plan.yaml").write_text(plan)
    harness = Harness(tmp_path / "plan.yaml")
    harness.run()
    assert rows(tmp_path / "target.db", "SELECT count(*) FROM audit") == [(50,)]
    assert harness.engine.verify(harness.ctx).clean
    harness.close()


def test_table_list_with_column_subset(tmp_path: Path) -> None:
    build_source(tmp_path / "source.db", patients=30)
    plan = write_plan(tmp_path).read_text().replace(
        'tables: ["*"]', 'tables: [{name: patients, columns: [name, updated_at]}, encounters]')
    (tmp_path / "plan.yaml").write_text(plan)
    harness = Harness(tmp_path / "plan.yaml")
    harness.run()
    assert [r[1] for r in rows(tmp_path / "target.db", "PRAGMA table_info(patients)")] == ["id", "name", "updated_at"]
    assert rows(tmp_path / "target.db", "SELECT name FROM sqlite_master WHERE name = 'observations'") == []
    assert harness.engine.verify(harness.ctx).clean
    harness.close()


def test_relative_sqlite_path_is_relative_to_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plans = tmp_path / "plans"
    plans.mkdir()
    build_source(plans / "source.db", patients=5)
    monkeypatch.chdir(tmp_path)
    harness = Harness(write_plan(plans))
    harness.run()
    assert (plans / "target.db").exists() and not (tmp_path / "target.db").exists()
    harness.close()


def test_missing_table_and_unreachable_database_are_one_clear_line(tmp_path: Path) -> None:
    build_source(tmp_path / "source.db", patients=5)
    plan = write_plan(tmp_path).read_text().replace('tables: ["*"]', 'tables: [patients, wards]')
    (tmp_path / "plan.yaml").write_text(plan)
    harness = Harness(tmp_path / "plan.yaml")
    with pytest.raises(EndpointError) as caught:
        harness.engine.preflight(harness.ctx)
    assert str(caught.value) == (f"source connection 'src' (sqlite:///{tmp_path}/source.db): "
                                 "table 'wards' not found")
    harness.close()
    harness = Harness(write_plan(tmp_path, source="nowhere/missing.db"))
    with pytest.raises(EndpointError) as caught:
        harness.engine.preflight(harness.ctx)
    message = str(caught.value)
    assert "\n" not in message and "source connection 'src'" in message and "does not exist" in message
    assert not (tmp_path / "nowhere").exists()  # looking did not create it
    harness.close()
