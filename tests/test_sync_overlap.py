"""Watermark sync between two PostgreSQL servers: rows inside the overlap are compared by checksums in each
database and copied only where they differ; row hashes stand for row text only where that is exact."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine
from test_db_postgres import dsn, pg
from test_db_sqlite import Harness
from test_direction import table_md5

from migrate.databases.checksum import KeyRangeChecksum
from migrate.databases.dialects.postgresql import record_hash_types

pytestmark = pytest.mark.postgres

STAMP = "timestamptz '2026-01-01 00:00:00+00'"


def overlap_plan(folder: Path, source: str, target: str, chunk_rows: int = 800) -> Path:
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: overlap
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - {{name: obs, source: src, target: dst, tables: [obs], chunk_rows: {chunk_rows}, parallel: 2,
             incremental: {{column: updated_at, overlap: 60s}}}}
        """), encoding="utf-8")
    return path


def versions(url: str) -> dict[int, str]:
    """Each row's xmin: the transaction that last wrote it (a rewritten row gets a new one)."""
    return dict(pg(url, "SELECT id, xmin::text FROM obs"))


@pytest.mark.parametrize("chunk_rows", [800, 100_000], ids=["ranges", "one-range"])
def test_a_bulk_stamped_table_is_compared_not_copied_and_late_commits_in_the_overlap_are_caught(
        pg_url: str, pg_url2: str, tmp_path: Path, chunk_rows: int) -> None:
    pg(pg_url, "CREATE TABLE obs (id bigint PRIMARY KEY, value numeric(12,4), note text, updated_at timestamptz "
               "NOT NULL)")
    pg(pg_url, f"INSERT INTO obs SELECT g, g / 7.0, 'note ' || g, {STAMP} FROM generate_series(1, 5000) g")
    h = Harness(overlap_plan(tmp_path, pg_url, pg_url2, chunk_rows))
    h.run()
    before = versions(pg_url2)
    # every row shares the watermark: all of them sit in the overlap, and all are equal
    quiet = h.engine.sync(h.ctx)
    assert (quiet.created, quiet.updated, quiet.deleted) == (0, 0, 0)
    assert quiet.metrics["rows_read"] == 0  # compared in each database, not read again
    assert versions(pg_url2) == before  # nothing written again
    # commits that land late with an older watermark (inside the overlap), one ordinary update, one delete
    pg(pg_url, f"UPDATE obs SET value = -1, updated_at = {STAMP} - interval '30 seconds' WHERE id IN (10, 4000)")
    pg(pg_url, "UPDATE obs SET note = NULL WHERE id = 2500")  # keeps the shared stamp: still in the overlap
    pg(pg_url, f"INSERT INTO obs VALUES (9001, 1.5, 'late', {STAMP} - interval '10 seconds')")
    pg(pg_url, "UPDATE obs SET note = 'fresh', updated_at = now() WHERE id = 12")
    pg(pg_url, "DELETE FROM obs WHERE id = 77")
    result = h.engine.sync(h.ctx)
    assert (result.created, result.updated, result.deleted) == (1, 4, 1)
    assert result.metrics["rows_read"] == 5  # the changed rows, not the 5,000 of the overlap
    assert table_md5(dsn(pg_url), "obs") == table_md5(dsn(pg_url2), "obs")
    after = versions(pg_url2)
    rewritten = {i for i in after if before.get(i) != after[i]}
    assert rewritten == {10, 4000, 2500, 9001, 12}
    again = h.engine.sync(h.ctx)
    assert (again.created, again.updated, again.deleted) == (0, 0, 0)
    h.close()


def test_row_hashes_stand_for_row_text_only_for_types_that_hash_exactly(pg_url: str) -> None:
    pg(pg_url, "CREATE TYPE mood AS ENUM ('calm', 'cross')")
    pg(pg_url, "CREATE DOMAIN mrn AS text")
    pg(pg_url, "CREATE TABLE plain (id bigint PRIMARY KEY, a text, b numeric, c timestamptz, d uuid, e bytea, "
               "f boolean, g date, h jsonb, i varchar(9), j mrn, k double precision)")
    pg(pg_url, "CREATE TABLE odd (id bigint PRIMARY KEY, m mood, span interval, doc json)")
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        found = record_hash_types(conn, "plain", ["id", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"])
        assert found is not None and found[1] == found[10] == 25  # the domain hashes as its base type, text
        assert record_hash_types(conn, "odd", ["id"]) is not None
        for column in ("m", "span", "doc"):  # an enum hashes its OID; '1 day' = '24 hours'; json has no hash
            assert record_hash_types(conn, "odd", ["id", column]) is None
    engine.dispose()


def test_verify_between_postgres_servers_finds_differences_a_row_hash_would_hide(
        pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    pg(pg_url, "CREATE TABLE obs (id bigint PRIMARY KEY, span interval, note text, updated_at timestamptz "
               "NOT NULL)")
    pg(pg_url, f"INSERT INTO obs SELECT g, interval '1 day', 'n' || g, {STAMP} FROM generate_series(1, 3000) g")
    h = Harness(overlap_plan(tmp_path, pg_url, pg_url2))
    h.run()
    assert h.engine.verify(h.ctx).clean
    with psycopg.connect(dsn(pg_url2), autocommit=True) as conn:
        conn.execute("UPDATE obs SET span = interval '24 hours' WHERE id = 42")  # equal as intervals, not as text
        conn.execute("UPDATE obs SET note = 'tampered' WHERE id = 43")
    found = {(d.kind, d.key) for d in h.engine.verify(h.ctx).differences}
    assert found == {("different", "obs:id=42"), ("different", "obs:id=43")}
    h.close()


def test_a_cycle_interrupted_between_its_merge_and_the_overlap_keeps_the_old_watermark(
        pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg(pg_url, "CREATE TABLE obs (id bigint PRIMARY KEY, value numeric(12,4), note text, updated_at timestamptz "
               "NOT NULL)")
    pg(pg_url, f"INSERT INTO obs SELECT g, g / 7.0, 'note ' || g, {STAMP} FROM generate_series(1, 3000) g")
    h = Harness(overlap_plan(tmp_path, pg_url, pg_url2))
    h.run()
    pg(pg_url, "UPDATE obs SET note = 'fresh', updated_at = now() WHERE id = 5")  # far past the overlap
    pg(pg_url, f"UPDATE obs SET value = -1, updated_at = {STAMP} - interval '30 seconds' WHERE id = 2000")  # late
    key = f"wm:{h.engine._pairs()[0].label}"
    before = h.journal.get("obs", key)

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C, or kill -9, after the merge of new rows committed

    monkeypatch.setattr(KeyRangeChecksum, "compare", interrupted)
    with pytest.raises(KeyboardInterrupt):
        h.engine.sync(h.ctx)
    assert h.journal.get("obs", key) == before  # the overlap was not compared: the watermark stays
    monkeypatch.undo()
    h.engine.sync(h.ctx)
    assert table_md5(dsn(pg_url), "obs") == table_md5(dsn(pg_url2), "obs")  # the late row arrived too
    h.close()


def test_a_target_whose_only_unique_index_on_the_key_is_partial_is_merged_by_replacing_rows(
        pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    """ON CONFLICT cannot use a partial unique index (nor a deferred one): such a target is merged by deleting
    the staged keys and inserting the rows, not refused with 'no unique or exclusion constraint matching'."""
    pg(pg_url, "CREATE TABLE readings (id bigint NOT NULL, note text, updated_at timestamptz NOT NULL)")
    pg(pg_url, f"INSERT INTO readings SELECT g, 'note ' || g, {STAMP} FROM generate_series(1, 500) g")
    path = overlap_plan(tmp_path, pg_url, pg_url2)
    path.write_text(path.read_text().replace("tables: [obs]", "tables: [{name: readings, key: [id]}]"),
                    encoding="utf-8")
    h = Harness(path)
    h.run()
    pg(pg_url2, "CREATE UNIQUE INDEX readings_positive ON readings (id) WHERE id > 0")
    pg(pg_url, "UPDATE readings SET note = 'fresh', updated_at = now() WHERE id IN (7, 8)")
    pg(pg_url, "INSERT INTO readings VALUES (501, 'new', now())")
    result = h.engine.sync(h.ctx)
    assert (result.created, result.updated) == (1, 2)
    assert table_md5(dsn(pg_url), "readings") == table_md5(dsn(pg_url2), "readings")
    h.close()
