"""The CLI contract: the JSON envelope's keys, exit codes, one clear message and never a traceback."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from helpers import build_tree, cli, cli_process, loaded_estate

ENVELOPE_KEYS = {"envelope", "migrate", "command", "ok", "exit_code", "result", "error"}

BROKEN = """
version: 1
component: errs
connections:
  a: {url: "sqlite:///src.db"}
  b: {url: "postgresql://app:${DB_PASSWORD}@127.0.0.1:1/ppm"}
  f: {path: nowhere}
  g: {path: out}
databases:
  - {name: db, source: a, target: b, tables: [missing_table]}
blobs:
  - {name: files, source: f, target: g}
"""


def test_envelope_keys_are_pinned(tmp_path: Path) -> None:
    build_tree(tmp_path, {"p.yaml": "version: 1\ncomponent: x\nconnections: {}\n"})
    code, out, _ = cli("validate", str(tmp_path / "p.yaml"), "--json")
    body = json.loads(out)
    assert set(body) == ENVELOPE_KEYS and body["envelope"] == 1 and body["command"] == "validate"
    assert code == 0 and body["ok"] is True and body["error"] is None
    assert body["result"]["files"][0]["component"] == "x"


def test_invalid_plan_json_lists_problems_exit_2(tmp_path: Path) -> None:
    build_tree(tmp_path, {"p.yaml": "version: 1\ncomponent: x\nconections: {}\n"})
    code, out, _ = cli("run", str(tmp_path / "p.yaml"), "--json")
    body = json.loads(out)
    assert code == 2 and body["exit_code"] == 2 and body["ok"] is False
    assert any(":3:1: conections: unknown key" in p for p in body["result"]["problems"])


def test_operational_errors_are_one_line_exit_1_no_traceback_no_secret(tmp_path: Path) -> None:
    build_tree(tmp_path, {"plan.yaml": BROKEN})
    env = {"DB_PASSWORD": "Sekrit-Pa55"}
    missing_db = cli_process("run", str(tmp_path / "plan.yaml"), "--item", "db", env=env)
    assert missing_db.returncode == 1 and f"SQLite file {tmp_path}/src.db does not exist" in missing_db.stderr
    assert not (tmp_path / "src.db").exists()  # never created by looking at it
    (tmp_path / "src.db").write_bytes(b"")  # an empty SQLite database
    for args, expected in ((("--item", "files"), "files: source folder"),
                           (("--item", "db"), "table 'missing_table' not found")):
        done = cli_process("run", str(tmp_path / "plan.yaml"), *args, env=env)
        assert done.returncode == 1, done.stderr
        assert expected in done.stderr
        assert "Traceback" not in done.stderr and "Sekrit-Pa55" not in done.stderr + done.stdout
    journal = (tmp_path / ".migrate" / "errs.db").read_bytes()
    assert b"Sekrit-Pa55" not in journal


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    build_tree(tmp_path, {"plan.yaml": BROKEN})
    done = cli_process("--debug", "run", str(tmp_path / "plan.yaml"), "--item", "files",
                       env={"DB_PASSWORD": "x"})
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_unknown_item_and_bad_until_are_usage_errors(tmp_path: Path) -> None:
    build_tree(tmp_path, {"plan.yaml": BROKEN})
    env = {"DB_PASSWORD": "x"}
    code, _, err = cli("run", str(tmp_path / "plan.yaml"), "--item", "nope", env=env)
    assert code == 2 and "no item named nope" in err
    code, _, err = cli("run", str(tmp_path / "plan.yaml"), "--until", "cutover", env=env)
    assert code == 2 and "--until takes one of preflight, schema, load, verify" in err


def test_sync_before_load_says_what_to_do(tmp_path: Path) -> None:
    build_tree(tmp_path, {"plan.yaml": BROKEN})
    code, _, err = cli("sync", str(tmp_path / "plan.yaml"), "--item", "files", env={"DB_PASSWORD": "x"})
    assert code == 1 and "cannot sync before the load has finished" in err and "migrate run PLAN" in err


def test_version_and_report_to_standard_output(tmp_path: Path) -> None:
    from importlib.metadata import version

    shown = cli_process("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"migrate {version('migrate')}"
    plan = loaded_estate(tmp_path / "estate", patients=20, letters=3)
    printed = cli_process("report", str(plan), "--format", "json", "--out", "-", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["component"] == "ppm-demo"
    assert not (tmp_path / "-").exists() and "standard output" in printed.stderr
    both = cli_process("report", str(plan), "--out", "-", "--json", cwd=tmp_path)
    assert both.returncode == 2 and "choose one" in json.loads(both.stdout)["error"]


def test_sync_watch_json_is_one_line_per_cycle_and_human_lines_carry_the_time(tmp_path: Path) -> None:
    import re

    plan = loaded_estate(tmp_path / "estate", patients=20, letters=3)
    plan.write_text(plan.read_text().replace("interval: 5s", "interval: 1s"))
    watched = cli_process("sync", str(plan), "--watch", "--cycles", "2", "--json")
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]  # every line is one JSON document
    assert [line.get("cycle") for line in lines[:2]] == [1, 2] and "at" in lines[0] and "results" in lines[0]
    assert len(lines) == 3 and lines[2]["envelope"] == 1 and lines[2]["ok"] is True
    human = cli_process("sync", str(plan), "--watch", "--cycles", "1")
    assert re.search(r"^\d\d:\d\d:\d\d cycle 1 ", human.stderr, re.MULTILINE), human.stderr


def test_help_has_examples_exit_codes_and_plain_metavars() -> None:
    from migrate.cli import EXAMPLES

    top = cli_process("--help")
    assert top.returncode == 0 and "Examples:" in top.stdout and "Exit codes: 0 success" in top.stdout
    for verb in EXAMPLES:
        shown = cli_process(verb, "--help")
        assert shown.returncode == 0, shown.stderr
        text = shown.stdout
        assert f"Examples:\n    $ migrate {EXAMPLES[verb][0].split(' ', 1)[1]}\n" in text, verb
        assert "Exit codes: 0 success" in text, verb
        for python_word in ("<bool>", "<list", "<path>", "<str>", "{plan}", "{PLAN}", "{PATH"):
            assert python_word not in text, (verb, python_word)
    assert "Usage: migrate run [OPTIONS] PLAN\n" in cli_process("run", "--help").stdout
    assert "--lock-timeout DURATION" in cli_process("run", "--help").stdout


def test_shell_completion_completes_verbs_and_options() -> None:
    # typer detects the shell it runs under; a test (and CI) has none, so it names the shell instead
    script = cli_process("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert script.returncode == 0 and "_MIGRATE_COMPLETE=complete_bash" in script.stdout
    verbs = cli_process(env={"_MIGRATE_COMPLETE": "complete_bash", "COMP_WORDS": "migrate va", "COMP_CWORD": "1"})
    assert verbs.stdout.split() == ["validate"]
    options = cli_process(env={"_MIGRATE_COMPLETE": "complete_bash", "COMP_WORDS": "migrate run --lock",
                               "COMP_CWORD": "2"})
    assert options.stdout.split() == ["--lock-timeout"]


def test_quiet_says_nothing_on_success_and_everything_on_failure(tmp_path: Path) -> None:
    plan = loaded_estate(tmp_path / "estate", patients=20, letters=3)
    quiet = cli_process("-q", "verify", str(plan))
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stderr
    loud = cli_process("verify", str(plan))
    assert loud.returncode == 0 and "clean" in loud.stderr
    build_tree(tmp_path, {"bad.yaml": "version: 1\ncomponent: x\nconections: {}\n"})
    failing = cli_process("-q", "validate", str(tmp_path / "bad.yaml"))
    assert failing.returncode == 2 and "bad.yaml:3:1: conections: unknown key" in failing.stderr
    both = cli_process("-q", "-v", "validate", str(tmp_path / "bad.yaml"))
    assert both.returncode == 2 and "contradict" in both.stderr


def test_verbose_says_each_stage_and_event_with_its_time(tmp_path: Path) -> None:
    import re

    plan = loaded_estate(tmp_path / "estate", patients=20, letters=3)
    said = cli_process("-v", "verify", str(plan))
    assert said.returncode == 0, said.stderr
    assert re.search(r"^\d\d:\d\d:\d\d patient-record: verify running$", said.stderr, re.MULTILINE), said.stderr
    assert re.search(r"^\d\d:\d\d:\d\d letters: verify done$", said.stderr, re.MULTILINE)
    assert "verify running" not in cli_process("verify", str(plan)).stderr


COLLECTOR_PROBE = """
import gc, sys
from migrate import cli
commands = cli.commands
def status(plan):  # the verb's work: what the collector is doing while it runs
    print(f"enabled={gc.isenabled()} frozen={gc.get_freeze_count() > 0}", flush=True)
    return real(plan)
real, commands.status = commands.status, status
sys.argv = ["migrate", "status", sys.argv[1]]
cli.main()
"""


def test_a_migrate_process_collects_garbage_while_a_verb_works(tmp_path: Path) -> None:
    """Start-up runs without the cyclic collector (the imports' objects are frozen after), but no verb's work
    ever does: a long load must not grow on uncollected cycles."""
    build_tree(tmp_path, {"p.yaml": "version: 1\ncomponent: gcprobe\nconnections: {}\n"})
    done = subprocess.run([sys.executable, "-c", COLLECTOR_PROBE, str(tmp_path / "p.yaml")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "enabled=True frozen=True" in done.stdout


def test_the_cli_in_process_leaves_the_callers_collector_alone(tmp_path: Path) -> None:
    build_tree(tmp_path, {"p.yaml": "version: 1\ncomponent: x\nconnections: {}\n"})
    frozen = gc.get_freeze_count()
    code, _, _ = cli("validate", str(tmp_path / "p.yaml"))
    assert code == 0 and gc.isenabled() and gc.get_freeze_count() == frozen
