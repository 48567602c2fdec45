"""Cutover and rollback: gates first, then the runbook steps, each journaled; and which way replication runs.

The sequence is the plan's `cutover.steps` with three built-in steps, `migrate:final-sync` (sync until a
cycle finds nothing to copy), `migrate:final-verify` and `migrate:sequences` (target sequences/identities
past the moved ids). A plan may place them itself; when it names none, they run right after the first step
if the plan has two or more (the first step is the freeze, as in DESIGN's example), else before the only
step; `migrate:sequences`, when not named, follows the last built-in step the plan names. The **switch** is
the first plan step after the last built-in step: the target is authoritative (`migrate.state.direction`)
from the moment it starts.

Journal state (`_plan` / `cutover`): idle → running(step N) → done | rolling_back → rolled_back. A step that
fails before the switch runs the rollback steps and leaves the component on the source; one that fails at or
after it rolls back as `migrate rollback` does (target changes home first). An interrupted cutover resumes
at the interrupted step; a completed cutover is never repeated.

Rollback brings the target's changes home before the switch-back steps run: a final reverse sync where the
plan has `reverse_sync: true` (its failure stops the rollback unless forced), otherwise a comparison that
refuses while the target holds changes the source lacks (unless they are explicitly discarded). Only then is
the source authoritative again.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from migrate.errors import Difference, GateRefused, MigrateError, RollbackRefused, StepFailed, VerificationFailed
from migrate.plan.loader import BUILTIN_STEPS
from migrate.plan.model import Plan, Step
from migrate.stages.engine import REVERSE_SUFFIX, StageContext, SyncResult
from migrate.stages.gates import GateResult, evaluate_gates
from migrate.stages.runner import StageRunner, engine_for
from migrate.stages.steps import StepExited, StepOutcome, run_step, settle_orphan
from migrate.state.direction import PLAN_ITEM, read_direction, set_authority
from migrate.state.journal import now
from migrate.state.slots import SLOT_KEY
from migrate.state.steps import StepLog, StepRun
from migrate.state.sync_state import SyncState

__all__ = ["PLAN_ITEM", "Cutover", "CutoverResult", "cutover_sequence", "cutover_state", "replication_direction"]

FINAL_SYNC, FINAL_VERIFY, SEQUENCES = BUILTIN_STEPS
MAX_FINAL_SYNC_CYCLES = 10
APPROVAL_KEYS = ("approved_by", "approved_at", "approved_plan")  # who approved, when, and which plan hash
MAX_REVERSE_CYCLES = 3  # rollback's final reverse sync: until a cycle moves nothing, at most this many
_ORPHAN_SAYS = {
    "gone": "nothing of it was still running",
    "waited": "waited for its still-running process group to end",
    "killed": "its process group outlived the step's timeout and was ended (SIGTERM, then SIGKILL)",
    "other-host": "it ran on another host, so its step timeout was waited out before running it again",
}


def cutover_sequence(plan: Plan) -> list[Step]:
    steps = list(plan.cutover.steps)
    if not any(s.run in BUILTIN_STEPS for s in steps):
        at = 1 if len(steps) >= 2 else 0
        steps[at:at] = [Step(name="final sync to zero lag", run=FINAL_SYNC),
                        Step(name="final verify", run=FINAL_VERIFY)]
    if not any(s.run == SEQUENCES for s in steps):
        last = max(i for i, s in enumerate(steps) if s.run in BUILTIN_STEPS)
        steps.insert(last + 1, Step(name="sequences past the moved ids", run=SEQUENCES))
    return steps


def switch_index(sequence: list[Step]) -> int:
    """Index of the switch: the first plan step after the last built-in step (len(sequence) when none
    follows them: the target then becomes authoritative when the cutover completes)."""
    last_builtin = max((i for i, s in enumerate(sequence) if s.run in BUILTIN_STEPS), default=-1)
    return min(last_builtin + 1, len(sequence))


@dataclass
class StepRecord:
    name: str
    status: str  # done | failed | skipped
    seconds: float = 0.0
    detail: str = ""
    exit_status: int | None = None  # a script step's exit status (None: built-in, or it never exited)
    output: str = ""  # a script step's output: redacted, the last 64 KiB
    orphan: str | None = None  # on resume, what became of the interrupted run's group: gone | waited | killed
    forced: bool = False  # failed, and the rollback went on past it (--force)


@dataclass
class CutoverResult:
    status: str  # refused | checked | done | already_done | rolled_back
    gates: list[GateResult] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    rollback: list[StepRecord] = field(default_factory=list)
    resumed_at: int | None = None
    message: str = ""


def cutover_state(ctx: StageContext) -> dict[str, Any]:
    return ctx.journal.get(PLAN_ITEM, "cutover", {"status": "idle", "step": 0})


def replication_direction(ctx: StageContext) -> str:
    """`forward` while the source is authoritative, `reverse` after a completed cutover; refuses (exit 1)
    while a cutover interrupted after its switch, or a rollback, is unfinished: then the target may be
    taking writes and neither direction is safe to run unattended."""
    if not read_direction(ctx.journal).target_authoritative:
        return "forward"
    state = cutover_state(ctx)
    if state["status"] == "done":
        return "reverse"
    if state["status"] == "rolling_back":
        raise MigrateError("sync refused: a rollback is under way and has not finished; the target may still be "
                           "taking writes", hint="rerun `migrate rollback PLAN` to finish it")
    raise MigrateError(f"sync refused: a cutover was interrupted after its switch began (at step "
                       f"{int(state.get('step', 0)) + 1}); the target may be taking writes, so a forward sync "
                       "would overwrite or delete them",
                       hint="rerun `migrate cutover PLAN` to finish the cutover, or `migrate rollback PLAN`")


class Cutover:
    """Runs the cutover of one plan; the caller holds the plan lock."""

    def __init__(self, ctx: StageContext, azure_checks: Callable[[], list[tuple[str, str, str]]] | None = None):
        self.ctx = ctx
        self.azure_checks = azure_checks
        self.plan = ctx.loaded.plan

    def _save(self, **state: Any) -> None:
        self.ctx.journal.put(PLAN_ITEM, "cutover", state)

    def gates(self, approved_by: str | None = None) -> list[GateResult]:
        return evaluate_gates(self.ctx.loaded, self.ctx.journal, approved_by=approved_by,
                              azure_checks=self.azure_checks, reverse_checks=self._reverse_readiness)

    def _reverse_readiness(self) -> list[tuple[str, bool, str]]:
        """(item, ready, evidence) per item: would reverse replication work if the cutover were rolled back?"""
        out = []
        for item in self.plan.items:
            engine = engine_for(item, self.ctx)
            try:
                ready, evidence = engine.reverse_ready(self.ctx)
            except MigrateError as exc:
                ready, evidence = False, exc.message
            finally:
                engine.close()
            out.append((item.name, ready, evidence))
        return out

    def run(self, approved_by: str | None = None, check_only: bool = False) -> CutoverResult:
        journal = self.ctx.journal
        state = cutover_state(self.ctx)
        if state["status"] == "done":
            return CutoverResult("already_done", message=f"cutover already completed at {state.get('ended_at')}; "
                                 "it is never repeated (use `migrate rollback` to go back)")
        if state["status"] == "rolling_back":
            raise MigrateError("a rollback is under way and has not finished",
                               hint="rerun `migrate rollback PLAN` to finish it before another cutover")
        resuming = state["status"] == "running"
        if resuming and not check_only:
            # The gates were checked when the interrupted attempt began; checking them now would judge a
            # half-switched component. Keep that attempt's evidence and approval instead.
            gates = [GateResult(**g) for g in state.get("gates", [])]
            approved_by = state.get("approved_by")
            approval = {k: state[k] for k in APPROVAL_KEYS if k in state}
            journal.event("gates", f"resumed attempt {state.get('attempt')}: gates not re-checked, the first "
                          "attempt's evidence and approval are kept",
                          data={"gates": [g.__dict__ for g in gates], "approved_by": approved_by, "resumed": True})
        else:
            gates = self.gates(approved_by)
            approval = {"approved_by": approved_by, "approved_at": now().isoformat(),
                        "approved_plan": self.ctx.loaded.fingerprint}  # the plan hash the approval is for
            refused = [g for g in gates if not g.passed]
            journal.event("gates", "; ".join(f"{g.gate}: {'pass' if g.passed else 'FAIL'}" for g in gates),
                          outcome="refused" if refused else "ok",
                          data={"gates": [g.__dict__ for g in gates], "approved_by": approved_by})
            if refused:
                raise GateRefused("cutover refused: " + "; ".join(f"{g.gate}: {g.evidence}" for g in refused),
                                  [f"{g.gate}: {g.evidence}" for g in refused])
        if check_only:
            return CutoverResult("checked", gates=gates, message="every gate passes")

        sequence = cutover_sequence(self.plan)
        switch = switch_index(sequence)
        first = int(state.get("step", 0)) if resuming else 0
        result = CutoverResult("done", gates=gates, resumed_at=first if resuming else None)
        started_at = state.get("started_at") if resuming else now().isoformat()
        attempt = int(state.get("attempt", 0)) + (0 if resuming else 1)
        if not resuming:  # recorded before the first step, so "running" is never mistaken for an old journal's
            set_authority(journal, "source", "cutover started")
        evidence = [g.__dict__ for g in gates]
        self._mark_items("running")
        for index in range(first, len(sequence)):
            step = sequence[index]
            if index >= switch:  # durable before the switch starts: from here on the target may take writes
                set_authority(journal, "target", f"cutover step {index + 1} ({step.name}) began")
            self._save(status="running", step=index, attempt=attempt, started_at=started_at,
                       gates=evidence, **approval)
            journal.event("cutover-step", f"start {index + 1}/{len(sequence)}: {step.name}")
            try:
                record = self._run_step(step, index, attempt)
            except MigrateError as exc:
                failed = StepRecord(step.name, "failed", detail=str(exc))
                if isinstance(exc, StepExited):
                    failed.seconds, failed.output = exc.outcome.seconds, exc.outcome.output
                    failed.exit_status = None if exc.outcome.timed_out else exc.outcome.returncode
                result.steps.append(failed)
                journal.event("cutover-step", f"failed: {step.name}: {exc}", outcome="failed")
                self._save(status="running", step=index, attempt=attempt, started_at=started_at,
                           gates=evidence, failed_step=step.name, **approval)
                self._mark_items("failed")
                try:
                    rolled = self.rollback()  # target changes home first when the switch had begun
                except MigrateError as held:
                    raise StepFailed(f"{exc}; the rollback did not finish: {held.message}", hint=held.hint) from exc
                result.rollback = rolled.rollback
                result.steps += rolled.steps
                if isinstance(exc, StepFailed):
                    raise StepFailed(f"{exc}; rolled back: the component runs on the source") from exc
                raise
            result.steps.append(record)
            journal.event("cutover-step", f"done: {step.name} ({record.detail})")
        set_authority(journal, "target", "cutover complete")
        self._save(status="done", step=len(sequence), attempt=attempt, started_at=started_at,
                   ended_at=now().isoformat(), gates=evidence, **approval)
        self._mark_items("done")
        result.message = "cutover complete: the component now runs on Azure"
        return result

    def _run_step(self, step: Step, index: int, attempt: int) -> StepRecord:
        """Run one step of the sequence, its start and outcome journaled (`StepLog`); a script step first
        settles any process group an interrupted runner left behind, so two copies never run at once."""
        log = StepLog(self.ctx.journal)
        orphan = self._settle_interrupted(log, "cutover")
        run = StepRun("cutover", attempt, index, step.name, now().isoformat(), host=socket.gethostname(),
                      timeout=step.timeout, orphan=orphan)
        if step.run not in BUILTIN_STEPS:
            return self._script(log, run, step)
        runner = StageRunner(self.ctx)
        started = now()
        log.started(run)
        try:
            if step.run == FINAL_SYNC:
                detail = self._final_sync(runner)
            elif step.run == SEQUENCES:
                advanced = runner.sequences()
                detail = f"{len(advanced)} sequence(s) advanced" + (f": {'; '.join(advanced)}" if advanced else "")
            else:
                results = runner.verify()
                differences = [d for r in results for d in r.differences]
                if differences:
                    raise VerificationFailed(f"final verify found {len(differences)} difference(s)", differences)
                detail = f"{sum(r.checked for r in results)} checked, clean"
        except BaseException as exc:
            self._close(log, run, "failed" if isinstance(exc, MigrateError) else "interrupted", str(exc))
            raise
        seconds = round((now() - started).total_seconds(), 3)
        self._close(log, run, "done", detail)
        return StepRecord(step.name, "done", seconds, detail, orphan=orphan)

    def _script(self, log: StepLog, run: StepRun, step: Step) -> StepRecord:
        """Run a script step; its process group is journaled before it is waited on, its output after."""

        def on_start(pgid: int) -> None:
            run.pgid = pgid
            log.started(run)

        try:
            outcome = run_step(self.ctx.loaded, step, run.phase, on_start=on_start)
        except StepExited as exc:
            self._close(log, run, "timed_out" if exc.outcome.timed_out else "failed", exc.outcome.output,
                        exc.outcome)
            raise
        except BaseException:  # Ctrl-C: run_step has ended the group; the rerun starts the step afresh
            if run.pgid is not None:
                self._close(log, run, "interrupted", "")
            raise
        self._close(log, run, "done", outcome.output, outcome)
        last = outcome.output.strip().splitlines()[-1] if outcome.output.strip() else "exit 0"
        return StepRecord(step.name, "done", outcome.seconds, last, outcome.returncode, outcome.output, run.orphan)

    @staticmethod
    def _close(log: StepLog, run: StepRun, status: str, output: str, outcome: StepOutcome | None = None) -> None:
        run.status, run.ended_at, run.output = status, now().isoformat(), output
        run.seconds = round((datetime.fromisoformat(run.ended_at) - datetime.fromisoformat(run.started_at))
                            .total_seconds(), 3)
        if outcome is not None:
            run.seconds, run.exit_status = outcome.seconds, None if outcome.timed_out else outcome.returncode
        log.finished(run)

    def _settle_interrupted(self, log: StepLog, phase: str) -> str | None:
        """A step of `phase` a killed runner left running: wait for its process group up to what is left of
        its timeout, else end it (SIGTERM, then SIGKILL). Says which in the journal; returns it."""
        previous = log.running(phase)
        if previous is None:
            return None
        if previous.pgid is None:  # a built-in step: its work died with the runner
            what = "gone"
        else:
            elapsed = (now() - datetime.fromisoformat(previous.started_at)).total_seconds()
            remaining = max(0.0, (previous.timeout or 0.0) - elapsed)
            if previous.host and previous.host != socket.gethostname():
                # another host's processes cannot be seen from here: wait out the step's timeout instead
                time.sleep(remaining)
                what = "other-host"
            else:
                what = settle_orphan(previous.pgid, remaining)
        previous.status, previous.orphan = "interrupted", what
        self._close(log, previous, "interrupted", previous.output)
        self.ctx.journal.event(f"{phase}-step", f"interrupted run of {previous.name!r} (process group "
                               f"{previous.pgid}, host {previous.host}): {_ORPHAN_SAYS[what]}",
                               data={"step": previous.index, "pgid": previous.pgid, "orphan": what})
        return what

    def _final_sync(self, runner: StageRunner) -> str:
        for cycle in range(1, MAX_FINAL_SYNC_CYCLES + 1):
            results = runner.sync()
            problems = [p for r in results for p in r.problems]
            if problems:
                raise StepFailed(f"final sync failed: {problems[0]}")
            moved = sum(r.created + r.updated + r.deleted for r in results)
            if moved == 0:
                return f"zero lag after {cycle} cycle(s)"
        raise StepFailed(f"final sync still found changes after {MAX_FINAL_SYNC_CYCLES} cycles: are writes frozen?")

    def _rollback_steps(self) -> list[StepRecord]:
        """Run every rollback step (a failing one does not stop the rest), each journaled with its output."""
        log = StepLog(self.ctx.journal)
        orphan = self._settle_interrupted(log, "rollback")
        run_number = log.next_run("rollback")
        records = []
        for index, step in enumerate(self.plan.rollback.steps):
            run = StepRun("rollback", run_number, index, step.name, now().isoformat(), host=socket.gethostname(),
                          timeout=step.timeout, orphan=orphan if index == 0 else None)
            try:
                record = self._script(log, run, step)
                records.append(record)
                self.ctx.journal.event("rollback-step", f"done: {step.name}")
            except MigrateError as exc:
                failed = StepRecord(step.name, "failed", detail=str(exc))
                if isinstance(exc, StepExited):
                    failed.seconds, failed.output = exc.outcome.seconds, exc.outcome.output
                    failed.exit_status = None if exc.outcome.timed_out else exc.outcome.returncode
                records.append(failed)
                self.ctx.journal.event("rollback-step", f"failed: {step.name}: {exc}", outcome="failed")
        return records

    def rollback(self, force: bool = False, discard_target_changes: bool = False) -> CutoverResult:
        """Go back to the source. Once the target has been authoritative, its changes come home first (final
        reverse sync, or a refusal naming them); only then do the switch-back steps run. No reverse sync runs
        after them: the source takes writes again, and a reverse key diff would delete those. Any failure
        leaves the target authoritative and the rollback resumable (rerun it); `force` runs the switch-back
        although the final reverse sync failed."""
        state = cutover_state(self.ctx)
        target_first = read_direction(self.ctx.journal).target_authoritative
        if not target_first and state["status"] != "running":
            return CutoverResult(state["status"], message="nothing to roll back: the component is on the source")
        result = CutoverResult("rolled_back")
        if target_first:
            self._save(**{**state, "status": "rolling_back"})
            self._bring_target_changes_home(result, force, discard_target_changes)
        result.rollback = self._rollback_steps()
        failed = [r for r in result.rollback if r.status == "failed"]
        if failed:
            self._save(**{**state, "status": "rolling_back" if target_first else state["status"]})
            raise StepFailed("rollback did not finish: " + "; ".join(f"{r.name}: {r.detail}" for r in failed)
                             + ("; the target stays authoritative" if target_first else ""),
                             hint="fix the cause and rerun `migrate rollback PLAN` (its steps must be idempotent)")
        kept = {k: state[k] for k in (*APPROVAL_KEYS, "gates", "started_at", "failed_step") if k in state}
        self._save(status="rolled_back", step=0, attempt=state.get("attempt", 0), ended_at=now().isoformat(),
                   **kept)  # the attempt's approval and gate evidence stay on record
        set_authority(self.ctx.journal, "source", "rollback complete" + (
            "; target changes discarded" if discard_target_changes else ""))
        released, kept = self._release_reverse_capture()
        for item in self.plan.items:
            self.ctx.journal.set_stage(item.name, _kind(item), "rollback", "done", run_id=self.ctx.run_id)
            SyncState(self.ctx.journal, item.name).restart_dual_run()  # min_dual_run counts again from now
            reverse = f"{item.name}{REVERSE_SUFFIX}"
            self.ctx.journal.forget_item(reverse)  # the next cutover seeds afresh
            if reverse in kept:  # but a slot still on the target stays on record until it is dropped
                self.ctx.journal.put(reverse, SLOT_KEY, kept[reverse])
        result.message = "rolled back: the component runs on the source" + (f"; {released}" if released else "")
        return result

    def _release_reverse_capture(self) -> tuple[str, dict[str, Any]]:
        """Reverse replication's slots on the target: nobody reads them after a rollback (the next cutover
        starts reverse replication afresh), and each would hold the target's WAL for good. Dropped here.
        Returns what to say, and the slot records of those that could not be dropped (they stay on record for
        `migrate abandon`)."""
        dropped: list[str] = []
        failed: list[str] = []
        kept: dict[str, Any] = {}
        for item in self.plan.items:
            engine = engine_for(item, self.ctx, reverse=True)
            try:
                dropped += engine.release(self.ctx.journal)
            except MigrateError as exc:
                failed.append(f"{item.name}: {exc}")
                kept[engine.name] = self.ctx.journal.get(engine.name, SLOT_KEY)
            finally:
                engine.close()
        if dropped:
            self.ctx.journal.event("rollback", f"dropped {', '.join(dropped)} (reverse replication ends here)",
                                   data={"dropped": dropped})
        said = ([f"dropped {', '.join(dropped)}"] if dropped else []) + [
            f"could not drop reverse replication's slot ({f}); `migrate abandon` drops it" for f in failed]
        return "; ".join(said), kept

    def _bring_target_changes_home(self, result: CutoverResult, force: bool, discard: bool) -> None:
        if self.plan.rollback.reverse_sync:
            records = self._reverse_cycles("reverse sync")
            result.steps += records
            failed = [r for r in records if r.status == "failed"]
            if failed and not force:
                raise StepFailed("reverse sync failed, so the switch-back steps did not run and the target stays "
                                 "authoritative: " + "; ".join(f"{r.name}: {r.detail}" for r in failed),
                                 hint="fix the cause and rerun `migrate rollback PLAN`; `--force` switches back "
                                      "anyway, leaving the unsynced changes stranded on the target")
            for record in failed:
                record.forced = True
                self.ctx.journal.event("rollback", f"forced past a failed reverse sync: {record.name}: "
                                       f"{record.detail}", outcome="warn")
            return
        differences = self._target_changes()
        if differences and not discard:
            shown = "; ".join(f"{d.item} {d.kind} {d.key}" for d in differences[:10])
            raise RollbackRefused(
                f"rollback refused: the target has {len(differences)} change(s) the source lacks and the plan has "
                f"no reverse_sync, so switching back would lose them: {shown}"
                + (" ..." if len(differences) > 10 else ""), differences,
                hint="set `rollback: {reverse_sync: true}` to bring them home, or pass --discard-target-changes "
                     "to lose them")
        if differences:
            self.ctx.journal.event("rollback", f"discarded {len(differences)} target change(s) "
                                   "(--discard-target-changes)", outcome="warn",
                                   data={"differences": [d.__dict__ for d in differences[:1000]]})

    def _target_changes(self) -> list[Difference]:
        """What differs between the two sides now: after the cutover's final verify proved them equal and the
        source was frozen, every difference is a change made on the target."""
        found: list[Difference] = []
        for item in self.plan.items:
            engine = engine_for(item, self.ctx)
            try:
                found += engine.verify(self.ctx).differences
            finally:
                engine.close()
        return found

    def _reverse_cycles(self, label: str) -> list[StepRecord]:
        """Reverse-sync every item (target → source) until a cycle moves nothing (at most
        MAX_REVERSE_CYCLES); one record per item with the totals, failed when a cycle failed."""
        records = []
        runner = StageRunner(self.ctx)
        for item in self.plan.items:
            started = now()
            moved = [0, 0, 0]
            problem = ""
            for _ in range(MAX_REVERSE_CYCLES):
                try:
                    synced: SyncResult = runner.sync_item(item, reverse=True)
                except MigrateError as exc:
                    problem = exc.message
                    break
                if synced.problems:
                    problem = "; ".join(synced.problems[:3])
                    break
                moved = [moved[0] + synced.created, moved[1] + synced.updated, moved[2] + synced.deleted]
                if not (synced.created or synced.updated or synced.deleted):
                    break
            detail = problem or f"{moved[0]} created, {moved[1]} updated, {moved[2]} deleted"
            records.append(StepRecord(f"{label} {item.name}", "failed" if problem else "done",
                                      round((now() - started).total_seconds(), 3), detail))
            self.ctx.journal.event("rollback-step", f"{label} {item.name}: {detail}", item=item.name,
                                   outcome="failed" if problem else "ok")
        return records

    def _mark_items(self, status: str) -> None:
        for item in self.plan.items:
            self.ctx.journal.set_stage(item.name, _kind(item), "cutover", status, run_id=self.ctx.run_id)


def _kind(item: Any) -> str:
    return "database" if hasattr(item, "tables") else "blob"
