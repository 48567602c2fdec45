"""Gather the evidence a change board signs off from the journal: one `ReportData`, many renderers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from migrate import __version__
from migrate.plan.model import Connection
from migrate.redact import redact
from migrate.stages.cutover import cutover_sequence, cutover_state
from migrate.stages.engine import REVERSE_SUFFIX, StageContext
from migrate.stages.gates import GateResult, evaluate_gates, item_lag
from migrate.state.direction import read_direction
from migrate.state.journal import now
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

    @property
    def verified_clean(self) -> bool:
        return bool(self.verification and self.verification["clean"])


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
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Every item verified clean and every gate passing: what a board needs to see to sign."""
        return all(i.verified_clean for i in self.items) and all(g.passed for g in self.gates)


def describe_connection(connection: Connection) -> str:
    """Where an endpoint is, with any secret masked."""
    if connection.url:
        return redact(connection.url)
    if connection.path:
        return f"folder {connection.path}"
    where = connection.account_url or "connection string"
    return redact(f"{where} / {connection.container}")


def build_report(ctx: StageContext, azure_checks: Callable[[], list[tuple[str, str, str]]] | None) -> ReportData:
    journal, plan = ctx.journal, ctx.loaded.plan
    target_side = read_direction(journal).target_authoritative
    items = []
    for item in plan.items:
        record = journal.item(item.name)
        last = journal.last_verification(item.name)
        items.append(ItemReport(
            name=item.name, kind="database" if hasattr(item, "tables") else "blob",
            source=f"{item.source}: {describe_connection(plan.connections[item.source])}",
            target=f"{item.target}: {describe_connection(plan.connections[item.target])}",
            stage=record.stage if record else "new", status=record.status if record else "pending",
            lag_seconds=None if target_side else item_lag(journal, item.name),
            reverse_lag_seconds=item_lag(journal, f"{item.name}{REVERSE_SUFFIX}") if target_side else None,
            timeline=[{"stage": r["stage"], "status": r["status"], "at": r["at"],
                       "seconds": _seconds(r["detail"])} for r in journal.stage_log(item.name)],
            verification=None if last is None else {
                "at": last.at, "clean": last.clean, "checked": last.checked, "differences": last.differences,
                "sample": last.detail.get("differences", [])[:20], "deep": last.detail.get("deep", False)},
            last_sync=SyncState(journal, item.name).last_sync,
        ))
    change = plan.change
    state = cutover_state(ctx)
    events = journal.events()
    return ReportData(
        component=plan.component, description=plan.description,
        change_id=change.id if change else None, change_owner=change.owner if change else None,
        plan_path=str(ctx.loaded.path), fingerprint=ctx.loaded.fingerprint, generated_at=now(),
        tool_version=__version__, items=items,
        gates=_gates_of_record(events) if state["status"] == "done"
        else evaluate_gates(ctx.loaded, journal, approved_by=state.get("approved_by"), azure_checks=azure_checks),
        cutover=state, cutover_steps=[s.name for s in cutover_sequence(plan)],
        rollback_steps=[s.name for s in plan.rollback.steps], events=events,
    )


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
