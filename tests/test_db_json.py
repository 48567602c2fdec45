"""JSON and jsonb through load, sync (insert, update, delete) and verify, PostgreSQL -> PostgreSQL; compared
outside the tool by md5 of each side's COPY output."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_db_postgres import pg, plan
from test_direction import dsn_of, table_md5

from helpers import cli_process

SCHEMA = """
CREATE TABLE forms (id bigint PRIMARY KEY, answers jsonb, layout json, tags text[],
                    updated_at timestamptz NOT NULL DEFAULT now());
INSERT INTO forms SELECT g, jsonb_build_object('q', g, 'nested', jsonb_build_object('ok', g % 2 = 0)),
       CASE WHEN g % 3 = 0 THEN '[1, 2,   3]'::json ELSE '{"b": 1,  "a": [true, null]}'::json END,
       ARRAY['t' || g, 'u'], now() - interval '1 day' FROM generate_series(1, 300) g;
"""


@pytest.mark.postgres
def test_json_and_jsonb_sync_and_verify_exactly(tmp_path: Path, pg_url: str, pg_url2: str) -> None:
    pg(pg_url, SCHEMA)
    path = plan(tmp_path, pg_url, pg_url2)
    ran = cli_process("run", str(path))
    assert ran.returncode == 0, ran.stderr
    pg(pg_url, """UPDATE forms SET answers = '["a", {"x": 1}]', layout = '{"spaced" :  "kept"}',
                  updated_at = now() WHERE id IN (3, 4)""")
    pg(pg_url, "INSERT INTO forms VALUES (301, '{\"new\": [1, 2]}', '[ ]', '{}', now())")
    pg(pg_url, "DELETE FROM forms WHERE id = 7")
    synced = cli_process("sync", str(path), "--json")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert '"created": 1' in synced.stdout and '"updated": 2' in synced.stdout and '"deleted": 1' in synced.stdout
    assert table_md5(dsn_of(pg_url), "forms") == table_md5(dsn_of(pg_url2), "forms")
    assert pg(pg_url2, "SELECT layout::text FROM forms WHERE id = 3") == [('{"spaced" :  "kept"}',)]
    assert cli_process("verify", str(path)).returncode == 0
    again = cli_process("sync", str(path), "--json")  # converged: nothing to do
    assert '"updated": 0' in again.stdout and '"created": 0' in again.stdout
