"""Cutover and rollback: gates first, then the runbook steps, each journaled.

The sequence is the plan's `cutover.steps` with two built-in steps, `migrate:final-sync` (sync until a cycle
finds nothing to copy) and `migrate:final-verify`. A plan may place them itself; when it names neither,
they run right after the first step if the plan has two or more (the first step is the freeze, as in
DESIGN's example), else before the only step.

Journal state (`_plan` / `cutover`): idle → running(step N) → done | rolled_back. A failing step runs the
rollback steps and leaves the component on the source (the next cutover starts from the first step); an
interrupted cutover resumes at the interrupted step; a completed cutover is never repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from migrate.errors import GateRefused, MigrateError, StepFailed, VerificationFailed
from migrate.plan.loader import BUILTIN_STEPS
from migrate.plan.model import Plan, Step
from migrate.stages.engine import StageContext
from migrate.stages.gates import GateResult, evaluate_gates
from migrate.stages.runner import StageRunner, engine_for
from migrate.stages.steps import run_step
from migrate.state.journal import now

PLAN_ITEM = "_plan"
FINAL_SYNC, FINAL_VERIFY = BUILTIN_STEPS
MAX_FINAL_SYNC_CYCLES = 10


def cutover_sequence(plan: Plan) -> list[Step]:
    steps = list(plan.cutover.steps)
    if not any(s.run in BUILTIN_STEPS for s in steps):
        at = 1 if len(steps) >= 2 else 0
        steps[at:at] = [Step(name="final sync to zero lag", run=FINAL_SYNC),
                        Step(name="final verify", run=FINAL_VERIFY)]
    return steps


@dataclass
class StepRecord:
    name: str
    status: str  # done | failed | skipped
    seconds: float = 0.0
    detail: str = ""


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
                              azure_checks=self.azure_checks)

    def run(self, approved_by: str | None = None, check_only: bool = False) -> CutoverResult:
        journal = self.ctx.journal
        state = cutover_state(self.ctx)
        if state["status"] == "done":
            return CutoverResult("already_done", message=f"cutover already completed at {state.get('ended_at')}; "
                                 "it is never repeated (use `migrate rollback` to go back)")
        resuming = state["status"] == "running"
        gates = [] if resuming and not check_only else self.gates(approved_by)
        refused = [g for g in gates if not g.passed]
        journal.event("gates", "; ".join(f"{g.gate}: {'pass' if g.passed else 'FAIL'}" for g in gates) or "resumed",
                      outcome="refused" if refused else "ok",
                      data={"gates": [g.__dict__ for g in gates], "approved_by": approved_by})
        if refused:
            raise GateRefused("cutover refused: " + "; ".join(f"{g.gate}: {g.evidence}" for g in refused),
                              [f"{g.gate}: {g.evidence}" for g in refused])
        if check_only:
            return CutoverResult("checked", gates=gates, message="every gate passes")

        sequence = cutover_sequence(self.plan)
        first = int(state.get("step", 0)) if resuming else 0
        result = CutoverResult("done", gates=gates, resumed_at=first if resuming else None)
        started_at = state.get("started_at") if resuming else now().isoformat()
        attempt = int(state.get("attempt", 0)) + (0 if resuming else 1)
        self._mark_items("running")
        for index in range(first, len(sequence)):
            step = sequence[index]
            self._save(status="running", step=index, attempt=attempt, started_at=started_at,
                       approved_by=approved_by)
            journal.event("cutover-step", f"start {index + 1}/{len(sequence)}: {step.name}")
            try:
                record = self._run_step(step)
            except MigrateError as exc:
                result.steps.append(StepRecord(step.name, "failed", detail=str(exc)))
                journal.event("cutover-step", f"failed: {step.name}: {exc}", outcome="failed")
                result.rollback = self._rollback_steps()
                self._save(status="rolled_back", step=0, attempt=attempt, ended_at=now().isoformat(),
                           failed_step=step.name)
                self._mark_items("failed")
                if isinstance(exc, StepFailed):
                    raise StepFailed(f"{exc}; rollback steps ran and the component stays on the source") from exc
                raise
            result.steps.append(record)
            journal.event("cutover-step", f"done: {step.name} ({record.detail})")
        self._save(status="done", step=len(sequence), attempt=attempt, started_at=started_at,
                   ended_at=now().isoformat(), approved_by=approved_by)
        self._mark_items("done")
        result.message = "cutover complete: the component now runs on Azure"
        return result

    def _run_step(self, step: Step) -> StepRecord:
        runner = StageRunner(self.ctx)
        started = now()
        if step.run == FINAL_SYNC:
            detail = self._final_sync(runner)
        elif step.run == FINAL_VERIFY:
            results = runner.verify()
            differences = [d for r in results for d in r.differences]
            if differences:
                raise VerificationFailed(f"final verify found {len(differences)} difference(s)", differences)
            detail = f"{sum(r.checked for r in results)} checked, clean"
        else:
            outcome = run_step(self.ctx.loaded, step, "cutover")
            detail = outcome.output.strip().splitlines()[-1] if outcome.output.strip() else "exit 0"
        return StepRecord(step.name, "done", round((now() - started).total_seconds(), 3), detail)

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
        records = []
        for step in self.plan.rollback.steps:
            try:
                outcome = run_step(self.ctx.loaded, step, "rollback")
                records.append(StepRecord(step.name, "done", outcome.seconds))
                self.ctx.journal.event("rollback-step", f"done: {step.name}")
            except MigrateError as exc:
                records.append(StepRecord(step.name, "failed", detail=str(exc)))
                self.ctx.journal.event("rollback-step", f"failed: {step.name}: {exc}", outcome="failed")
        return records

    def rollback(self) -> CutoverResult:
        """Run the rollback steps and, where planned, copy target-side changes back to the source."""
        state = cutover_state(self.ctx)
        if state["status"] in ("idle", "rolled_back"):
            return CutoverResult(state["status"], message="nothing to roll back: the component is on the source")
        result = CutoverResult("rolled_back")
        reverse = self.plan.rollback.reverse_sync and state["status"] == "done"
        if reverse:  # bring Azure-side changes home before the application is pointed back
            result.steps += self._reverse_sync("reverse sync")
        result.rollback = self._rollback_steps()
        if reverse:  # and whatever was written while it was being switched
            result.steps += self._reverse_sync("reverse catch-up")
        failed = [r for r in result.rollback + result.steps if r.status == "failed"]
        self._save(status="rolled_back", step=0, attempt=state.get("attempt", 0), ended_at=now().isoformat())
        for item in self.plan.items:
            self.ctx.journal.set_stage(item.name, _kind(item), "rollback", "failed" if failed else "done",
                                       run_id=self.ctx.run_id)
        if failed:
            raise StepFailed("rollback finished with failures: " + "; ".join(f"{r.name}: {r.detail}" for r in failed))
        result.message = "rolled back: the component runs on the source"
        return result

    def _reverse_sync(self, label: str) -> list[StepRecord]:
        """Sync every item target → source under its own journal name (`<item>.reverse`)."""
        records = []
        for item in self.plan.items:
            reverse = item.model_copy(update={"name": f"{item.name}.reverse", "source": item.target,
                                              "target": item.source})
            engine = engine_for(reverse, self.ctx)
            try:
                synced = engine.sync(self.ctx)
            finally:
                engine.close()
            detail = f"{synced.created} created, {synced.updated} updated, {synced.deleted} deleted"
            records.append(StepRecord(f"{label} {item.name}", "failed" if synced.problems else "done",
                                      detail=detail if not synced.problems else "; ".join(synced.problems[:3])))
            self.ctx.journal.event("rollback-step", f"{label} {item.name}: {detail}", item=item.name,
                                   outcome="failed" if synced.problems else "ok")
        return records

    def _mark_items(self, status: str) -> None:
        for item in self.plan.items:
            self.ctx.journal.set_stage(item.name, _kind(item), "cutover", status, run_id=self.ctx.run_id)


def _kind(item: Any) -> str:
    return "database" if hasattr(item, "tables") else "blob"
