"""The README is true: its tour runs as written, and the shipped plans name their own runbooks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent


def tour_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## A tour", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_tour_runs_as_written(tmp_path: Path) -> None:
    """Each line in a copy of the repository's plans and runbooks, with the venv's `migrate` on PATH: exit 0."""
    shutil.copytree(ROOT / "plans", tmp_path / "plans")
    shutil.copytree(ROOT / "runbooks", tmp_path / "runbooks")
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text(f'PATH="{Path(sys.executable).parent}:$PATH"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PPM_", "AZURE_"))}  # no plan secrets set
    lines = tour_lines()
    assert lines[0] == ". .venv/bin/activate" and len(lines) > 10
    script = "set -e\n" + "\n".join(f'echo "+ $(cat <<"EOL"\n{line}\nEOL\n)"\n{line}' for line in lines)
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600, check=False)
    ran = [line[2:] for line in done.stdout.splitlines() if line.startswith("+ ")]
    assert done.returncode == 0, f"the tour stopped at: {ran[-1] if ran else '?'}\n{done.stderr[-3000:]}"
    assert len(ran) == len(lines)
    assert (tmp_path / "board.html").stat().st_size > 1000
    assert '"$schema"' in (tmp_path / "plan.schema.json").read_text()


def test_each_shipped_plan_names_its_own_runbook() -> None:
    for plan in sorted((ROOT / "plans").glob("*.yaml")):
        body = YAML(typ="safe").load(plan.read_text())
        runbook = (body.get("cutover") or {}).get("runbook")
        if runbook is None:
            continue
        path = ROOT / runbook
        assert path.is_file(), f"{plan.name}: runbook {runbook} does not exist"
        assert body["component"] in path.read_text(), f"{plan.name}: {runbook} is not {body['component']}'s runbook"


def test_the_protecting_the_source_example_is_a_valid_plan(tmp_path: Path) -> None:
    from helpers import cli_process

    text = (ROOT / "README.md").read_text()
    block = text.split("## Protecting the source", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    plan = tmp_path / "plan.yaml"
    plan.write_text("version: 1\ncomponent: wards\nconnections:\n"
                    '  onprem_ppm: {url: "postgresql+psycopg://app@onprem.example:5432/ppm"}\n'
                    '  azure_ppm: {url: "postgresql+psycopg://app@azure.example:5432/ppm"}\n' + block)
    checked = cli_process("validate", str(plan))
    assert checked.returncode == 0, checked.stderr
    from jsonschema import Draft202012Validator

    from migrate.commands import plan_schema

    errors = list(Draft202012Validator(plan_schema()).iter_errors(YAML(typ="safe").load(plan.read_text())))
    assert not errors, [e.message for e in errors]  # `migrate schema` knows what a person writes here too
