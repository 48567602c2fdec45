"""Runbook steps as real processes: own process group, orphans after kill -9, timeouts, kept output, resume.

Each test builds a tiny plan (one local folder → local folder item) whose cutover steps are shell scripts
that spawn a grandchild and write timestamps; the guarantees are proven from those files and /proc, not
only from what migrate says.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import build_tree, cli_process, wait_for
from migrate import commands
from migrate.errors import StepFailed
from migrate.plan.loader import load_plan
from migrate.state.journal import Journal
from migrate.state.steps import StepLog

PLAN = """
version: 1
component: steps
connections:
  src: {{path: src}}
  dst: {{path: dst}}
blobs:
  - {{name: files, source: src, target: dst}}
cutover:
  gates: {{max_lag: null, verified: false, approval: true}}
  steps:
    - {{name: freeze, run: "runbooks/freeze.sh"}}
    - {{name: switch, run: "runbooks/switch.sh", timeout: {timeout}}}
rollback:
  steps:
    - {{name: back, run: "runbooks/back.sh"}}
"""

# The step's work runs in a grandchild (a background subshell) that stamps its start and end into a log.
SWITCH = """
#!/bin/sh
(
  echo "start $(date +%s.%N)" >> "{log}"
  sleep {seconds} &
  echo $! >> "{pids}"
  wait
  echo "end $(date +%s.%N)" >> "{log}"
) &
wait
echo "switched"
"""


def make_plan(tmp_path: Path, *, seconds: float = 3, timeout: str = "30s", switch: str | None = None,
              back: str = "#!/bin/sh\necho 'pointing back: rolled-back-marker'\n") -> Path:
    log, pids = tmp_path / "switch.log", tmp_path / "grandchild.pids"
    build_tree(tmp_path, {
        "plan.yaml": PLAN.format(timeout=timeout),
        "src/a.txt": "hello\n",
        "runbooks/freeze.sh": "#!/bin/sh\necho frozen\n",
        "runbooks/switch.sh": switch or SWITCH.format(log=log, pids=pids, seconds=seconds),
        "runbooks/back.sh": back,
    })
    done = cli_process("run", str(tmp_path / "plan.yaml"))
    assert done.returncode == 0, done.stderr
    return tmp_path / "plan.yaml"



def alive(pid: int) -> bool:
    """A live (not zombie) process with this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stamps(log: Path) -> list[tuple[str, float]]:
    return [(w, float(t)) for w, t in (line.split() for line in log.read_text().splitlines())]


def step_log(plan: Path) -> StepLog:
    return StepLog(Journal(load_plan(plan).state_url))


def start_cutover(plan: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "migrate", "cutover", str(plan), "--yes", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_resume_after_kill_9_waits_for_the_orphan_step_never_two_copies(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, seconds=3)
    log = tmp_path / "switch.log"
    runner = start_cutover(plan, "--approved-by", "alice")
    wait_for(lambda: log.exists() and "start" in log.read_text())  # the step is running: progress first
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    orphan = int((tmp_path / "grandchild.pids").read_text().split()[0])
    assert alive(orphan)  # the step outlived its runner (its own session)

    resumed = cli_process("cutover", str(plan), "--yes", "--json")  # no --approved-by this time
    assert resumed.returncode == 0, resumed.stderr
    events = [w for w, _ in stamps(log)]
    assert events == ["start", "end", "start", "end"]  # the rerun began only after the orphan ended
    (_, end1), (_, start2) = stamps(log)[1], stamps(log)[2]
    assert end1 <= start2
    runs = step_log(plan).runs("cutover", 1)
    switch = [r for r in runs if r.name == "switch"][0]
    assert switch.orphan == "waited" and switch.status == "done" and switch.output.strip() == "switched"
    assert switch.exit_status == 0 and switch.pgid and switch.host
    journal = Journal(load_plan(plan).state_url)
    assert any("waited for its still-running process group" in e["message"] for e in journal.events())
    # resume keeps the first attempt's approval and gate evidence
    state = journal.get("_plan", "cutover")
    assert state["status"] == "done" and state["approved_by"] == "alice"
    assert {g["gate"] for g in state["gates"]} >= {"loaded", "approval"}
    assert all(g["passed"] for g in state["gates"])
    # freeze, final sync, final verify, sequences, switch: the switch (index 4) is where it resumed
    assert '"resumed_at": 4' in resumed.stdout and '"gate": "approval"' in resumed.stdout
    assert '"output": "switched\\n"' in resumed.stdout and '"orphan": "waited"' in resumed.stdout


def test_resume_kills_an_orphan_that_outlives_its_timeout(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, seconds=60, timeout="3s")
    log, pids = tmp_path / "switch.log", tmp_path / "grandchild.pids"
    runner = start_cutover(plan, "--approved-by", "bob")
    wait_for(lambda: pids.exists() and pids.read_text().strip() != "")
    runner.send_signal(signal.SIGKILL)
    runner.wait()
    orphan = int(pids.read_text().split()[0])
    assert alive(orphan)
    started = time.monotonic()
    resumed = cli_process("cutover", str(plan), "--yes")
    assert not alive(orphan)  # the orphan group was ended before the step ran again
    assert resumed.returncode == 1  # the rerun itself also runs 60 s > 3 s: timed out, rollback ran
    assert "timed out after 3s" in resumed.stderr and "rolled back: the component runs on the source" in resumed.stderr
    assert time.monotonic() - started < 30
    second = int(pids.read_text().split()[1])
    assert not alive(second)
    assert [w for w, _ in stamps(log)] == ["start", "start"]  # neither copy ever reached its end
    runs = step_log(plan).runs("cutover", 1)
    switch = [r for r in runs if r.name == "switch"][0]
    assert switch.orphan == "killed" and switch.status == "timed_out"
    journal = Journal(load_plan(plan).state_url)
    assert any("outlived the step's timeout and was ended" in e["message"] for e in journal.events())


def test_timeout_kills_the_whole_group_including_grandchildren(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, seconds=60, timeout="1s")
    with pytest.raises(StepFailed, match="timed out after 1s"):
        commands.cutover(plan, approved_by="carol")
    grandchild = int((tmp_path / "grandchild.pids").read_text().split()[0])
    assert not alive(grandchild)
    assert "end" not in (tmp_path / "switch.log").read_text()
    # the rollback step ran and its output is kept
    back = step_log(plan).runs("rollback", 1)
    assert [r.name for r in back] == ["back"] and back[0].status == "done"
    assert "rolled-back-marker" in back[0].output
    assert step_log(plan).running("cutover") is None


def test_full_output_kept_last_64_kib_redacted(tmp_path: Path) -> None:
    noisy = ("#!/bin/sh\n"
             "i=0; while [ $i -lt 2200 ]; do printf 'line %04d %s\\n' $i "
             "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'; i=$((i+1)); done\n"
             "echo 'Server=db;Password=hunter2-secret;' >&2\n"
             "echo the-very-end\n")
    plan = make_plan(tmp_path, switch=noisy)
    result = commands.cutover(plan, approved_by="dave")
    assert result.status == "done"
    record = [s for s in result.steps if s.name == "switch"][0]
    printed = subprocess.run(["sh", str(tmp_path / "runbooks/switch.sh")], capture_output=True, text=True,
                             check=True)
    assert len(printed.stdout) > 100 * 1024  # the step really printed more than 100 KiB
    kept = [r for r in step_log(plan).runs("cutover", 1) if r.name == "switch"][0].output
    assert kept == record.output
    assert len(kept.encode()) == 64 * 1024
    assert kept.endswith("Server=db;Password=***;\nthe-very-end\n")
    assert "hunter2-secret" not in kept
    assert "line 2199 " in kept and "line 0000" not in kept
    journal_bytes = (tmp_path / ".migrate" / "steps.db").read_bytes()
    assert b"hunter2-secret" not in journal_bytes


def test_failing_step_keeps_its_output_and_the_rollback_output(tmp_path: Path) -> None:
    failing = "#!/bin/sh\necho 'checking dns'\necho 'switch refused by the load balancer' >&2\nexit 7\n"
    plan = make_plan(tmp_path, switch=failing)
    with pytest.raises(StepFailed, match="exited 7: switch refused by the load balancer"):
        commands.cutover(plan, approved_by="erin")
    runs = step_log(plan).runs("cutover", 1)
    switch = [r for r in runs if r.name == "switch"][0]
    assert switch.status == "failed" and switch.exit_status == 7
    assert switch.output == "checking dns\nswitch refused by the load balancer\n"
    assert "rolled-back-marker" in step_log(plan).runs("rollback", 1)[0].output
    state = Journal(load_plan(plan).state_url).get("_plan", "cutover")
    assert state["status"] == "rolled_back" and state["approved_by"] == "erin"


def test_ctrl_c_during_a_step_ends_its_group_and_exits_130(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, seconds=60)
    pids = tmp_path / "grandchild.pids"
    runner = start_cutover(plan, "--approved-by", "frank")
    wait_for(lambda: pids.exists() and pids.read_text().strip() != "")
    grandchild = int(pids.read_text().split()[0])
    sent = time.monotonic()
    runner.send_signal(signal.SIGINT)
    _, err = runner.communicate(timeout=10)
    assert runner.returncode == 130 and time.monotonic() - sent < 2, err
    assert "interrupted" in err and "Traceback" not in err
    assert not alive(grandchild)
    assert step_log(plan).running("cutover") is None
