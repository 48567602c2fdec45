"""A password with URL metacharacters, interpolated from ${VAR}, connects and never shows: not on stdout or
stderr, not in --json, not in the journal, not in any report format (every 6-character slice is searched)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from test_db_postgres import fill, pg

from helpers import cli_process

SECRET = "Tr1cky@Pass#word/?x"


def slices(secret: str) -> set[str]:
    return {secret[i:i + 6] for i in range(len(secret) - 5)}


@pytest.mark.postgres
def test_a_password_with_url_metacharacters_connects_and_never_shows(tmp_path: Path, pg_url: str,
                                                                       pg_url2: str) -> None:
    fill(pg_url, patients=50, encounters=50)
    pg(pg_url, "DROP ROLE IF EXISTS tricky")
    pg(pg_url, f"CREATE ROLE tricky LOGIN SUPERUSER PASSWORD '{SECRET}'")
    src, dst = make_url(pg_url), make_url(pg_url2)
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        component: secrets
        connections:
          src: {{url: "postgresql+psycopg://tricky:${{AT_PW}}@{src.host}:{src.port}/{src.database}"}}
          dst: {{url: "postgresql+psycopg://tricky:${{AT_PW}}@{dst.host}:{dst.port}/{dst.database}"}}
        databases:
          - {{name: epr, source: src, target: dst, incremental: {{column: updated_at, overlap: 60s}}}}
        dual_run: {{interval: "${{OVL}}"}}
        """), encoding="utf-8")
    env = {**os.environ, "AT_PW": SECRET, "OVL": "TopSecretValue123"}
    outputs = [cli_process("validate", str(plan), env=env), cli_process("plan", str(plan), "--json", env=env)]
    assert outputs[0].returncode == 2 and "bad duration" in outputs[0].stderr  # said, without the value
    env["OVL"] = "5s"
    ran = cli_process("run", str(plan), "--json", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    outputs += [ran, cli_process("sync", str(plan), "--debug", env=env), cli_process("status", str(plan), env=env)]
    for fmt in ("md", "html", "json", "junit"):
        outputs.append(cli_process("report", str(plan), "--format", fmt, env=env))
    texts = [o.stdout + o.stderr for o in outputs]
    texts += [p.read_text(errors="replace") for p in (tmp_path / "reports").iterdir()]
    texts.append((tmp_path / ".migrate" / "secrets.db").read_bytes().decode("latin-1"))
    for text in texts:
        for piece in slices(SECRET) | slices("TopSecretValue123") | slices("Tr1cky%40Pass%23word"):
            assert piece not in text, (piece, text[:2000])
