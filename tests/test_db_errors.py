"""A row the target refuses is named: the table and key range for a load, the table and the key for a sync."""

from __future__ import annotations

import sqlite3
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from helpers import cli_process


def make_plan(tmp_path: Path, target: str) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        component: errors
        connections:
          src: {{url: "sqlite:///source.db"}}
          dst: {{url: "{target}"}}
        databases:
          - name: notes
            source: src
            target: dst
            tables: ["*"]
            chunk_rows: 50
            incremental: {{column: updated_at, overlap: 60s}}
        """), encoding="utf-8")
    return plan


@pytest.mark.postgres
def test_load_and_sync_errors_name_the_table_the_range_and_the_key(tmp_path: Path, pg_url: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    with sqlite3.connect(tmp_path / "source.db") as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, updated_at TIMESTAMP NOT NULL)")
        conn.executemany("INSERT INTO notes VALUES (?, ?, ?)", [(i, f"note {i}", stamp) for i in range(1, 201)])
        conn.execute("UPDATE notes SET body = 'bad' || char(0) || 'byte' WHERE id = 120")
    plan = make_plan(tmp_path, pg_url)
    failed = cli_process("run", str(plan))
    assert failed.returncode == 1
    assert "load of notes keys (" in failed.stderr and "NUL" in failed.stderr  # the table and its key range
    with sqlite3.connect(tmp_path / "source.db") as conn:
        conn.execute("UPDATE notes SET body = 'fixed' WHERE id = 120")
    assert cli_process("run", str(plan)).returncode == 0, "the fixed row loads on the resumed run"
    with sqlite3.connect(tmp_path / "source.db") as conn:
        later = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        conn.executemany("UPDATE notes SET body = ?, updated_at = ? WHERE id = ?",
                         [("ok again", later, 7), ("nul" + chr(0), later, 8), ("ok too", later, 9)])
    synced = cli_process("sync", str(plan))
    assert synced.returncode == 1
    assert "upsert into notes failed at key id=8" in synced.stderr and "Traceback" not in synced.stderr
