"""A watermark column holding timestamps as text (SQLite's `datetime('now')`) works; one holding other text is
refused with a message saying why, never a TypeError."""

from __future__ import annotations

import sqlite3
import textwrap
import time
from pathlib import Path

from helpers import cli_process


def estate(tmp_path: Path, stamp_sql: str) -> Path:
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute(f"CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT, updated_at TEXT DEFAULT ({stamp_sql}))")
        conn.executemany("INSERT INTO notes (id, body) VALUES (?, ?)", [(i, f"note {i}") for i in range(1, 51)])
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        version: 1
        component: text-watermark
        connections:
          src: {url: "sqlite:///s.db"}
          dst: {url: "sqlite:///t.db"}
        databases:
          - {name: n, source: src, target: dst, tables: ["*"], incremental: {column: updated_at, overlap: 60s}}
        """), encoding="utf-8")
    assert cli_process("run", str(plan)).returncode == 0
    return plan


def test_sqlite_datetime_text_is_a_working_watermark(tmp_path: Path) -> None:
    plan = estate(tmp_path, "datetime('now')")
    time.sleep(1.1)
    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("UPDATE notes SET body = 'changed', updated_at = datetime('now') WHERE id = 3")
        conn.execute("INSERT INTO notes (id, body) VALUES (51, 'new')")
    synced = cli_process("sync", str(plan), "--json")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert '"created": 1' in synced.stdout and '"updated": 1' in synced.stdout
    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("SELECT body FROM notes WHERE id = 3").fetchone() == ("changed",)


def test_text_that_is_not_a_timestamp_is_refused_with_a_reason(tmp_path: Path) -> None:
    plan = estate(tmp_path, "'version ' || abs(random() % 100)")  # an expression default is kept
    refused = cli_process("sync", str(plan))
    assert refused.returncode == 1 and "holds text that is not a timestamp" in refused.stderr
    assert "TypeError" not in refused.stderr and "internal error" not in refused.stderr
