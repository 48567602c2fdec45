"""`tables:` scope: `*` is every user schema, `schema.*` and globs work, `exclude` takes names and globs, and a
table without a key under a glob is refused by name unless `skip_without_key`."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_db_postgres import pg, plan
from test_direction import dsn_of, table_md5

from helpers import cli_process

SCHEMA = """
CREATE SCHEMA billing;
CREATE TABLE patients (id int PRIMARY KEY, name text, updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE billing.invoice (id int PRIMARY KEY, patient_id int, total numeric(10,2),
                              updated_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE audit_log (at timestamptz, what text);
INSERT INTO patients SELECT g, 'p' || g FROM generate_series(1, 100) g;
INSERT INTO billing.invoice SELECT g, g % 100, g * 1.5 FROM generate_series(1, 300) g;
INSERT INTO audit_log SELECT now(), 'x' FROM generate_series(1, 10);
"""


def tables_on(url: str) -> set[str]:
    return {f"{s}.{t}" for s, t in pg(url, "SELECT table_schema, table_name FROM information_schema.tables "
                                           "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")}


@pytest.mark.postgres
def test_star_covers_every_user_schema_and_exclude_leaves_tables_out(tmp_path: Path, pg_url: str,
                                                                     pg_url2: str) -> None:
    pg(pg_url, SCHEMA)
    path = plan(tmp_path, pg_url, pg_url2, extra='    tables: ["*"]\n    exclude: ["audit_*"]\n')
    ran = cli_process("run", str(path))
    assert ran.returncode == 0, ran.stderr
    assert tables_on(pg_url2) == {"public.patients", "billing.invoice"}
    assert table_md5(dsn_of(pg_url), "billing.invoice") == table_md5(dsn_of(pg_url2), "billing.invoice")
    assert table_md5(dsn_of(pg_url), "patients") == table_md5(dsn_of(pg_url2), "patients")


@pytest.mark.postgres
def test_a_schema_glob_moves_that_schema_only(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    pg(pg_url, SCHEMA)
    path = plan(tmp_path, pg_url, pg_url2, extra='    tables: ["billing.*"]\n')
    assert cli_process("run", str(path)).returncode == 0
    assert tables_on(pg_url2) == {"billing.invoice"}


@pytest.mark.postgres
def test_a_table_without_a_key_under_a_glob_is_named_or_skipped(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    pg(pg_url, SCHEMA)
    refused = cli_process("run", str(plan(tmp_path / "a", pg_url, pg_url2, extra='    tables: ["*"]\n')))
    assert refused.returncode == 1 and "'audit_log'" in refused.stderr and "no primary key" in refused.stderr
    skipping = plan(tmp_path / "b", pg_url, pg_url2, extra='    tables: ["*"]\n    skip_without_key: true\n')
    ran = cli_process("run", str(skipping), "--json")
    assert ran.returncode == 0, ran.stderr
    assert "audit_log: no primary key, skipped (skip_without_key)" in ran.stdout  # a preflight warning
    assert tables_on(pg_url2) == {"public.patients", "billing.invoice"}


def test_a_table_added_to_the_plan_after_the_load_is_created_and_loaded(tmp_path: Path) -> None:
    import sqlite3

    with sqlite3.connect(tmp_path / "s.db") as conn:
        conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO patients VALUES (?, ?)", [(i, f"p{i}") for i in range(100)])
        conn.executemany("INSERT INTO notes VALUES (?, ?)", [(i, f"n{i}") for i in range(70)])
    path = tmp_path / "plan.yaml"
    template = ('version: 1\ncomponent: added\nconnections:\n  src: {{url: "sqlite:///s.db"}}\n'
                '  dst: {{url: "sqlite:///t.db"}}\ndatabases:\n  - {{name: db, source: src, target: dst, '
                'tables: [{tables}]}}\n')
    path.write_text(template.format(tables="patients"), encoding="utf-8")
    assert cli_process("run", str(path)).returncode == 0
    path.write_text(template.format(tables="patients, notes"), encoding="utf-8")
    planned = cli_process("plan", str(path), "--detailed-exitcode")
    assert planned.returncode == 4, planned.stderr  # something would change: the new table
    ran = cli_process("run", str(path))
    assert ran.returncode == 0, ran.stderr
    with sqlite3.connect(tmp_path / "t.db") as conn:
        assert conn.execute("SELECT count(*) FROM notes").fetchone() == (70,)
        assert conn.execute("SELECT count(*) FROM patients").fetchone() == (100,)
    assert cli_process("plan", str(path), "--detailed-exitcode").returncode == 0
