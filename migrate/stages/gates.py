"""Cutover gates: each one looks at the evidence and says pass or fail, and why."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from migrate.plan.durations import format_duration
from migrate.plan.loader import LoadedPlan
from migrate.plan.model import DatabaseItem
from migrate.redact import redact
from migrate.stages.dependencies import dependency_states
from migrate.state.claims import live_leases
from migrate.state.journal import Journal, now
from migrate.state.slots import slot_summary
from migrate.state.sync_state import SyncState
from migrate.units import human_bytes


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict with the evidence behind it."""

    gate: str
    passed: bool
    evidence: str


def item_lag(journal: Journal, item: str) -> float | None:
    """Upper bound of how far the target is behind (see `SyncState.lag_bound`)."""
    return SyncState(journal, item).lag_bound()


def evaluate_gates(loaded: LoadedPlan, journal: Journal, *, approved_by: str | None = None,
                   azure_checks: Callable[[], list[tuple[str, str, str]]] | None = None,
                   reverse_checks: Callable[[], list[tuple[str, bool, str]]] | None = None) -> list[GateResult]:
    """Every gate the plan asks for, evaluated now; never short-circuits, so the board sees all reasons."""
    gates = loaded.plan.cutover.gates
    items = [i.name for i in loaded.plan.items]
    results: list[GateResult] = []

    loaded_items = [i for i in items if journal.last_done(i, "load")]
    missing = sorted(set(items) - set(loaded_items))
    results.append(GateResult("loaded", not missing, "every item loaded" if not missing
                              else f"not loaded yet: {', '.join(missing)}"))
    leases = live_leases(journal)
    if leases:  # workers still hold tasks of this plan
        runners = sorted({owner for owner, _, _ in leases})
        results.append(GateResult("workers", False, f"{len(leases)} task(s) leased by {', '.join(runners)} "
                                  f"(e.g. {leases[0][1]} {leases[0][2]}); stop the workers or let them finish"))

    if gates.verified:
        bad = []
        for item in items:
            last = journal.last_verification(item)
            loaded_at = journal.last_done(item, "load")
            if last is None:
                bad.append(f"{item}: never verified")
            elif not last.clean:
                bad.append(f"{item}: last verification found {last.differences} difference(s)")
            elif loaded_at is not None and loaded_at > last.at:
                bad.append(f"{item}: loaded again since the last verification")
        # sync cycles do not make a verification stale (dual-running never stops before cutover); the
        # cutover's own final verify proves parity after the final sync
        results.append(GateResult("verified", not bad, "; ".join(bad) or "every item verified clean since its "
                                  "last load"))

    if gates.max_lag is not None:
        worst: list[str] = []
        passed = True
        for item in items:
            lag = item_lag(journal, item)
            if lag is None or lag > gates.max_lag:
                passed = False
            worst.append(f"{item} {format_duration(lag) if lag is not None else 'unknown'}")
        results.append(GateResult("max_lag", passed, f"lag (limit {format_duration(gates.max_lag)}): "
                                  + ", ".join(worst)))

    if gates.min_dual_run > 0:
        short = []
        for item in items:
            since = SyncState(journal, item).dual_run_since
            ran = (now() - since).total_seconds() if since else 0.0
            if ran < gates.min_dual_run:
                short.append(f"{item} {format_duration(ran)}")
        results.append(GateResult("min_dual_run", not short,
                                  f"dual-running at least {format_duration(gates.min_dual_run)}"
                                  + (f"; too short: {', '.join(short)}" if short else "")))

    slots = _slot_evidence(loaded, journal)
    if slots:
        results.append(GateResult("replication_slot", all(ok for ok, _ in slots), "; ".join(e for _, e in slots)))

    if gates.postpone_file:
        path = loaded.resolve(gates.postpone_file)
        results.append(GateResult("postpone_file", not Path(path).exists(),
                                  f"{path} exists: cutover postponed" if Path(path).exists()
                                  else f"{path} absent"))

    for check in gates.health:
        results.append(_health(check.url, check.status, check.timeout))

    if gates.window:
        results.append(_window(gates.window))

    if loaded.plan.depends_on:
        states = dependency_states(loaded)
        waiting = [f"{name}: {'no plan of that component in ' + str(loaded.base_dir) if state is None else state}"
                   for name, state in states.items() if state != "done"]
        results.append(GateResult("depends_on", not waiting, "not cut over yet: " + "; ".join(waiting) if waiting
                                  else "cut over: " + ", ".join(states)))

    if gates.approval:
        results.append(GateResult("approval", bool(approved_by),
                                  f"approved by {approved_by}" if approved_by
                                  else "needs approval: pass --approved-by NAME"))

    if gates.reverse_ready and loaded.plan.rollback.reverse_sync and reverse_checks is not None:
        checks = reverse_checks()  # rollback proven before the switch: the reverse path works
        results.append(GateResult("reverse_ready", all(ok for _, ok, _ in checks),
                                  "; ".join(f"{item}: {evidence}" for item, _, evidence in checks)))

    if gates.azure and azure_checks is not None:
        failing = [f"{target}: {name}" for target, name, status in azure_checks() if status == "fail"]
        results.append(GateResult("azure", not failing, "; ".join(failing) or "every Azure check passes"))
    return results


def _slot_evidence(loaded: LoadedPlan, journal: Journal) -> list[tuple[bool, str]]:
    """Per item that reads the PostgreSQL log: (within max_retained_wal, evidence) from its last sync cycle."""
    out = []
    for item in loaded.plan.items:
        if not isinstance(item, DatabaseItem) or not item.uses_logical:
            continue
        seen = slot_summary(journal, item.name)
        if seen is None or "retained_bytes" not in seen:
            out.append((False, f"{item.name}: no sync cycle has read its replication slot yet"))
            continue
        held, limit = int(seen["retained_bytes"]), item.max_retained_wal
        newest = f", newest applied commit {str(seen['newest_commit'])[:19]}" if seen.get("newest_commit") else ""
        out.append((held <= limit, f"{item.name}: slot {seen['slot']} holds {human_bytes(held)} of WAL (limit "
                                   f"{human_bytes(limit)}) at {str(seen.get('read_at'))[:19]}{newest}"))
    return out


def _health(url: str, status: int, timeout: float) -> GateResult:
    import urllib.error  # only where a plan has health gates: http.client, ssl and email are not light
    import urllib.request

    shown = redact(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - plan-given URL
            got = response.status
    except urllib.error.HTTPError as exc:
        got = exc.code
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return GateResult(f"health {shown}", False, f"unreachable: {redact(reason)}")
    return GateResult(f"health {shown}", got == status, f"HTTP {got} (want {status})")


def _window(window: str, at: datetime | None = None) -> GateResult:
    """HH:MM-HH:MM in the runner's local time; a window may span midnight."""
    current = (at or datetime.now()).strftime("%H:%M")
    start, end = window.split("-")
    inside = start <= current < end if start <= end else (current >= start or current < end)
    return GateResult("window", inside, f"now {current}, window {window}")
