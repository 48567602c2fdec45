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


def tricky_role(url: str, role: str, rows: int) -> None:
    """A source with `rows` patients and a login role whose password is SECRET."""
    fill(url, patients=rows, encounters=rows)
    pg(url, f"DROP ROLE IF EXISTS {role}")
    pg(url, f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{SECRET}'")


def everything_written(outputs: list, folder: Path, component: str) -> list[str]:
    """Every process's stdout and stderr, every report file and the journal: where a secret could show."""
    texts = [o.stdout + o.stderr for o in outputs]
    texts += [p.read_text(errors="replace") for p in (folder / "reports").iterdir()]
    texts.append((folder / ".migrate" / f"{component}.db").read_bytes().decode("latin-1"))
    return texts


@pytest.mark.postgres
def test_a_password_with_url_metacharacters_connects_and_never_shows(tmp_path: Path, pg_url: str,
                                                                       pg_url2: str) -> None:
    tricky_role(pg_url, "tricky", 50)
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
    for text in everything_written(outputs, tmp_path, "secrets"):
        for piece in slices(SECRET) | slices("TopSecretValue123") | slices("Tr1cky%40Pass%23word"):
            assert piece not in text, (piece, text[:2000])


def _canaries() -> dict[str, str]:
    """A unique random value per ${VAR}: letters and digits only, so no 6-character slice is an ordinary word."""
    import secrets

    return {name: prefix + secrets.token_hex(10) for name, prefix in (
        ("CANARY_PW", "Pw"), ("CANARY_HOST", "h"), ("CANARY_PORT", "Pt"), ("CANARY_IVL", "Iv"),
        ("CANARY_SAS", "sig="), ("CANARY_STEP", "St"))}


@pytest.mark.azurite
def test_canary_secrets_never_show_in_any_verb_or_failure(tmp_path: Path, azurite) -> None:  # noqa: ANN001
    """Every ${VAR} holds a unique secret; every verb and every failure we can provoke (bad URL, unreachable
    host, bad duration, bad SAS, a failing step printing its environment), with and without --json and
    --debug; stdout, stderr, the journals and every report are searched for each secret and each 6-char slice."""
    from migrate.demo.flow import prepare_estate

    canary = _canaries()
    env = {**os.environ, **canary}
    plan, _ = prepare_estate(tmp_path / "estate", patients=30, letters=4)
    main = plan.read_text().replace(
        '    - {name: switch application to Azure, run: "runbooks/switch.sh"}',
        '    - {name: switch application to Azure, run: "sh -c \'env; echo token ${CANARY_STEP}; exit 3\'"}')
    assert "CANARY_STEP" in main
    plan.write_text(main)
    folder = tmp_path / "estate"
    bad = {
        "duration.yaml": 'dual_run: {interval: "${CANARY_IVL}"}\n',
        "url.yaml": 'connections:\n  a: {url: "postgresql+psycopg://app:${CANARY_PW}@db.example:${CANARY_PORT}/x"}\n',
        "unreachable.yaml": 'connections:\n  a: {url: "postgresql+psycopg://app:${CANARY_PW}@${CANARY_HOST}:5432/x"}\n'
                            '  b: {url: "sqlite:///azure/other.db"}\n'
                            'databases:\n  - {name: remote, source: a, target: b}\n',
        "sas.yaml": f'connections:\n  f: {{path: onprem/letters}}\n'
                    f'  z: {{account_url: "{azurite.blob_endpoint}", sas_token: "${{CANARY_SAS}}",\n'
                    '       container: canary}\n'
                    'blobs:\n  - {name: letters, source: f, target: z}\n',
    }
    for name, body in bad.items():
        (folder / name).write_text(f"version: 1\ncomponent: {name.split('.')[0]}\n{body}")

    def run(*args: str, expect: int) -> str:
        """Run with the canaries its plan refers to (a runner's other variables are not the plan's to know)."""
        text = (folder / next(a for a in args if a.endswith(".yaml"))).read_text()
        done = cli_process(*args, env={k: v for k, v in env.items() if k not in canary or f"${{{k}}}" in text},
                           cwd=folder)
        assert done.returncode == expect, (args, done.returncode, done.stdout[-1500:], done.stderr[-1500:])
        return done.stdout + done.stderr

    texts = []
    for name, code in (("duration.yaml", 2), ("url.yaml", 2)):
        for verb in (["validate"], ["plan", "--json"], ["run", "--json"], ["--debug", "validate"]):
            texts.append(run(*verb, name, expect=code))
    for name in ("unreachable.yaml", "sas.yaml"):
        for verb in (["plan"], ["plan", "--json"], ["run"], ["run", "--json"], ["verify"], ["status", "--json"]):
            texts.append(run(*verb, name, expect=1 if verb[0] in ("plan", "run", "verify") else 0))
        texts.append(run("--debug", "run", name, expect=1))  # the traceback too
        texts.append(run("-v", "run", name, expect=1))
    p = str(plan)
    texts += [run("validate", p, expect=0), run("plan", p, "--json", expect=0), run("run", p, expect=0),
              run("-v", "sync", p, expect=0), run("verify", p, "--json", expect=0), run("status", p, expect=0),
              run("cutover", "--check", p, expect=0)]
    texts.append(run("cutover", p, "--yes", expect=1))  # the step prints its environment and fails
    texts.append(run("--debug", "cutover", p, "--yes", expect=1))
    for fmt in ("md", "html", "json", "junit"):
        texts.append(run("report", p, "--format", fmt, expect=0))
        texts.append(run("report", p, "--format", fmt, "--out", "-", expect=0))
    texts += [run("status", p, "--json", expect=0), run("unlock", p, expect=0)]
    assert any("env" in t and "step" in t.lower() for t in texts)  # the failing step was reached
    for path in folder.rglob("*"):
        if path.is_file() and path.suffix not in (".yaml",) and "onprem" not in path.parts \
                and "azure" not in path.parts:
            texts.append(path.read_bytes().decode("latin-1"))
    for name, value in canary.items():
        pieces = {value} | slices(value.removeprefix("sig="))
        for text in texts:
            for piece in pieces:
                assert piece not in text, (name, piece, text[max(0, text.find(piece) - 300):text.find(piece) + 300])


@pytest.mark.postgres
def test_a_field_form_password_with_url_metacharacters_connects_and_never_shows(tmp_path: Path, pg_url: str,
                                                                                  pg_url2: str) -> None:
    tricky_role(pg_url, "fielded", 30)
    src, dst = make_url(pg_url), make_url(pg_url2)
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        component: fielded
        connections:
          src: {{driver: postgresql, host: {src.host}, port: {src.port}, database: {src.database},
                user: fielded, password: "${{AT_PW}}"}}
          dst:
            driver: postgresql+psycopg
            host: {dst.host}
            port: "${{DST_PORT}}"
            database: {dst.database}
            user: fielded
            password: "${{AT_PW}}"
            query: {{application_name: migrate-fielded}}
        databases:
          - {{name: epr, source: src, target: dst}}
        """), encoding="utf-8")
    env = {**os.environ, "AT_PW": SECRET, "DST_PORT": str(dst.port)}
    ran = cli_process("run", str(plan), "--json", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert pg(pg_url2, "SELECT count(*) FROM patients") == [(30,)]
    outputs = [ran, cli_process("verify", str(plan), env=env), cli_process("status", str(plan), env=env)]
    assert outputs[1].returncode == 0, outputs[1].stderr
    for fmt in ("md", "json"):
        outputs.append(cli_process("report", str(plan), "--format", fmt, env=env))
    texts = everything_written(outputs, tmp_path, "fielded")
    assert any("postgresql+psycopg://fielded:***@" in text for text in texts)  # the report names the endpoint
    for text in texts:
        for piece in slices(SECRET) | slices("Tr1cky%40Pass%23word"):
            assert piece not in text, (piece, text[:2000])
