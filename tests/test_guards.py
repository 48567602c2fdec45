"""The mass-delete guard and listings with problems: an emptied or broken source never empties the target.
Both sides are compared outside the tool (sha256 of rows and of bytes)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from helpers import cli_process, loaded_estate, table_rows, tree_hashes


@pytest.fixture
def estate(tmp_path: Path) -> Path:
    return loaded_estate(tmp_path / "estate", patients=300, letters=300)


def source_sql(plan: Path, sql: str) -> None:
    with sqlite3.connect(plan.parent / "onprem" / "ppm.db") as conn:
        conn.execute(sql)


def target_db(plan: Path) -> Path:
    return plan.parent / "azure" / "ppm.db"


def test_an_emptied_source_table_is_refused_and_the_target_keeps_its_rows(estate: Path) -> None:
    before = table_rows(target_db(estate))
    assert len(before["observations"]) > 1000
    source_sql(estate, "DELETE FROM observations")  # SQLite's TRUNCATE
    refused = cli_process("sync", str(estate))
    assert refused.returncode == 1, refused.stderr
    assert "mass delete refused, nothing was deleted" in refused.stderr
    assert "table observations: the source is empty" in refused.stderr and "--allow-mass-delete" in refused.stderr
    assert table_rows(target_db(estate)) == before  # not one row deleted
    allowed = cli_process("sync", str(estate), "--allow-mass-delete")
    assert allowed.returncode == 0, allowed.stderr
    assert table_rows(target_db(estate))["observations"] == []


def test_a_cycle_deleting_over_half_and_over_100_rows_is_refused(estate: Path) -> None:
    total = len(table_rows(target_db(estate))["observations"])
    source_sql(estate, "DELETE FROM observations WHERE rowid % 10 < 4")  # 40%: an ordinary cycle
    ordinary = cli_process("sync", str(estate), "--json")
    assert ordinary.returncode == 0, ordinary.stderr
    left = table_rows(target_db(estate))["observations"]
    assert 0.55 * total < len(left) < 0.65 * total
    source_sql(estate, "DELETE FROM observations WHERE rowid % 10 < 8")  # two thirds of what is left
    refused = cli_process("sync", str(estate))
    assert refused.returncode == 1 and "table observations:" in refused.stderr and "would be deleted" in refused.stderr
    assert table_rows(target_db(estate))["observations"] == left


def test_blob_deletes_past_the_guard_are_refused(estate: Path) -> None:
    letters = estate.parent / "onprem" / "letters"
    files = sorted(p for p in letters.rglob("*") if p.is_file())
    for path in files[:120]:  # 40%
        path.unlink()
    assert cli_process("sync", str(estate)).returncode == 0
    kept = tree_hashes(estate.parent / "azure" / "letters")
    assert len(kept) == len(files) - 120
    for path in files[120:240]:  # 120 of the 180 left
        path.unlink()
    refused = cli_process("sync", str(estate))
    assert refused.returncode == 1 and "blob set letters: 120 of 180 would be deleted" in refused.stderr
    assert tree_hashes(estate.parent / "azure" / "letters") == kept
    assert cli_process("sync", str(estate), "--allow-mass-delete").returncode == 0
    assert tree_hashes(estate.parent / "azure" / "letters") == tree_hashes(letters)


def test_a_source_listing_with_problems_deletes_nothing(estate: Path) -> None:
    letters = estate.parent / "onprem" / "letters"
    victim = sorted(p for p in letters.rglob("*") if p.is_file())[0]
    victim.unlink()
    victim.symlink_to(letters / "gone-away.pdf")  # unreadable where a file was: not a deleted file
    kept = tree_hashes(estate.parent / "azure" / "letters")
    synced = cli_process("sync", str(estate))
    assert synced.returncode == 1
    assert "broken symbolic link" in synced.stderr and "deleting none of 1 files" in synced.stderr
    assert tree_hashes(estate.parent / "azure" / "letters") == kept


def test_the_lag_bound_counts_from_the_start_of_the_load_not_its_end(estate: Path) -> None:
    """A change made while a long load ran may not be on the target: the lag gate must count the load's time."""
    from migrate.plan.loader import load_plan
    from migrate.stages.gates import item_lag
    from migrate.state.journal import Journal
    from migrate.state.sync_state import SyncState

    journal = Journal(load_plan(estate).state_url)
    for item in ("patient-record", "letters"):
        log = [e for e in journal.stage_log(item) if e["stage"] == "load"]
        began = min(e["at"] for e in log if e["status"] == "running")
        ended = max(e["at"] for e in log if e["status"] == "done")
        synced_at = SyncState(journal, item).synced_at
        assert synced_at is not None and synced_at <= began  # the baseline is taken before the load reads
        assert item_lag(journal, item) >= (ended - began).total_seconds()


@pytest.mark.postgres
def test_truncate_on_a_postgres_source_leaves_the_target_whole(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    from test_db_postgres import fill, pg, plan
    from test_direction import dsn_of, table_md5

    fill(pg_url)
    path = plan(tmp_path, pg_url, pg_url2)
    assert cli_process("run", str(path)).returncode == 0
    before = {t: table_md5(dsn_of(pg_url2), t) for t in ("patients", "encounters")}
    pg(pg_url, "TRUNCATE patients, encounters, observations")
    refused = cli_process("sync", str(path))
    assert refused.returncode == 1 and "mass delete refused, nothing was deleted" in refused.stderr
    assert {t: table_md5(dsn_of(pg_url2), t) for t in before} == before  # outside the tool: untouched
