"""Gather the evidence a change board signs off from the journal: one `ReportData`, many renderers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from migrate import __version__
from migrate.plan.durations import format_duration
from migrate.plan.loader import BUILTIN_STEPS
from migrate.plan.model import Connection, Plan
from migrate.redact import redact
from migrate.reports.history import fold_events, lag_series, throughput_series, verification_history
from migrate.reports.limits import Limit, not_migrated_or_verified
from migrate.reports.mask import Masker
from migrate.stages.cutover import APPROVAL_KEYS, cutover_sequence, cutover_state, switch_index
from migrate.stages.engine import REVERSE_SUFFIX, StageContext
from migrate.stages.gates import GateResult, evaluate_gates, item_lag
from migrate.state.direction import read_direction
from migrate.state.journal import Journal, now
from migrate.state.slots import slot_summary
from migrate.state.steps import PLAN_ITEM, StepLog
from migrate.state.sync_state import SyncState


@dataclass
class ItemReport:
    name: str
    kind: str
    source: str
    target: str
    stage: str
    status: str
    lag_seconds: float | None  # forward; None once the target is authoritative
    reverse_lag_seconds: float | None  # target → source, once reverse replication runs
    timeline: list[dict[str, Any]]
    verification: dict[str, Any] | None
    last_sync: dict[str, Any] | None
    slot: dict[str, Any] | None = None  # logical decoding: the replication slot as the last sync cycle saw it
    reverse_slot: dict[str, Any] | None = None  # reverse replication's slot on the target, as last seen

    @property
    def verified_clean(self) -> bool:
        return bool(self.verification and self.verification["clean"])


@dataclass
class StepEvidence:
    """One run of one cutover or rollback step, as the journal kept it."""

    phase: str  # cutover | rollback
    run: int  # cutover attempt or rollback run
    index: int
    name: str
    status: str
    started_at: str
    ended_at: str | None
    seconds: float | None
    exit_status: int | None
    output_excerpt: str  # the last lines of its (redacted) output


@dataclass
class Count:
    item: str
    part: str  # a table, or the blob set itself
    unit: str  # rows | files | bytes
    source: int | None
    target: int | None
    differences: int = 0  # what the last verification found in this part


@dataclass
class ReportData:
    component: str
    description: str
    change_id: str | None
    change_owner: str | None
    plan_path: str
    fingerprint: str
    generated_at: datetime
    tool_version: str
    items: list[ItemReport]
    gates: list[GateResult]
    cutover: dict[str, Any]
    cutover_steps: list[str]
    rollback_steps: list[str]
    events: list[dict[str, Any]] = field(default_factory=list)  # folded unless `--events all`
    phase: str = "LOADING"  # LOADING | DUAL-RUNNING | READY FOR CUTOVER | CUTOVER RUNNING | CUT OVER |
    #                          ROLLING BACK | ROLLED BACK | NOT READY
    headline: str = ""
    approval: dict[str, Any] = field(default_factory=dict)  # approved_by, approved_at, approved_plan, plan_matches
    freeze_window: dict[str, Any] | None = None  # start, end, seconds, from_step, to_step
    step_runs: list[StepEvidence] = field(default_factory=list)
    counts: list[Count] = field(default_factory=list)
    verification_history: list[dict[str, Any]] = field(default_factory=list)
    not_migrated: list[Limit] = field(default_factory=list)
    rollback_plan: list[dict[str, str]] = field(default_factory=list)  # name, run
    rollback_command: str = ""
    signoff: list[str] = field(default_factory=list)
    masked: bool = False
    masked_keyed: bool = False  # masked with the plan's secret mask_key (else an unkeyed, recomputable hash)
    events_total: int = 0
    events_left_out: int = 0  # older folded lines not shown (the log is bounded)
    lag_series: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)
    throughput_series: dict[str, list[tuple[datetime, float]]] = field(default_factory=dict)
    throttled: list[dict[str, Any]] = field(default_factory=list)  # item, stage, why, seconds: the source protected

    @property
    def clean(self) -> bool:
        """Every item verified clean, every gate passing and no object left behind that the plan does not
        acknowledge (`not_migrated_ok`): what a board needs to see to sign."""
        return all(i.verified_clean for i in self.items) and all(g.passed for g in self.gates) \
            and not any(x.blocks for x in self.not_migrated)


def describe_connection(connection: Connection) -> str:
    """Where an endpoint is, with any secret masked."""
    if connection.url:
        return redact(connection.url)
    if connection.kind == "database":  # field form: the URL built from it, password masked
        return redact(connection.database_url().render_as_string(hide_password=True))
    if connection.path:
        return f"folder {connection.path}"
    where = connection.account_url or "connection string"
    return redact(f"{where} / {connection.container}")


def build_report(ctx: StageContext, azure_checks: Callable[[], list[tuple[str, str, str]]] | None,
                 *, all_events: bool = False, mask: bool | None = None) -> ReportData:
    """Everything the board reads, from the journal. `mask` (default: the plan's `change.mask_identifiers`)
    replaces keys and file names by stable short hashes; `all_events` keeps the event log unfolded."""
    journal, plan = ctx.journal, ctx.loaded.plan
    target_side = read_direction(journal).target_authoritative
    items, history, counts = [], [], []
    for item in plan.items:
        record = journal.standing(item.name)
        runs = journal.verifications(item.name)
        last = runs[-1] if runs else None
        items.append(ItemReport(
            name=item.name, kind="database" if hasattr(item, "tables") else "blob",
            source=f"{item.source}: {describe_connection(plan.connections[item.source])}",
            target=f"{item.target}: {describe_connection(plan.connections[item.target])}",
            stage=record[0] if record else "new", status=record[1] if record else "pending",
            lag_seconds=None if target_side else item_lag(journal, item.name),
            reverse_lag_seconds=item_lag(journal, f"{item.name}{REVERSE_SUFFIX}") if target_side else None,
            timeline=[{"stage": r["stage"], "status": r["status"], "at": r["at"],
                       "seconds": _seconds(r["detail"])} for r in journal.stage_log(item.name)],
            verification=None if last is None else {
                "at": last.at, "clean": last.clean, "checked": last.checked, "differences": last.differences,
                "sample": last.detail.get("differences", [])[:20], "deep": last.detail.get("deep", False)},
            last_sync=SyncState(journal, item.name).last_sync,
            slot=slot_summary(journal, item.name),
            reverse_slot=slot_summary(journal, f"{item.name}{REVERSE_SUFFIX}"),
        ))
        history += verification_history(item.name, runs)
        counts += _counts(item.name, last.detail if last else {}, last.differences if last else 0)
    change = plan.change
    state = cutover_state(ctx)
    events = journal.events()
    gates = (_gates_of_record(events) if state["status"] == "done"
             else evaluate_gates(ctx.loaded, journal, approved_by=state.get("approved_by"), azure_checks=azure_checks))
    folded, left_out = (events, 0) if all_events else fold_events(events)
    step_runs = _step_runs(journal, state)
    data = ReportData(
        component=plan.component, description=plan.description,
        change_id=change.id if change else None, change_owner=change.owner if change else None,
        plan_path=str(ctx.loaded.path), fingerprint=ctx.loaded.fingerprint, generated_at=now(),
        tool_version=__version__, items=items, gates=gates,
        cutover=state, cutover_steps=[s.name for s in cutover_sequence(plan)],
        rollback_steps=[s.name for s in plan.rollback.steps], events=folded,
        approval={**{k: state.get(k) for k in APPROVAL_KEYS},
                  "plan_matches": state.get("approved_plan") == ctx.loaded.fingerprint
                  if state.get("approved_plan") else None},
        freeze_window=_freeze_window(plan, step_runs, state),
        step_runs=step_runs, counts=counts, verification_history=history,
        not_migrated=not_migrated_or_verified(plan, journal),
        rollback_plan=[{"name": s.name, "run": s.run} for s in plan.rollback.steps],
        rollback_command=f"migrate rollback {ctx.loaded.path} --yes",
        signoff=list(change.signoff) if change else [],
        events_total=len(events), events_left_out=left_out,
        lag_series=lag_series(events), throughput_series=throughput_series(events),
        throttled=throttled_time(events),
    )
    data.phase, data.headline = headline(data)
    if mask if mask is not None else bool(change and change.mask_identifiers):
        key = change.mask_key if change else None
        masker = Masker.for_value(plan.component, _identifiers(ctx), data, key)
        data = masker.apply(data)
        data.masked, data.masked_keyed = True, bool(key)
    return data


def throttled_time(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Seconds each item's stages waited on its limits, by reason, summed over every run (from the journal)."""
    totals: dict[tuple[str, str, str], float] = {}
    for event in events:
        data = event.get("data") or {}
        if event["kind"] == "throttle" and isinstance(data.get("throttled"), dict):
            for why, seconds in data["throttled"].items():
                key = (event["item"] or "", str(data.get("stage", "")), why)
                totals[key] = totals.get(key, 0.0) + float(seconds)
    return [{"item": i, "stage": s, "why": w, "seconds": round(v, 1)} for (i, s, w), v in sorted(totals.items())]


def headline(data: ReportData) -> tuple[str, str]:
    """The phase and one sentence that is true for it, whatever the phase."""
    status = data.cutover.get("status", "idle")
    if status == "done":
        worst = max((i.reverse_lag_seconds for i in data.items if i.reverse_lag_seconds is not None), default=None)
        reverse = ("reverse replication not run yet: `migrate sync` copies Azure-side changes home" if worst is None
                   else f"reverse lag {lag_text(worst)}")
        return "CUT OVER", f"CUT OVER at {_at(data.cutover.get('ended_at'))}: the component runs on Azure ({reverse})"
    if status == "running":
        return "CUTOVER RUNNING", (f"CUTOVER RUNNING or interrupted at step {int(data.cutover.get('step', 0)) + 1}"
                                   f" of {len(data.cutover_steps)}: rerun `migrate cutover` or roll back")
    if status == "rolling_back":
        return "ROLLING BACK", "ROLLING BACK: a rollback began and has not finished; the target may take writes"
    failing = [g.gate for g in data.gates if not g.passed]
    if any(i.stage in ("new", "preflight", "schema") or (i.stage == "load" and i.status != "done")
           for i in data.items):
        return "LOADING", "LOADING: " + ", ".join(f"{i.name} {i.stage} ({i.status})" for i in data.items)
    if status == "rolled_back":
        return "ROLLED BACK", (f"ROLLED BACK at {_at(data.cutover.get('ended_at'))}: the component runs on the "
                               "source; " + (f"not ready again: failing {', '.join(failing)}" if failing
                                             else "every gate passes again"))
    left_behind = [x.what for x in data.not_migrated if x.blocks]
    if left_behind:
        return "NOT READY", ("NOT READY: not migrated and not acknowledged by not_migrated_ok: "
                             + ", ".join(left_behind[:5]) + (f" and {len(left_behind) - 5} more"
                                                             if len(left_behind) > 5 else ""))
    worst = max((i.lag_seconds for i in data.items if i.lag_seconds is not None), default=None)
    if not failing and all(i.verified_clean for i in data.items):
        return "READY FOR CUTOVER", (f"READY FOR CUTOVER: every item verified clean and every gate passes "
                                     f"(lag {lag_text(worst)})")
    if set(failing) <= _WAITING_GATES and all(i.verified_clean for i in data.items):
        return "DUAL-RUNNING", f"DUAL-RUNNING (lag {lag_text(worst)}): waiting for {', '.join(failing)}"
    return "NOT READY", "NOT READY: failing " + (", ".join(failing) if failing else "verification")


def _at(iso: str | None) -> str:
    return f"{datetime.fromisoformat(iso):%Y-%m-%d %H:%M:%S} UTC" if iso else "?"


_WAITING_GATES = {"max_lag", "min_dual_run", "postpone_file", "window", "approval", "depends_on"}


def lag_text(seconds: float | None) -> str:
    return "unknown" if seconds is None else format_duration(seconds)


def _counts(item: str, detail: dict[str, Any], differences: int) -> list[Count]:
    """Rows per table (source vs target) or files and bytes per blob set, as the last verification counted."""
    tables = detail.get("tables")
    if isinstance(tables, dict):
        return [Count(item, label, "rows", t.get("rows"), t.get("target_rows"), int(t.get("differences", 0)))
                for label, t in tables.items()]
    if "files" in detail:
        return [Count(item, item, "files", detail.get("files"), detail.get("target_files"), differences),
                Count(item, item, "bytes", detail.get("bytes"), detail.get("target_bytes"), differences)]
    return []


def _step_runs(journal: Journal, state: dict[str, Any]) -> list[StepEvidence]:
    log = StepLog(journal)
    runs = [r for attempt in range(1, int(state.get("attempt", 0) or 0) + 1) for r in log.runs("cutover", attempt)]
    runs += [r for n in range(1, int(journal.get(PLAN_ITEM, "step_runs:rollback", 0)) + 1)
             for r in log.runs("rollback", n)]
    return [StepEvidence(r.phase, r.run, r.index, r.name, r.status, r.started_at, r.ended_at, r.seconds,
                         r.exit_status, _excerpt(r.output)) for r in runs]


def _excerpt(output: str, lines: int = 3, chars: int = 300) -> str:
    tail = "\n".join(output.strip().splitlines()[-lines:])
    return tail[-chars:]


def _freeze_window(plan: Plan, runs: list[StepEvidence], state: dict[str, Any]) -> dict[str, Any] | None:
    """Writes frozen: from the start of the freeze step (the plan step before the built-in final sync) to the
    end of the switch step, in the latest cutover attempt."""
    sequence = cutover_sequence(plan)
    first_builtin = next((i for i, s in enumerate(sequence) if s.run in BUILTIN_STEPS), None)
    switch = switch_index(sequence)
    if not first_builtin or switch >= len(sequence):
        return None  # no plan step before the final sync, or none after it: nothing to call a freeze or a switch
    attempt = {r.index: r for r in runs if r.phase == "cutover" and r.run == int(state.get("attempt", 0) or 0)}
    freeze, switched = attempt.get(first_builtin - 1), attempt.get(switch)
    if freeze is None or switched is None or not switched.ended_at:
        return {"from_step": sequence[first_builtin - 1].name, "to_step": sequence[switch].name, "start": None,
                "end": None, "seconds": None}
    seconds = (datetime.fromisoformat(switched.ended_at) - datetime.fromisoformat(freeze.started_at))
    return {"from_step": freeze.name, "to_step": switched.name, "start": freeze.started_at,
            "end": switched.ended_at, "seconds": round(seconds.total_seconds(), 3)}


def _identifiers(ctx: StageContext) -> set[str]:
    """Every key and file name the report could show: difference keys of every verification (and of events),
    and every path a blob item's journal knows."""
    found: set[str] = set()
    for item in ctx.loaded.plan.items:
        for record in ctx.journal.verifications(item.name):
            found.update(d.get("key", "") for d in record.detail.get("differences", []))
        if not hasattr(item, "tables"):
            found.update(ctx.journal.chunks(item.name, "load"))
    for event in ctx.journal.events():  # e.g. target changes a rollback discarded
        listed = (event["data"] or {}).get("differences")
        if isinstance(listed, list):
            found.update(d.get("key", "") for d in listed if isinstance(d, dict))
    return found


def _gates_of_record(events: list[dict[str, Any]]) -> list[GateResult]:
    """After a cutover, the gates as they stood when it was allowed (not as they stand now)."""
    for event in reversed(events):
        if event["kind"] == "gates" and event["outcome"] == "ok" and event["data"] and event["data"]["gates"]:
            return [GateResult(**g) for g in event["data"]["gates"]]
    return []


def _seconds(detail: str | None) -> float | None:
    if not detail:
        return None
    try:
        return json.loads(detail).get("seconds")
    except (ValueError, AttributeError):
        return None
