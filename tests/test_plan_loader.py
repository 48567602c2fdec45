"""The plan loader: every problem located to file:line:col with its key path, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import build_tree, cli
from migrate.errors import PlanError
from migrate.plan.loader import load_plan
from migrate.redact import redact

GOOD = """
version: 1
component: ppm-documents
connections:
  onprem: {path: letters}
  azure: {path: azure-letters}
  db_src: {url: "sqlite:///src.db"}
  db_dst: {url: "${TARGET_DB_URL}"}
databases:
  - name: index
    source: db_src
    target: db_dst
    tables: ["*", {name: patients, key: [id]}]
    incremental: {column: updated_at}
blobs:
  - name: letters
    source: onprem
    target: azure
dual_run: {interval: 5m}
cutover:
  gates: {max_lag: 90s}
  steps:
    - {name: freeze, run: "runbooks/freeze.sh --now"}
"""


def plan_tree(tmp_path: Path, text: str = GOOD) -> Path:
    build_tree(tmp_path, {"plans/p.yaml": text, "runbooks/freeze.sh": "#!/bin/sh\ntrue\n"})
    return tmp_path / "plans" / "p.yaml"


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PlanError) as caught:
        load_plan(path, env=env if env is not None else {"TARGET_DB_URL": "sqlite:///t.db"})
    return [str(p) for p in caught.value.problems]


def test_good_plan_loads_with_defaults_and_durations(tmp_path: Path) -> None:
    loaded = load_plan(plan_tree(tmp_path), env={"TARGET_DB_URL": "sqlite:///dst.db"})
    plan = loaded.plan
    assert plan.dual_run.interval == 300.0
    assert plan.cutover.gates.max_lag == 90.0
    assert [t.name for t in plan.databases[0].tables] == ["*", "patients"]
    assert plan.databases[0].tables[1].key == ["id"]
    assert plan.connections["db_dst"].url == "sqlite:///dst.db"
    assert loaded.state_url.endswith("plans/.migrate/ppm-documents.db")
    argv, cwd = loaded.step_command(plan.cutover.steps[0])
    assert argv[0].endswith("runbooks/freeze.sh") and argv[1:] == ["--now"] and cwd == tmp_path.resolve()
    assert len(loaded.fingerprint) == 64


def test_misspelt_key_names_line_column_and_suggestion(tmp_path: Path) -> None:
    path = plan_tree(tmp_path, GOOD.replace("    incremental:", "    incremntal:"))
    assert problems(path) == [f"{path}:13:5: databases[0].incremntal: unknown key `incremntal` "
                              "(did you mean `incremental`?)"]


def test_every_problem_is_listed_not_just_the_first(tmp_path: Path) -> None:
    text = GOOD.replace("interval: 5m", "interval: 5 fortnights").replace("    target: azure\n",
                                                                        "    target: azure\n    bogus: 1\n")
    found = problems(plan_tree(tmp_path, text))
    assert len(found) == 2
    assert ":18:5: blobs[0].bogus: unknown key `bogus`" in found[0]
    assert "dual_run.interval: bad duration '5 fortnights'" in found[1]


def test_unset_variable_is_named_and_its_neighbours_not_blamed(tmp_path: Path) -> None:
    found = problems(plan_tree(tmp_path), env={})
    assert len(found) == 1
    assert found[0].endswith(":7:17: connections.db_dst.url: environment variable TARGET_DB_URL is not set")


def test_secret_value_from_environment_is_never_printed(tmp_path: Path) -> None:
    secret = "postgresql://app:Sup3rS3cret!@db.internal/ppm"
    text = GOOD.replace("tables: [", "tables: 7\n    x: [")  # force an error in the same item
    found = problems(plan_tree(tmp_path, text), env={"TARGET_DB_URL": secret})
    assert found and all("Sup3rS3cret" not in p for p in found)
    assert redact(f"boom {secret}") == "boom ***"


@pytest.mark.parametrize(("change", "expected"), [
    (("    target: azure\n", "    target: nowhere\n"), "blobs[0].target: unknown connection 'nowhere'"),
    (("    target: azure\n", "    target: onprem\n"), "blobs[0].target: source and target are the same connection"),
    (("  - name: letters", "  - name: index"), "blobs[0].name: duplicate item name 'index'"),
    (("runbooks/freeze.sh", "runbooks/missing.sh"), "step script 'runbooks/missing.sh' not found"),
    (("    target: db_dst\n", "    target: azure\n"), "connection 'azure' is a folder, not usable by databases"),
    (("version: 1", "version: 2"), "version: input should be 1"),
    (("component: ppm-documents", "component: 'bad name!'"), "component: string should match pattern"),
    (("  azure: {path: azure-letters}", "  azure: {account_url: 'https://x.blob.core.windows.net', container: ab}"),
     "`container` must be 3 to 63 characters long"),
])
def test_semantic_and_type_errors(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    found = problems(plan_tree(tmp_path, GOOD.replace(*change)))
    assert any(expected in p for p in found), found


def test_same_endpoint_under_two_names_is_refused(tmp_path: Path) -> None:
    found = problems(plan_tree(tmp_path, GOOD.replace("azure-letters", "letters")))
    assert any("source and target are the same place" in p for p in found)


def test_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    found = problems(plan_tree(tmp_path, "version: 1\ncomponent: [unclosed\n"))
    assert len(found) == 1 and found[0].startswith(f"{tmp_path}/plans/p.yaml:3:") and "YAML syntax" in found[0]


def test_validate_cli_exit_codes_and_folder_expansion(tmp_path: Path) -> None:
    good = plan_tree(tmp_path)
    bad = tmp_path / "plans" / "q.yml"
    bad.write_text(GOOD.replace("dual_run", "dual_ran"))
    code, out, err = cli("validate", str(good.parent), env={"TARGET_DB_URL": "sqlite:///x.db"})
    assert code == 2
    assert f"{bad}:19:1: dual_ran: unknown key `dual_ran` (did you mean `dual_run`?)" in err
    assert "ok   " in err and "p.yaml" in err
    code, out, err = cli("validate", str(good), env={"TARGET_DB_URL": "sqlite:///x.db"})
    assert code == 0
    code, out, err = cli("validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and "no such plan file" in err


def test_schema_command_prints_a_json_schema() -> None:
    import json

    code, out, _ = cli("schema")
    schema = json.loads(out)
    assert code == 0 and schema["$schema"].startswith("https://json-schema.org/")
    assert {"version", "component", "connections"} <= set(schema["required"])
    assert schema["additionalProperties"] is False


def test_example_plans_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).parent.parent / "plans"
    code, _, err = cli("validate", "--skip-env", str(root))
    assert code == 0, err
    assert err.count("ok   ") == len(list(root.glob("*.yaml"))) >= 3


FIELD_FORM = """
version: 1
component: field-form
connections:
  src:
    driver: postgresql
    host: db.internal
    database: ppm
    user: app
    password: "${PPM_PW}"
    query: {sslmode: require, connect_timeout: 10}
  dst: {driver: mssql, host: sql-epr.database.windows.net, database: ppm, user: loader, password: "${SQL_PW}"}
  lite: {driver: sqlite, database: local.db}
  pinned: {driver: "postgresql+psycopg", host: 127.0.0.1, port: "${PG_PORT}", database: other}
databases:
  - {name: index, source: src, target: dst}
  - {name: local, source: lite, target: pinned}
"""
FIELD_ENV = {"PPM_PW": "p@ss#w/rd?x", "SQL_PW": "Sql;Pw}1", "PG_PORT": "6543"}


def test_field_form_connections_build_their_url(tmp_path: Path) -> None:
    plan = load_plan(plan_tree(tmp_path, FIELD_FORM), env=FIELD_ENV).plan
    src, dst, lite, pinned = (plan.connections[n] for n in ("src", "dst", "lite", "pinned"))
    assert {c.kind for c in (src, dst, lite, pinned)} == {"database"}
    url = src.database_url()
    assert (url.drivername, url.host, url.port, url.database, url.username) == \
        ("postgresql+psycopg", "db.internal", 5432, "ppm", "app")
    assert url.password == "p@ss#w/rd?x"  # URL.create: no splicing, the metacharacters stay in the password
    assert dict(url.query) == {"sslmode": "require", "connect_timeout": "10"}
    sql = dst.database_url()
    assert (sql.drivername, sql.port, sql.password) == ("mssql+mssqlpython", 1433, "Sql;Pw}1")
    assert lite.database_url().render_as_string() == "sqlite:///local.db"
    assert (pinned.database_url().drivername, pinned.database_url().port) == ("postgresql+psycopg", 6543)
    assert "p@ss#w/rd?x" not in redact(url.render_as_string(hide_password=False))
    assert redact("p%40ss%23w%2Frd%3Fx") == "***"  # the URL's spelling of the password is a secret too


@pytest.mark.parametrize(("change", "line_col", "expected"), [
    (("  lite: {driver: sqlite, database: local.db}", "  lite: {url: 'sqlite:///a.db', driver: sqlite}"),
     ":12:9: connections.lite:", "give exactly one of url, the fields driver/host/port/database/user/password/"
     "query, path, account_url or connection_string (found: url, fields (driver))"),
    (("  lite: {driver: sqlite, database: local.db}", "  lite: {database: local.db}"),
     ":12:9: connections.lite:", "a connection written as fields needs `driver` (postgresql, mssql or sqlite)"),
    (("  lite: {driver: sqlite, database: local.db}", "  lite: {driver: oracle, database: x}"),
     ":12:18: connections.lite.driver:", "`driver` is postgresql, mssql or sqlite"),
    (("  lite: {driver: sqlite, database: local.db}", "  lite: {driver: sqlite, database: x.db, host: h}"),
     ":12:9: connections.lite:", "a sqlite connection takes no host: only `database` (the file)"),
    (("    host: db.internal\n", ""), ":5:5: connections.src:", "a postgresql connection needs `host`"),
    (("connect_timeout: 10}", "connect_timeout: 10, ApplicationIntent: true}"),
     ":10:71: connections.src.query.ApplicationIntent:", "write the value in quotes"),
    (("port: \"${PG_PORT}\"", "port: 70000"), ":13:65: connections.pinned.port:", "less than or equal to 65535"),
    (("    user: app\n", "    usr: app\n"), ":8:5: connections.src.usr:", "unknown key `usr` (did you mean `user`?)"),
])
def test_field_form_problems_are_located(tmp_path: Path, change: tuple[str, str], line_col: str,
                                         expected: str) -> None:
    path = plan_tree(tmp_path, FIELD_FORM.replace(*change))
    found = problems(path, env=FIELD_ENV)
    assert any(line_col in p and expected in p for p in found), found
    assert all("p@ss#w/rd?x" not in p for p in found)


def test_field_form_with_unset_variables_passes_validate_skip_env(tmp_path: Path) -> None:
    path = plan_tree(tmp_path, FIELD_FORM)
    plan = load_plan(path, env={}, require_env=False).plan
    assert plan.connections["pinned"].database_url().port == 5432  # `${PG_PORT}` unset: the default port
    assert len(problems(path, env={})) == 3  # without --skip-env each unset variable is named


ENTRA = """
version: 1
component: entra
connections:
  src: {driver: sqlite, database: src.db}
  azure_sql:
    driver: mssql
    host: sql-epr.database.usgovcloudapi.net
    database: ppm
    auth: entra
    azure: {subscription_id: "0000", resource_group: rg-epr, cloud: AzureUSGovernment}
  by_url: {url: "mssql://loader@sql-epr.database.windows.net/ppm", auth: entra}
databases:
  - {name: index, source: src, target: azure_sql}
  - {name: again, source: src, target: by_url}
"""


def test_entra_connections_load_with_their_cloud_and_no_user(tmp_path: Path) -> None:
    plan = load_plan(plan_tree(tmp_path, ENTRA), env={}).plan
    azure_sql, by_url = plan.connections["azure_sql"], plan.connections["by_url"]
    assert (azure_sql.auth, azure_sql.cloud, by_url.cloud) == ("entra", "AzureUSGovernment", "AzureCloud")
    assert by_url.database_url().render_as_string() == "mssql+mssqlpython://sql-epr.database.windows.net/ppm"
    assert plan.connections["src"].auth == "password"


@pytest.mark.parametrize(("change", "line_col", "expected"), [
    (("    auth: entra\n", "    auth: entra\n    password: \"${SQL_PW}\"\n"), ":6:5: connections.azure_sql:",
     "`auth: entra` takes no password: the Entra ID token is the credential"),
    (("    driver: mssql\n", "    driver: postgresql\n"), ":6:5: connections.azure_sql:",
     "`auth: entra` signs in to SQL Server / Azure SQL only (this connection is postgresql)"),
    (("mssql://loader@", "mssql+pymssql://loader@"), ":11:11: connections.by_url:",
     "`auth: entra` needs the mssql+mssqlpython driver (pymssql cannot take an Entra ID token)"),
    (("/ppm\", auth", "/ppm?Authentication=ActiveDirectoryDefault\", auth"), ":11:11: connections.by_url:",
     "remove `authentication` from the query"),
    (("  src: {driver: sqlite, database: src.db}", "  src: {path: letters, auth: entra}"),
     ":4:8: connections.src:", "`auth: entra` belongs to SQL Server database connections"),
    (("    auth: entra\n", "    auth: kerberos\n"), ":9:11: connections.azure_sql.auth:",
     "input should be 'password' or 'entra'"),
])
def test_entra_plan_errors_are_located(tmp_path: Path, change: tuple[str, str], line_col: str,
                                       expected: str) -> None:
    found = problems(plan_tree(tmp_path, ENTRA.replace(*change)), env={"SQL_PW": "Sekrit-99"})
    assert any(line_col in p and expected in p for p in found), found


# --- found by tests/test_plan_fuzz.py: each the input that broke, now a located problem on one line ---


def load_problems(tmp_path: Path, content: str | bytes) -> list[str]:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return problems(path)


def test_a_control_character_in_a_key_is_shown_escaped_on_one_line(tmp_path: Path) -> None:
    found = load_problems(tmp_path, "component: ''\ndescription: null\nrollback: {\"\\x1E\": null}\nversion: 1\n")
    unknown = [p for p in found if "unknown key" in p]
    assert unknown == [f"{tmp_path}/fuzz.yaml:3:12: rollback.\\x1e: unknown key `\\x1e` "
                       "(allowed: reverse_sync, steps)"]
    found = load_problems(tmp_path, 'version: 1\ncomponent: x\nconnections: {}\n"a\\nb": 1\n')
    assert len(found) == 1 and found[0].startswith(f"{tmp_path}/fuzz.yaml:4:1: a\\nb: unknown key `a\\nb` (allowed: ")


@pytest.mark.parametrize(("text", "where", "character"), [
    ("\x00", "1:1", "'\\x00'"),
    ("version: 1\ncomponent: x\x07\n", "2:13", "'\\x07'"),
    ("\ufeffversion: 1\n\x1b[31m: red\n", "2:1", "'\\x1b'"),
])
def test_a_character_yaml_forbids_is_located(tmp_path: Path, text: str, where: str, character: str) -> None:
    assert load_problems(tmp_path, text) == [f"{tmp_path}/fuzz.yaml:{where}: YAML syntax: character {character} "
                                             "is not allowed in a YAML file"]


def test_bytes_that_are_not_utf8_are_located(tmp_path: Path) -> None:
    assert load_problems(tmp_path, b"version: 1\ncomponent: x\n  ab\x80") == [
        f"{tmp_path}/fuzz.yaml:3:5: byte 0x80 is not UTF-8 text: save the plan as UTF-8"]


@pytest.mark.parametrize(("text", "where", "tag"), [
    ("!!set ", "1:1", "!!set"),
    ("version: 1\ncomponent: !!python/object:os.system ls\n", "2:12", "!!python/object:os.system"),
    ("version: 1\nconnections: !!omap [a: 1]\n", "2:14", "!!omap"),
    ("version: 1\nconnections: !local {}\n", "2:14", "!local"),
    ("version: 1\ncomponent: !!str x\n", "2:12", "!!str"),  # read as an object of the YAML library's own
])
def test_yaml_tags_are_refused(tmp_path: Path, text: str, where: str, tag: str) -> None:
    assert load_problems(tmp_path, text) == [f"{tmp_path}/fuzz.yaml:{where}: YAML tags ({tag}) are not allowed "
                                             "in a plan: write the value plainly (in quotes for text)"]


@pytest.mark.parametrize("text", [
    "? " * 14 + "state",  # each level hashes the one inside it again: 14 levels took 8 s, 16 took 76 s
    "version: 1\ncomponent: x\nz: " + "{? " * 14 + "a" + "}" * 14 + "\n",
    "version: 1\ncomponent: x\nconnections: {}\n? [a, b]\n: c\n",
])
def test_a_mapping_or_list_as_a_key_is_refused_at_once(tmp_path: Path, text: str) -> None:
    import time

    started = time.monotonic()
    found = load_problems(tmp_path, text)
    assert time.monotonic() - started < 2
    assert len(found) == 1 and found[0].endswith("a key must be a name, not a mapping or a list")


def test_nesting_by_dashes_on_one_line_is_refused(tmp_path: Path) -> None:
    found = load_problems(tmp_path, "version: 1\ncomponent: x\nz:\n  " + "- " * 3000 + "x\n")
    assert found == [f"{tmp_path}/fuzz.yaml:4:129: nested deeper than 64 levels"]


@pytest.mark.parametrize("text", [
    GOOD.replace("component: ppm-documents", "component: &c ppm-documents").replace("description:", "x:"),
    "%YAML 1.1\n---\n" + GOOD.replace("{interval: 5m}", "{interval: 1e3}"),
])
def test_the_yaml_librarys_warnings_do_not_reach_the_output(tmp_path: Path, text: str) -> None:
    import warnings

    text = text.replace("  azure: {path: azure-letters}", "  azure: &c {path: azure-letters}")  # a reused anchor
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        load_plan(plan_tree(tmp_path, text), env={"TARGET_DB_URL": "sqlite:///t.db"})
    assert [str(w.message) for w in warned] == []


def test_a_problem_on_line_100_is_not_an_emoji(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("version: 1\ncomponent: x\nconnections: {}\n" + "\n" * 96 + "bogus: 1\n", encoding="utf-8")
    code, _, err = cli("validate", str(path))
    assert code == 2 and f"{path}:100:1: bogus: unknown key `bogus`" in err


@pytest.mark.parametrize(("where", "value"), [
    ("dual_run: {interval: %s}", "1" + "0" * 400),  # the fuzzer's: 'int too large to convert to float'
    ("dual_run: {interval: %s}", ".inf"),  # accepted, then `sleep(inf)` in sync --watch
    ("dual_run: {interval: %s}", ".nan"),
    ("cutover: {gates: {max_lag: %s}}", "'1" + "0" * 400 + "ms'"),
    ("cutover: {gates: {min_dual_run: %s}}", "3651d"),
])
def test_a_duration_too_long_or_not_finite_is_a_problem(tmp_path: Path, where: str, value: str) -> None:
    found = load_problems(tmp_path, "version: 1\ncomponent: x\nconnections: {}\n" + where % value + "\n")
    assert len(found) == 1 and found[0].endswith(": a duration is at most 3650d"), found


@pytest.mark.parametrize("value", [".inf", ".nan", "'1" + "0" * 400 + " GiB'"])
def test_a_size_that_is_not_finite_is_a_problem(tmp_path: Path, value: str) -> None:
    text = GOOD.replace("    incremental: {column: updated_at}", f"    max_retained_wal: {value}")
    found = problems(plan_tree(tmp_path, text))
    assert len(found) == 1 and found[0].endswith("databases[0].max_retained_wal: a size is a finite number of "
                                                 "bytes, like 10 GiB"), found


def test_skip_env_accepts_a_variable_standing_for_a_number_a_boolean_or_a_duration(tmp_path: Path) -> None:
    """What `migrate schema` allows (`chunk_rows: ${CHUNK_ROWS}`) `validate --skip-env` accepts too; a wrong value
    next to it is still a problem, and with the variables set their values are checked."""
    text = GOOD.replace("    incremental: {column: updated_at}", "    incremental: {column: updated_at}\n"
                        "    chunk_rows: ${CHUNK_ROWS}\n    delete: ${MIRROR_DELETES}")
    text = text.replace("{interval: 5m}", "{interval: '${DUAL_RUN_INTERVAL}'}")
    path = plan_tree(tmp_path, text)
    plan = load_plan(path, env={}, require_env=False).plan
    assert plan.databases[0].chunk_rows == 50_000  # the default stands in for the unset variable
    loaded = load_plan(path, env={"TARGET_DB_URL": "sqlite:///t.db", "CHUNK_ROWS": "5000", "MIRROR_DELETES": "false",
                                  "DUAL_RUN_INTERVAL": "2m"})
    assert (loaded.plan.databases[0].chunk_rows, loaded.plan.databases[0].delete) == (5000, False)
    assert loaded.plan.dual_run.interval == 120.0
    found = problems(path, env={"TARGET_DB_URL": "sqlite:///t.db", "CHUNK_ROWS": "many", "MIRROR_DELETES": "no",
                                "DUAL_RUN_INTERVAL": "2m"})
    assert len(found) == 1 and "databases[0].chunk_rows: input should be a valid integer" in found[0]
    with pytest.raises(PlanError) as caught:
        load_plan(plan_tree(tmp_path, text.replace("    delete: ${MIRROR_DELETES}", "    delete: maybe")),
                  env={}, require_env=False)
    assert [p.key_path for p in caught.value.problems] == ["databases[0].delete"]
