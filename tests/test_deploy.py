"""The manifests in deploy/ are valid for their engines, offline, and the `migrate` commands in them parse.

Kubernetes: `kubernetes-validate --strict` (its bundled schemas) against the oldest and newest Kubernetes this
Job is written for. Container Apps: tests/schemas/containerapps-job.schema.json, an excerpt of the
Microsoft.App/jobs 2024-03-01 ARM spec. GitHub Actions: check-jsonschema's bundled workflow schema. Each check
has a negative twin proving it refuses a misspelt key, so a green run means something.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from helpers import cli_process

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes" / "worker-job.yaml"
CONTAINER_APPS = ROOT / "deploy" / "containerapps" / "worker-job.json"
WORKFLOW = ROOT / "deploy" / "github" / "migrate-workers.yml"
CONTAINER_APPS_SCHEMA = ROOT / "tests" / "schemas" / "containerapps-job.schema.json"

# 1.30: the oldest release where both podReplacementPolicy and backoffLimitPerIndex are in the API and on by
# default (beta since 1.29, when AKS's oldest supported versions still include it); 1.34: both generally available.
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0")

STAGES = ("preflight", "schema", "load", "verify", "sync")
SHARD = re.compile(r"^(\d+|\$\(JOB_COMPLETION_INDEX\)|\$\{\{ matrix\.shard \}\})/(\d+)$")
# the options each verb takes in the manifests' contract; a value after the option unless it is a flag
OPTIONS: dict[str, dict[str, bool]] = {
    "worker": {"--shard": True, "--until": True, "--json": False},
    "run": {"--workers": True, "--until": True, "--json": False, "--item": True, "--lock-timeout": True,
            "--allow-mass-delete": False},
    "validate": {"--skip-env": False, "--json": False},
    "plan": {"--json": False, "--detailed-exitcode": False},
}
MATRIX_SHARD = "${{ matrix.shard }}"
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in YAML(typ="safe").load_all(path.read_text()) if doc is not None]


def kubernetes_objects() -> dict[str, dict[str, Any]]:
    """The manifest's objects by kind (one of each)."""
    objects = {doc["kind"]: doc for doc in load_yaml_documents(KUBERNETES)}
    assert set(objects) == {"ConfigMap", "Secret", "Job"}
    return objects


def kubernetes_worker() -> dict[str, Any]:
    containers = kubernetes_objects()["Job"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_apps_job() -> dict[str, Any]:
    resources = json.loads(CONTAINER_APPS.read_text())["resources"]
    assert len(resources) == 1 and resources[0]["type"] == "Microsoft.App/jobs"
    return resources[0]


def container_apps_worker() -> dict[str, Any]:
    containers = container_apps_job()["properties"]["template"]["containers"]
    assert len(containers) == 1
    return containers[0]


def workflow() -> dict[str, Any]:
    return YAML(typ="safe").load(WORKFLOW.read_text())


def workflow_commands() -> list[list[str]]:
    """Every `migrate ...` line of every step's `run:`, split like a shell (a GitHub expression kept whole)."""
    found = []
    for job in workflow()["jobs"].values():
        for step in job["steps"]:
            for line in str(step.get("run", "")).splitlines():
                if line.strip().startswith("migrate "):
                    argv = shlex.split(line.replace(MATRIX_SHARD, "@SHARD@"))
                    found.append([word.replace("@SHARD@", MATRIX_SHARD) for word in argv])
    return found


def manifest_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `migrate` command in deploy/."""
    k8s, aca = kubernetes_worker(), container_apps_worker()
    return [("kubernetes", [*k8s["command"], *k8s["args"]]), ("containerapps", [*aca["command"], *aca["args"]]),
            *(("github", argv) for argv in workflow_commands())]


def argv_problems(argv: list[str]) -> list[str]:
    """What is wrong with a `migrate` command line in the manifests' contract (nothing: an empty list)."""
    if argv[:1] != ["migrate"] or len(argv) < 2:
        return ["not a `migrate VERB` command"]
    verb, problems, plans = argv[1], [], []
    if verb not in OPTIONS:
        return [f"unknown verb {verb!r}"]
    words = iter(argv[2:])
    for word in words:
        if not word.startswith("-"):
            plans.append(word)
            continue
        name, _, inline = word.partition("=")
        if name not in OPTIONS[verb]:
            problems.append(f"{verb} takes no option {name}")
            continue
        if not OPTIONS[verb][name]:
            continue
        value = inline or next(words, None)
        if value is None:
            problems.append(f"{name} needs a value")
        elif name == "--shard" and not SHARD.match(value):
            problems.append(f"--shard {value}: expected i/N")
        elif name == "--shard" and value[0].isdigit() and not int(value.split("/")[0]) < int(value.split("/")[1]):
            problems.append(f"--shard {value}: i must be below N")
        elif name == "--until" and value not in STAGES:
            problems.append(f"--until {value}: not a stage ({', '.join(STAGES)})")
        elif name == "--workers" and not (value.isdigit() and int(value) > 0):
            problems.append(f"--workers {value}: not a positive number")
    if not plans:
        problems.append("no plan")
    elif verb != "validate" and len(plans) > 1:
        problems.append(f"one plan, not {plans}")
    elif not all(p.endswith((".yaml", ".yml")) or verb == "validate" for p in plans):
        problems.append(f"a plan is a .yaml file: {plans}")
    return problems


@cache
def verb_exists(verb: str) -> bool:
    """`migrate VERB --help` exits 0 in this checkout (the worker verb may not be here yet)."""
    return cli_process(verb, "--help").returncode == 0


def cli_refuses_only_the_plan(argv: list[str], missing_plan: Path) -> tuple[bool, str]:
    """Run the real CLI with the command's options and a plan that does not exist: true when the plan (exit 2,
    "plan" in the message) and nothing else is refused, so every option and value got through the parser."""
    args = [str(missing_plan) if not a.startswith("-") and a.endswith((".yaml", ".yml")) else a for a in argv[2:]]
    args = [a.replace("$(JOB_COMPLETION_INDEX)", "0").replace(MATRIX_SHARD, "0") for a in args]
    done = cli_process(argv[1], *args)
    said = (done.stderr + done.stdout).lower()
    ok = done.returncode == 2 and "plan" in said and "no such option" not in said and "invalid value" not in said
    return ok, said


# --- the commands ---

def test_the_manifests_run_each_verb_they_need() -> None:
    verbs = [(where, argv[1]) for where, argv in manifest_commands()]
    assert ("kubernetes", "worker") in verbs and ("containerapps", "worker") in verbs
    assert {v for w, v in verbs if w == "github"} == {"validate", "plan", "worker"}


@pytest.mark.parametrize("where,argv", manifest_commands(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_each_migrate_command_parses(where: str, argv: list[str], tmp_path: Path) -> None:
    assert argv_problems(argv) == [], (where, argv)
    if verb_exists(argv[1]):
        ok, said = cli_refuses_only_the_plan(argv, tmp_path / "no-such-plan.yaml")
        assert ok, f"{where}: {' '.join(argv)}\n{said}"


@pytest.mark.parametrize("argv,problem", [
    ("migrate worker p.yaml --shards 0/4", "no option --shards"),
    ("migrate worker p.yaml --shard 4", "expected i/N"),
    ("migrate worker p.yaml --shard 4/4", "below N"),
    ("migrate worker p.yaml --shard $(JOB_INDEX)/4", "expected i/N"),
    ("migrate worker p.yaml --until loading", "not a stage"),
    ("migrate worker p.yaml --until", "needs a value"),
    ("migrate run p.yaml --workers 0", "not a positive number"),
    ("migrate sync p.yaml", "unknown verb"),
    ("migrate worker --until load", "no plan"),
    ("migrate plan a.yaml b.yaml", "one plan"),
])
def test_a_misspelt_command_is_refused(argv: str, problem: str) -> None:
    problems = argv_problems(argv.split())
    assert any(problem in p for p in problems), problems


def test_the_real_cli_refuses_a_misspelt_option_but_not_a_missing_plan(tmp_path: Path) -> None:
    """The live half of the check is not a rubber stamp: `--untill` is caught, `--until` passes to the plan."""
    missing = tmp_path / "no-such-plan.yaml"
    assert cli_refuses_only_the_plan(["migrate", "run", "p.yaml", "--until", "load"], missing)[0]
    ok, said = cli_refuses_only_the_plan(["migrate", "run", "p.yaml", "--untill", "load"], missing)
    assert not ok and "no such option" in said
    if verb_exists("worker"):
        assert not cli_refuses_only_the_plan(["migrate", "worker", "p.yaml", "--shards", "0/4"], missing)[0]


def shard_count(argv: list[str]) -> int | None:
    for option, value in zip(argv, argv[1:], strict=False):
        if option == "--shard":
            match = SHARD.match(value)
            assert match
            return int(match.group(2))
    return None


# --- Kubernetes ---

def kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    versions = [arg for v in KUBERNETES_VERSIONS for arg in ("--kubernetes-version", v)]
    return subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *versions, str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_kubernetes_manifest_is_valid_offline() -> None:
    done = kubernetes_validate(KUBERNETES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_validation_refuses_a_misspelt_field(tmp_path: Path) -> None:
    bad = tmp_path / "worker-job.yaml"
    bad.write_text(KUBERNETES.read_text().replace("podReplacementPolicy:", "podReplacementPolicyy:"))
    done = kubernetes_validate(bad)
    assert done.returncode != 0 and "podReplacementPolicyy" in done.stdout + done.stderr


def test_kubernetes_job_is_an_indexed_job_of_n_workers() -> None:
    spec = kubernetes_objects()["Job"]["spec"]
    worker = kubernetes_worker()
    n = shard_count(worker["args"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == n
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["backoffLimitPerIndex"] >= 1 and 0 <= spec["maxFailedIndexes"] <= n
    assert "$(JOB_COMPLETION_INDEX)/" in " ".join(worker["args"])
    assert {"name": "JOB_COMPLETION_INDEX"} not in worker["env"]  # the Job controller sets it, not us
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "FailJob", "onExitCodes": {"containerName": worker["name"], "operator": "In", "values": [2]}} \
        in rules  # exit 2 is bad usage or plan: a retry cannot help


def test_kubernetes_pod_is_locked_down_and_bounded() -> None:
    pod = kubernetes_objects()["Job"]["spec"]["template"]["spec"]
    worker = kubernetes_worker()
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] >= 60  # SIGTERM: stop claiming, give tasks back, exit 130
    assert pod["securityContext"]["runAsNonRoot"] is True
    context = worker["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(worker["resources"]) == {"requests", "limits"}
    assert all(set(worker["resources"][k]) == {"cpu", "memory"} for k in ("requests", "limits"))


def test_kubernetes_worker_gets_its_plan_and_every_variable_the_plan_names(tmp_path: Path) -> None:
    objects = kubernetes_objects()
    pod = objects["Job"]["spec"]["template"]["spec"]
    worker = kubernetes_worker()
    plan_path = next(a for a in worker["args"] if a.endswith(".yaml"))
    mount = next(m for m in worker["volumeMounts"] if plan_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == objects["ConfigMap"]["metadata"]["name"]
    text = objects["ConfigMap"]["data"][plan_path.removeprefix(mount["mountPath"] + "/")]
    plan = tmp_path / "plan.yaml"
    plan.write_text(text)
    checked = cli_process("validate", "--skip-env", str(plan))
    assert checked.returncode == 0, checked.stderr
    assert YAML(typ="safe").load(text)["state"].startswith("postgresql")  # workers share a PostgreSQL journal
    env = {e["name"]: e for e in worker["env"]}
    assert set(ENV_REF.findall(text)) <= set(env)
    secret = objects["Secret"]
    for entry in env.values():
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert all(v.startswith("<") and v.endswith(">") for v in secret["stringData"].values())  # placeholders only


# --- Azure Container Apps ---

def container_apps_errors(document: Any) -> list[str]:
    schema = json.loads(CONTAINER_APPS_SCHEMA.read_text())
    Draft202012Validator.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in Draft202012Validator(schema).iter_errors(document)]


def test_container_apps_job_matches_the_arm_spec_excerpt() -> None:
    assert container_apps_errors(json.loads(CONTAINER_APPS.read_text())) == []


@pytest.mark.parametrize("path,key", [
    (("properties", "configuration", "manualTriggerConfig"), "paralelism"),
    (("properties", "template", "containers", 0), "commands"),
    (("properties", "template", "containers", 0, "env", 0), "secretref"),
    (("properties", "configuration"), "replicaTimeOut"),
])
def test_container_apps_schema_refuses_a_misspelt_key(path: tuple[Any, ...], key: str) -> None:
    document = json.loads(CONTAINER_APPS.read_text())
    node = document["resources"][0]
    for step in path:
        node = node[step]
    node[key] = 1
    assert any(repr(key) in error for error in container_apps_errors(document))


def test_container_apps_job_runs_n_replicas_without_a_shard_index() -> None:
    template = json.loads(CONTAINER_APPS.read_text())
    job = container_apps_job()
    config = job["properties"]["configuration"]
    worker = container_apps_worker()
    assert config["triggerType"] == "Manual"
    trigger = config["manualTriggerConfig"]
    assert trigger["parallelism"] == trigger["replicaCompletionCount"] == "[parameters('workers')]"
    assert "--shard" not in worker["args"]  # Container Apps documents no replica index: claims balance the work
    used = set(re.findall(r"parameters\('([A-Za-z]+)'\)", CONTAINER_APPS.read_text()))
    assert used == set(template["parameters"])  # every parameter used, none missing


def test_container_apps_worker_gets_its_plan_and_the_same_variables_as_on_kubernetes() -> None:
    config = container_apps_job()["properties"]["configuration"]
    worker = container_apps_worker()
    secrets = {s["name"]: s for s in config["secrets"]}
    assert all("keyVaultUrl" in s or s["value"].startswith("[parameters(") for s in secrets.values())  # none inline
    assert all(e["secretRef"] in secrets for e in worker["env"])
    assert {e["name"] for e in worker["env"]} == {e["name"] for e in kubernetes_worker()["env"] if "valueFrom" in e}
    plan_path = next(a for a in worker["args"] if a.endswith(".yaml"))
    mount = next(m for m in worker["volumeMounts"] if plan_path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in container_apps_job()["properties"]["template"]["volumes"]
                  if v["name"] == mount["volumeName"])
    assert volume["storageType"] == "Secret"
    assert {"secretRef": "plan", "path": plan_path.removeprefix(mount["mountPath"] + "/")} in volume["secrets"]


# --- GitHub Actions ---

def check_workflow(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=120, check=False)


def test_workflow_is_valid_offline() -> None:
    done = check_workflow(WORKFLOW)
    assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_check_refuses_a_misspelt_key(tmp_path: Path) -> None:
    bad = tmp_path / "migrate-workers.yml"
    bad.write_text(WORKFLOW.read_text().replace("fail-fast:", "fail_fast:"))
    assert check_workflow(bad).returncode != 0


def test_workflow_runs_one_leg_per_shard_after_a_dry_run() -> None:
    jobs = workflow()["jobs"]
    strategy = jobs["workers"]["strategy"]
    worker = next(argv for argv in workflow_commands() if argv[1] == "worker")
    assert strategy["fail-fast"] is False
    assert strategy["matrix"]["shard"] == list(range(shard_count(worker) or 0))
    assert jobs["workers"]["needs"] == "dry-run"
    assert [argv[1] for argv in workflow_commands()] == ["validate", "plan", "worker"]


def test_workflow_sets_every_variable_its_plan_names_from_secrets() -> None:
    env = workflow()["env"]
    plans = {argv[2] for argv in workflow_commands()}
    assert len(plans) == 1
    text = (ROOT / plans.pop()).read_text()
    names = set(ENV_REF.findall(text))
    assert names and names <= set(env)
    assert all(env[name] == f"${{{{ secrets.{name} }}}}" for name in names)


# --- the README's section ---

def readme_section() -> str:
    return (ROOT / "README.md").read_text().split("## Deploying workers", 1)[1].split("\n## ", 1)[0]


def test_readme_names_each_manifest_and_only_files_that_exist() -> None:
    section = readme_section()
    named = set(re.findall(r"`((?:deploy|tests)/[^`\s]+\.(?:ya?ml|json))`", section))
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "deploy").rglob("*") if p.is_file()}
    assert shipped <= named
    assert all((ROOT / path).is_file() for path in named), named


def test_readme_settings_are_the_files_settings() -> None:
    """Each `key: value` the section quotes is in a manifest as written (YAML) or as its JSON spelling."""
    texts = [p.read_text() for p in (KUBERNETES, CONTAINER_APPS, WORKFLOW)]
    quoted = re.findall(r"`([A-Za-z-]+): ([^`]+)`", readme_section())
    assert len(quoted) >= 10
    for key, value in quoted:
        spellings = (f"{key}: {value}", f'"{key}": {value}', f'"{key}": "{value}"')
        assert any(s in text for s in spellings for text in texts), f"{key}: {value}"
    pod = kubernetes_objects()["Job"]["spec"]["template"]["spec"]
    assert f"uid {pod['securityContext']['runAsUser']})" in readme_section()
