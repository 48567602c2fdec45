"""Source and target that are the same place, spelled differently, are refused before anything is written:
at validate by spelling rules (loopback names, relative paths), at preflight by identity (inode, PostgreSQL
system identifier + database oid)."""

from __future__ import annotations

import os
import sqlite3
import textwrap
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from helpers import cli_process
from migrate.databases.endpoint import Endpoint
from migrate.databases.identity import database_identity


def db_plan(folder: Path, source: str, target: str) -> Path:
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: same-place
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - name: epr
            source: src
            target: dst
            tables: ["*"]
            existing_target: truncate
        """), encoding="utf-8")
    return path


def patients(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM patients ORDER BY id").fetchall()


def make_source(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, mrn TEXT NOT NULL)")
        conn.executemany("INSERT INTO patients VALUES (?, ?)", [(i, f"RX-{i}") for i in range(1, 51)])


@pytest.mark.parametrize(("source", "target"), [
    ("sqlite:///a.db", "sqlite:///./a.db"),
    ("sqlite:///a.db", "sqlite:///sub/../a.db"),
    ("postgresql+psycopg://u@127.0.0.1:5432/epr", "postgresql+psycopg://u@localhost/epr"),
    ("postgresql+psycopg://u@[::1]:5432/epr", "postgresql+psycopg://other@LOCALHOST:5432/epr"),
])
def test_validate_refuses_the_same_place_spelled_differently(tmp_path: Path, source: str, target: str) -> None:
    plan = db_plan(tmp_path, source, target)
    checked = cli_process("validate", str(plan))
    assert checked.returncode == 2, checked.stderr
    assert f"{plan}:9:" in checked.stderr and "source and target are the same place" in checked.stderr


def test_validate_lets_different_databases_on_one_server_through(tmp_path: Path) -> None:
    plan = db_plan(tmp_path, "postgresql+psycopg://u@127.0.0.1:5432/onprem",
                   "postgresql+psycopg://u@localhost:5432/azure")
    assert cli_process("validate", str(plan)).returncode == 0


def test_preflight_refuses_a_hard_link_to_the_source_and_the_source_keeps_its_rows(tmp_path: Path) -> None:
    make_source(tmp_path / "a.db")
    os.link(tmp_path / "a.db", tmp_path / "b.db")  # another name, the same file: no spelling rule sees it
    before = patients(tmp_path / "a.db")
    plan = db_plan(tmp_path, "sqlite:///a.db", "sqlite:///b.db")
    ran = cli_process("run", str(plan))
    assert ran.returncode == 1
    assert "source and target are the same database" in ran.stderr and "inode" in ran.stderr
    assert patients(tmp_path / "a.db") == before and len(before) == 50  # nothing truncated


def test_validate_refuses_a_folder_and_a_symlink_to_it(tmp_path: Path) -> None:
    (tmp_path / "letters").mkdir()
    (tmp_path / "letters" / "a.pdf").write_bytes(b"%PDF-1.4 synthetic")
    os.symlink(tmp_path / "letters", tmp_path / "alias", target_is_directory=True)
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        version: 1
        component: same-folder
        connections:
          src: {path: letters}
          dst: {path: alias}
        blobs:
          - {name: letters, source: src, target: dst, delete: true}
        """), encoding="utf-8")
    checked = cli_process("validate", str(plan))
    assert checked.returncode == 2 and "same place" in checked.stderr  # a symlink resolves at validate


@pytest.mark.postgres
def test_postgres_identity_sees_through_tcp_and_socket_spellings(pg_cluster, pg_url: str, pg_url2: str,
                                                                 tmp_path: Path) -> None:
    url = make_url(pg_url)
    socket_url = url.set(host=None, query={"host": str(pg_cluster.root), "port": str(url.port)})
    tcp = Endpoint("src", pg_url, tmp_path)
    by_socket = Endpoint("dst", socket_url.render_as_string(hide_password=False), tmp_path, role="target")
    other = Endpoint("dst", pg_url2, tmp_path, role="target")
    try:
        assert database_identity(tcp) == database_identity(by_socket)
        assert "system identifier" in database_identity(tcp) and "database oid" in database_identity(tcp)
        assert database_identity(tcp) != database_identity(other)  # same server, another database
    finally:
        for endpoint in (tcp, by_socket, other):
            endpoint.dispose()


def test_a_field_form_connection_is_the_same_place_as_its_url(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        version: 1
        component: same-place
        connections:
          src: {url: "postgresql+psycopg://u@127.0.0.1/epr"}
          dst: {driver: postgresql, host: localhost, database: epr, user: other, password: x-secret}
          sql_a: {driver: mssql, host: SQL.example, database: ppm}
          sql_b: {url: "mssql+pymssql://sa@sql.example:1433/ppm"}
        databases:
          - {name: epr, source: src, target: dst}
          - {name: ppm, source: sql_a, target: sql_b}
        """), encoding="utf-8")
    checked = cli_process("validate", str(plan))
    assert checked.returncode == 2, checked.stderr
    assert f"{plan}:9:" in checked.stderr and f"{plan}:10:" in checked.stderr
    assert checked.stderr.count("source and target are the same place") == 2
