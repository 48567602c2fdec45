"""One function per CLI verb. Each returns a result object and prints nothing; the CLI renders it.

Everything here is callable from Python: `commands.run(Path("plans/ppm.yaml"))`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migrate.errors import (
    EXIT_CHANGES_PENDING,
    EXIT_DIFFERENCES,
    EXIT_OK,
    EXIT_OPERATIONAL,
    EndpointError,
    GateRefused,
    LockHeld,
    MigrateError,
    UsageError,
    VerificationFailed,
)
from migrate.plan.check import FileValidation, ValidateResult, validate  # noqa: F401 - part of this API
from migrate.plan.durations import format_duration
from migrate.plan.loader import LoadedPlan, load_plan, plan_files
from migrate.plan.schema import plan_json_schema
from migrate.stages.cutover import (
    PLAN_ITEM,
    Cutover,
    CutoverResult,
    cutover_sequence,
    cutover_state,
    replication_direction,
)
from migrate.stages.engine import (
    REVERSE_SUFFIX,
    NullProgress,
    Preview,
    Progress,
    StageContext,
    SyncResult,
    VerifyResult,
)
from migrate.stages.gates import GateResult, item_lag
from migrate.stages.runner import ItemRun, StageRunner
from migrate.state.direction import read_direction
from migrate.state.journal import Journal
from migrate.state.lock import LockInfo, PlanLock, break_lock, current_lock
from migrate.state.sync_state import SyncState

if TYPE_CHECKING:
    from migrate.reports.estate import EstateResult

WATCH_BACKOFF_CAP = 300.0  # seconds: the longest wait between sync --watch cycles after transient faults

# --- the context every verb works in -------------------------------------------------------------------


@dataclass(frozen=True)
class LockWait:
    """How a locking verb meets a plan lock another runner holds: wait up to `timeout` seconds for it (None:
    refuse at once); `on_wait(holder, waited)` hears of each try that found it held."""

    timeout: float | None = None
    on_wait: Callable[[LockInfo | None, float], None] | None = None

    def lock(self, journal: Journal, component: str) -> PlanLock:
        return PlanLock(journal, component, timeout=self.timeout, on_wait=self.on_wait)


@contextmanager
def session(plan_path: Path | str, command: str, *, lock: bool = True, progress: Progress | None = None,
            lock_wait: LockWait = LockWait(), allow_mass_delete: bool = False,
            unthrottled: bool = False) -> Iterator[StageContext]:
    """Load the plan, open its journal, hold its lock, and record the run with its outcome."""
    loaded = load_plan(plan_path)
    journal = Journal(loaded.state_url, command=command)
    try:
        with lock_wait.lock(journal, loaded.plan.component) if lock else nullcontext():
            run_id = journal.begin_run(loaded.fingerprint)
            outcome = "failed"
            try:
                from migrate.throttle import Throttles

                yield StageContext(loaded=loaded, journal=journal, progress=progress or NullProgress(),
                                   run_id=run_id, allow_mass_delete=allow_mass_delete,
                                   throttles=Throttles(loaded, journal, unthrottled))
                outcome = "ok"
            except (VerificationFailed, GateRefused):
                outcome = "refused" if command == "cutover" else "differences"
                raise
            except KeyboardInterrupt:
                outcome = "interrupted"
                raise
            finally:
                journal.end_run(run_id, outcome)
    finally:
        journal.close()


def _azure_checks(loaded: LoadedPlan) -> Callable[[], list[tuple[str, str, str]]] | None:
    """(target, check, status) for every Azure resource of the plan, or None when it names none."""
    plan = loaded.plan
    if not plan.vms and not any(c.azure for c in plan.connections.values()):
        return None

    def checks() -> list[tuple[str, str, str]]:
        from migrate.azure.preflight import azure_preflight

        return [(c.target, c.name, c.status) for c in azure_preflight(plan)]

    return checks


def _fingerprint_warnings(loaded: LoadedPlan, journal: Journal) -> list[str]:
    warnings = []
    for item in loaded.plan.items:
        record = journal.item(item.name)
        if record and record.fingerprint and record.fingerprint != loaded.fingerprint:
            warnings.append(f"{item.name}: the plan was edited after this item was loaded "
                            f"(fingerprint {record.fingerprint[:12]} → {loaded.fingerprint[:12]})")
    return warnings


def _cycle_warnings(loaded: LoadedPlan, journal: Journal) -> list[str]:
    """Where the last sync cycle of an item took longer than the cutover's `max_lag`: the lag gate cannot pass
    while a cycle takes that long (re-listing 100M paths takes minutes, not seconds)."""
    limit = loaded.plan.cutover.gates.max_lag
    if limit is None:
        return []
    warnings = []
    for item in loaded.plan.items:
        last, ended = SyncState(journal, item.name).last_sync, journal.last_done(item.name, "sync")
        if last is None or ended is None:
            continue
        took = (ended - datetime.fromisoformat(last["at"])).total_seconds()
        if took > limit:
            warnings.append(f"{item.name}: the last sync cycle took {format_duration(took)}, longer than the "
                            f"cutover's max_lag ({format_duration(limit)}): the lag gate cannot pass while a "
                            "cycle takes that long (raise max_lag, or shorten the cycle with workers: `migrate "
                            "worker PLAN --sync`)")
    return warnings


# --- validate / schema ---------------------------------------------------------------------------------


def plan_schema() -> dict[str, Any]:
    """JSON Schema of the plan format as people write it, for editors and CI."""
    return plan_json_schema()


# --- plan (dry-run) ------------------------------------------------------------------------------------


@dataclass
class PlanResult:
    component: str
    previews: list[Preview]
    azure: list[dict[str, Any]] = field(default_factory=list)
    cutover_steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return any(p.changes for p in self.previews)

    @property
    def problems(self) -> list[str]:
        """Every check that failed: per item, and the Azure preflight's."""
        return [f"{p.item}: {why}" for p in self.previews for why in p.problems] + [
            f"{c['target']}: {c['name']}: {c.get('evidence', '')}" for c in self.azure if c.get("status") == "fail"]

    def exit_code(self, detailed: bool) -> int:
        """1 when any check failed (as `terraform plan` on an error), else 4 with `detailed` when something
        would change, else 0."""
        if self.problems:
            return EXIT_OPERATIONAL
        return EXIT_CHANGES_PENDING if detailed and self.changes else EXIT_OK


def plan(plan_path: Path, progress: Progress | None = None) -> PlanResult:
    """Dry-run: connect read-only, inventory, show what would move. Writes nothing to any target."""
    with session(plan_path, "plan", lock=False, progress=progress) as ctx:
        previews = StageRunner(ctx).preview()
        azure: list[dict[str, Any]] = []
        if _azure_checks(ctx.loaded) is not None:
            from migrate.azure.preflight import azure_preflight

            try:
                azure = [c.to_dict() for c in azure_preflight(ctx.loaded.plan)]
            except MigrateError as exc:  # reported with the items' checks, not instead of them
                azure = [{"target": "azure", "name": "preflight", "status": "fail", "evidence": str(exc)}]
        return PlanResult(ctx.loaded.plan.component, previews, azure,
                          [s.name for s in cutover_sequence(ctx.loaded.plan)],
                          _fingerprint_warnings(ctx.loaded, ctx.journal) + _cycle_warnings(ctx.loaded, ctx.journal))


# --- run / verify / sync -------------------------------------------------------------------------------


@dataclass
class RunResult:
    component: str
    items: list[ItemRun]
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if any(i.problems or any(not s.ok for s in i.stages) for i in self.items):
            return EXIT_OPERATIONAL
        if any(i.verification is not None and not i.verification.clean for i in self.items):
            return EXIT_DIFFERENCES
        return EXIT_OK


def run(plan_path: Path, until: str = "verify", items: list[str] | None = None,
        progress: Progress | None = None, lock_wait: LockWait = LockWait(),
        allow_mass_delete: bool = False, workers: int | None = None) -> RunResult:
    """preflight → schema → load → verify; resumes whatever an earlier run left unfinished. With `workers`,
    the stages up to the load are done by that many local `migrate worker` processes first."""
    if workers:
        from migrate.stages.worker import run_local_workers

        run_local_workers(plan_path, workers, until)
    with session(plan_path, "run", progress=progress, lock_wait=lock_wait,
                 allow_mass_delete=allow_mass_delete) as ctx:
        warnings = _fingerprint_warnings(ctx.loaded, ctx.journal)
        checks = _azure_checks(ctx.loaded)
        if checks is not None:
            failing = [f"{t}: {n}" for t, n, s in checks() if s == "fail"]
            if failing:
                raise MigrateError("Azure preflight failed: " + "; ".join(failing),
                                   hint="`migrate plan PLAN` shows the evidence and what to do")
            if until != "preflight":
                _provision_targets(ctx)
        return RunResult(ctx.loaded.plan.component, StageRunner(ctx, items).run(until), warnings)


def _provision_targets(ctx: StageContext) -> None:
    """Create Azure SQL databases the plan marks `create: true`, resuming a create a crash interrupted."""
    from migrate.azure.credentials import default_credential
    from migrate.azure.provision import provision_database

    for name, connection in ctx.loaded.plan.connections.items():
        resource = connection.azure
        if resource is None or not resource.create or not resource.database:
            continue
        key = f"provision:{name}"

        def save(token: str | None, key: str = key) -> None:
            ctx.journal.put(PLAN_ITEM, key, token)

        result = provision_database(resource, default_credential(resource.cloud), save_token=save,
                                    continuation_token=ctx.journal.get(PLAN_ITEM, key))
        ctx.journal.event("provision", f"{name}: database {resource.database} {result.action} "
                          f"({result.status}, {result.service_objective})")


@dataclass
class VerifyOutcome:
    component: str
    results: list[VerifyResult]

    @property
    def clean(self) -> bool:
        return all(r.clean for r in self.results)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.clean else EXIT_DIFFERENCES


def verify(plan_path: Path, deep: bool = False, items: list[str] | None = None,
           progress: Progress | None = None, lock_wait: LockWait = LockWait()) -> VerifyOutcome:
    """Full verification of every item; lists every difference (exit 3 when any)."""
    with session(plan_path, "verify", progress=progress, lock_wait=lock_wait) as ctx:
        return VerifyOutcome(ctx.loaded.plan.component, StageRunner(ctx, items).verify(deep=deep))


@dataclass
class SyncOutcome:
    component: str
    cycles: int
    results: list[SyncResult]
    direction: str = "forward"  # forward (source → target) | reverse (target → source, after cutover)

    @property
    def exit_code(self) -> int:
        return EXIT_OPERATIONAL if any(r.problems for r in self.results) else EXIT_OK


def sync(plan_path: Path, watch: bool = False, max_cycles: int | None = None, items: list[str] | None = None,
         progress: Progress | None = None, on_cycle: Callable[[int, list[SyncResult]], None] | None = None,
         on_skip: Callable[[int, str], None] | None = None, lock_wait: LockWait = LockWait(),
         allow_mass_delete: bool = False) -> SyncOutcome:
    """One incremental cycle; with `watch`, one every `dual_run.interval` until interrupted (or max_cycles).

    The direction follows the journal: source → target while the source is authoritative, target → source
    (reverse replication) after a completed cutover, and refused (exit 1) while a cutover interrupted after
    its switch, or a rollback, is unfinished. The lock is held per cycle, not for the whole watch, so a
    cutover can take the plan between cycles (a cycle that finds the plan locked is skipped); a watch that
    started forward carries on in reverse once the cutover completes. With `watch`, a cycle
    that meets a transient fault (an endpoint refusing connections) is skipped and the next one backs off;
    faults that need a person (credentials, a missing table, a refused direction) stop the watch.
    `on_skip(cycle, why)` hears of each skip.
    """
    with session(plan_path, "sync", lock=False, progress=progress, allow_mass_delete=allow_mass_delete) as ctx:
        runner = StageRunner(ctx, items)
        component = ctx.loaded.plan.component
        interval = ctx.loaded.plan.dual_run.interval
        cycle, results, failures, direction = 0, [], 0, "forward"
        while True:
            cycle += 1
            started = time.monotonic()
            wait = interval
            try:
                with lock_wait.lock(ctx.journal, component):
                    direction = replication_direction(ctx)
                    if direction == "reverse":
                        _refuse_after_finish(ctx)
                    results = runner.reverse_sync() if direction == "reverse" else runner.sync()
                failures = 0
            except (LockHeld, EndpointError) as exc:
                if not watch or isinstance(exc, EndpointError) and not exc.transient:
                    raise
                results = []
                if isinstance(exc, EndpointError):
                    failures += 1
                    wait = watch_backoff(interval, failures)
                why = f"cycle {cycle} skipped: {exc.message}" + (f"; next try in {wait:.0f}s" if failures else "")
                ctx.journal.event("sync", why, outcome="skipped")
                if on_skip:
                    on_skip(cycle, why)
            if on_cycle and results:
                on_cycle(cycle, results)
            if not watch or (max_cycles is not None and cycle >= max_cycles):
                return SyncOutcome(component, cycle, results, direction)
            time.sleep(max(0.0, wait - (time.monotonic() - started)))


def watch_backoff(interval: float, failures: int) -> float:
    """Seconds before the next cycle after `failures` transient faults in a row: doubling from the
    interval, capped at the larger of 5 minutes and the interval."""
    return min(interval * 2 ** (failures - 1), max(WATCH_BACKOFF_CAP, interval))


# --- status --------------------------------------------------------------------------------------------


@dataclass
class ItemStatus:
    item: str
    kind: str
    stage: str
    status: str
    updated_at: str | None
    load_chunks_done: int = 0
    load_chunks_total: int = 0
    load_units_done: int = 0
    lag_seconds: float | None = None  # forward lag, while the source is authoritative
    reverse_lag_seconds: float | None = None  # target → source, while reverse replication runs
    last_sync: dict[str, Any] | None = None
    last_verification: dict[str, Any] | None = None
    slot: dict[str, Any] | None = None  # logical decoding: the replication slot as the last sync saw it
    reverse_slot: dict[str, Any] | None = None  # reverse replication's slot on the target, as last seen
    throttle: dict[str, Any] | None = None  # the limits in force now and why (None: none)
    workers: list[dict[str, Any]] = field(default_factory=list)  # `migrate worker`s that claimed its tasks
    work: list[dict[str, Any]] = field(default_factory=list)  # its claimable work per stage: tasks, rate, ETA


@dataclass
class StatusResult:
    component: str
    items: list[ItemStatus]
    lock: LockInfo | None
    cutover: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    authoritative: str = "source"  # which side the application writes to (the journal's direction)


def status(plan_path: Path) -> StatusResult:
    """Stage, progress, lag and last verification per item, straight from the journal."""
    from datetime import UTC, datetime

    from migrate.state.claims import runners, stages
    from migrate.state.direction import PLAN_ITEM
    from migrate.state.slots import slot_summary
    from migrate.throttle import OVERRIDE_KEY

    with session(plan_path, "status", lock=False) as ctx:
        journal = ctx.journal
        override = journal.get(PLAN_ITEM, OVERRIDE_KEY)
        moment = datetime.now(UTC)
        target_side = read_direction(journal).target_authoritative
        items = []
        for item in ctx.loaded.plan.items:
            record = journal.standing(item.name)
            totals = journal.chunk_totals(item.name, "load")
            done = totals.get("done", (0, 0))
            last = journal.last_verification(item.name)
            items.append(ItemStatus(
                item=item.name, kind="database" if hasattr(item, "tables") else "blob",
                stage=record[0] if record else "new", status=record[1] if record else "pending",
                updated_at=record[2].isoformat() if record else None,
                load_chunks_done=done[0], load_units_done=done[1],
                load_chunks_total=sum(n for status, (n, _) in totals.items() if status != "deleted"),
                lag_seconds=None if target_side else item_lag(journal, item.name),
                reverse_lag_seconds=item_lag(journal, f"{item.name}{REVERSE_SUFFIX}") if target_side else None,
                last_sync=SyncState(journal, f"{item.name}{REVERSE_SUFFIX}" if target_side else item.name).last_sync,
                last_verification=None if last is None else {
                    "at": last.at.isoformat(), "clean": last.clean, "checked": last.checked,
                    "differences": last.differences},
                slot=slot_summary(journal, item.name),
                reverse_slot=slot_summary(journal, f"{item.name}{REVERSE_SUFFIX}"),
                throttle=_limits_now(ctx.loaded, item, override, moment),
                workers=runners(journal, item.name), work=stages(journal, item.name),
            ))
        return StatusResult(ctx.loaded.plan.component, items, current_lock(journal, ctx.loaded.plan.component),
                            cutover_state(ctx), _fingerprint_warnings(ctx.loaded, journal),
                            "target" if target_side else "source")


def _limits_now(loaded: LoadedPlan, item: Any, override: Any, moment: Any) -> dict[str, Any] | None:
    """The limits in force on `item` now and why (no probe: status does not connect), or None when none."""
    from migrate.throttle import effective_limits
    from migrate.throttle.control import spec_of

    limits = effective_limits(spec_of(loaded, item), override if isinstance(override, dict) else None, moment)
    return limits.to_dict() if limits.limited else None


# --- cutover / rollback --------------------------------------------------------------------------------


def gates(plan_path: Path, approved_by: str | None = None) -> list[GateResult]:
    """Evaluate the cutover gates without taking the lock or changing anything."""
    with session(plan_path, "gates", lock=False) as ctx:
        return Cutover(ctx, _azure_checks(ctx.loaded)).gates(approved_by)


@dataclass
class CutoverPreview:
    """What a confirmed cutover would do, for the question asked on a terminal."""

    status: str  # the cutover's journal status: idle | running | done | rolled_back
    gates: list[GateResult]  # as they stand now; when resuming, as they stood when the attempt began
    steps: list[str]  # the steps that would run, in order
    resuming_at: int | None = None


def cutover_preview(plan_path: Path, approved_by: str | None = None) -> CutoverPreview:
    """The gates and the steps a cutover would run, without taking the lock or changing anything."""
    with session(plan_path, "gates", lock=False) as ctx:
        state = cutover_state(ctx)
        names = [s.name for s in cutover_sequence(ctx.loaded.plan)]
        if state["status"] == "running":  # a resume re-checks no gate: show the first attempt's evidence
            first = int(state.get("step", 0))
            return CutoverPreview("running", [GateResult(**g) for g in state.get("gates", [])], names[first:],
                                  first)
        if state["status"] == "done":
            return CutoverPreview("done", [], [])
        return CutoverPreview(state["status"], Cutover(ctx, _azure_checks(ctx.loaded)).gates(approved_by), names)


def rollback_steps(plan_path: Path) -> list[str]:
    """The names of the plan's rollback steps (for the question asked before a rollback)."""
    return [s.name for s in load_plan(plan_path).plan.rollback.steps]


def not_confirmed(verb: str) -> CutoverResult:
    """The result of a cutover or rollback the person at the terminal declined: nothing ran."""
    return CutoverResult("not_confirmed", message=f"{verb} not confirmed: nothing was run")


def cutover(plan_path: Path, approved_by: str | None = None, check_only: bool = False,
            progress: Progress | None = None, lock_wait: LockWait = LockWait()) -> CutoverResult:
    """Evaluate every gate; if all pass (and not `check_only`), run the cutover steps."""
    # the window is short and the source frozen: the final sync runs unthrottled (and is never paused)
    with session(plan_path, "cutover", lock=not check_only, progress=progress, lock_wait=lock_wait,
                 unthrottled=True) as ctx:
        return Cutover(ctx, _azure_checks(ctx.loaded)).run(approved_by=approved_by, check_only=check_only)


def rollback(plan_path: Path, force: bool = False, discard_target_changes: bool = False,
             progress: Progress | None = None, lock_wait: LockWait = LockWait(),
             allow_mass_delete: bool = False) -> CutoverResult:
    """Go back to the source: the target's changes come home first (final reverse sync where the plan has
    `reverse_sync`, else refused while the target has changes unless `discard_target_changes`), then the
    rollback steps. `force` switches back although the reverse sync failed."""
    with session(plan_path, "rollback", progress=progress, lock_wait=lock_wait,
                 allow_mass_delete=allow_mass_delete) as ctx:
        return Cutover(ctx).rollback(force=force, discard_target_changes=discard_target_changes)


# --- unlock / report -----------------------------------------------------------------------------------


@dataclass
class UnlockResult:
    released: LockInfo | None
    message: str


def unlock(plan_path: Path, force: bool = False) -> UnlockResult:
    """Release a stale lock (`force` breaks a live one: only when its run is surely gone)."""
    loaded = load_plan(plan_path)
    journal = Journal(loaded.state_url, command="unlock")
    try:
        held = break_lock(journal, loaded.plan.component, force=force)
    finally:
        journal.close()
    return UnlockResult(held, f"released the lock held by {held.describe()}" if held else "the plan was not locked")


@dataclass
class ThrottleResult:
    """The plan's manual override (None: none) and each item's effective limits now, with why."""

    component: str
    override: dict[str, Any] | None
    items: dict[str, dict[str, Any]]
    message: str = ""


def throttle(plan_path: Path, *, pause: bool = False, resume: bool = False, rows_per_second: float | None = None,
             bytes_per_second: int | None = None, clear: bool = False) -> ThrottleResult:
    """Set (or with no change asked, show) the plan's manual throttle override. It needs no lock: every runner of
    the plan reads it within two seconds (`migrate.throttle`); it is journaled with who and when."""
    from datetime import UTC, datetime

    from migrate.state.direction import PLAN_ITEM
    from migrate.state.journal import who
    from migrate.throttle import OVERRIDE_KEY, effective_limits
    from migrate.throttle.control import spec_of

    loaded = load_plan(plan_path)
    journal = Journal(loaded.state_url, command="throttle")
    try:
        current = journal.get(PLAN_ITEM, OVERRIDE_KEY)
        override: dict[str, Any] | None = current if isinstance(current, dict) else None
        message = ""
        if clear or pause or resume or rows_per_second is not None or bytes_per_second is not None:
            user, host, _ = who()
            changed: dict[str, Any] = {} if clear else {k: v for k, v in (override or {}).items()
                                                         if k in ("pause", "rows_per_second", "bytes_per_second")}
            if pause or resume:
                changed["pause"] = pause
            if rows_per_second is not None:
                changed["rows_per_second"] = rows_per_second
            if bytes_per_second is not None:
                changed["bytes_per_second"] = bytes_per_second
            changed = {k: v for k, v in changed.items() if v}
            override = {**changed, "by": f"{user}@{host}", "at": datetime.now(UTC).isoformat()} if changed else None
            journal.put(PLAN_ITEM, OVERRIDE_KEY, override)
            message = ("manual override cleared: the plan's limits and schedule apply" if override is None else
                       "manual override set: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in changed.items()))
            journal.event("throttle", f"{message} (by {user}@{host})", data={"override": override})
        now = datetime.now(UTC)
        items = {item.name: effective_limits(spec_of(loaded, item), override, now).to_dict()
                 for item in loaded.plan.items}
        return ThrottleResult(loaded.plan.component, override, items, message)
    finally:
        journal.close()


@dataclass
class ReleaseResult:
    """What `finish` or `abandon` dropped on the sources (replication slots and publications)."""

    verb: str
    dropped: list[str] = field(default_factory=list)
    message: str = ""


def replication_objects(plan_path: Path) -> list[str]:
    """The slots and publications the plan's logical decoding keeps on its sources (for the question asked)."""
    with session(plan_path, "plan", lock=False) as ctx:
        return [f"{capture.name} on {capture.source.label}" for capture in _captures(ctx)]


def worker(plan_path: Path, shard: str | None = None, until: str = "load", lease: str = "30s", sync: bool = False,
           allow_mass_delete: bool = False) -> Any:
    """`migrate worker`: see migrate.stages.worker."""
    from migrate.plan.durations import parse_duration
    from migrate.stages.worker import run_worker, shard_of

    try:
        ttl = parse_duration(lease)
    except ValueError as exc:
        raise UsageError(f"--lease: {exc}") from None
    if ttl < 3:
        raise UsageError("--lease: at least 3s (a heartbeat renews it every third of it)")
    return run_worker(plan_path, shard=shard_of(shard), until=until, sync=sync, ttl=ttl,
                      allow_mass_delete=allow_mass_delete)


def _captures(ctx: StageContext) -> list[Any]:
    """Each item's forward capture (its slot on the source), and its reverse one (on the target) where reverse
    replication made a slot there."""
    from migrate.databases.engine import DatabaseEngine
    from migrate.plan.model import DatabaseItem

    found = []
    for item in ctx.loaded.plan.items:
        if isinstance(item, DatabaseItem):
            capture = DatabaseEngine(item, ctx.loaded).capture()
            if capture is not None:
                found.append(capture)
            reverse = DatabaseEngine(item, ctx.loaded, reverse=True).recorded_capture(ctx.journal)
            if reverse is not None:
                found.append(reverse)
    return found


FINISHED_KEY = "finished"  # when `migrate finish` released the component (reverse replication stops there)


def _refuse_after_finish(ctx: StageContext) -> None:
    """After `migrate finish` nothing replicates any more: a reverse cycle then would make the target's slot
    again and leave it holding WAL with nobody to read it."""
    finished = ctx.journal.get(PLAN_ITEM, FINISHED_KEY)
    if finished:
        raise MigrateError(f"reverse sync refused: the component was finished at {finished} (`migrate finish` "
                           "dropped the replication slots; nothing replicates to the source any more)")


def release(plan_path: Path, verb: str, lock_wait: LockWait = LockWait()) -> ReleaseResult:
    """`finish` (after a completed cutover) or `abandon` (at any time): drop the replication slots and
    publications logical decoding keeps on the sources, so they stop holding WAL. The journal keeps the rest."""
    with session(plan_path, verb, lock_wait=lock_wait) as ctx:
        if verb == "finish" and cutover_state(ctx).get("status") != "done":
            raise UsageError("finish is for a component that is cut over; this one is not",
                             hint="`migrate abandon PLAN` drops the slots of a migration that will not go ahead")
        result = ReleaseResult(verb)
        if verb == "finish":  # first: a finish that fails part-way still stops reverse cycles making slots again
            from datetime import UTC, datetime

            ctx.journal.put(PLAN_ITEM, FINISHED_KEY, datetime.now(UTC).isoformat(timespec="seconds"))
        for capture in _captures(ctx):
            result.dropped += [f"{what} on {capture.source.label}" for what in capture.drop()]
        ctx.journal.event(verb, f"{verb}: dropped {', '.join(result.dropped) or 'nothing (none left)'}",
                          data={"dropped": result.dropped})
        result.message = (f"dropped {', '.join(result.dropped)}" if result.dropped
                           else "no replication slot or publication to drop")
        return result


@dataclass
class ReportResult:
    path: Path
    format: str
    clean: bool


def report(plan_path: Path, fmt: str, out: Path | None = None, *, mask: bool | None = None,
           events_all: bool = False) -> ReportResult:
    """Write a change-board (md/html) or CI (json/junit) report built from the journal; a folder of plans
    gives the estate report. `mask` (default: the plan's `change.mask_identifiers`) hashes keys and file
    names; `events_all` keeps every event instead of folding clean sync cycles."""
    from migrate.reports.build import build_report
    from migrate.reports.estate import ESTATE_RENDERERS
    from migrate.reports.render import render, suffix_for

    if plan_path.is_dir():
        if fmt not in ESTATE_RENDERERS:
            raise UsageError(f"an estate report is md, html or json, not {fmt!r}")
        found = estate(plan_path)
        target = out or plan_path / "reports" / f"estate{suffix_for(fmt)}"
        _emit(target, ESTATE_RENDERERS[fmt](found))
        return ReportResult(target, fmt, found.clean)
    with session(plan_path, "report", lock=False) as ctx:
        data = build_report(ctx, _azure_checks(ctx.loaded), all_events=events_all, mask=mask)
        target = out or ctx.loaded.base_dir / "reports" / f"{ctx.loaded.plan.component}{suffix_for(fmt)}"
        _emit(target, render(data, fmt, events_all))
        ctx.journal.event("report", f"wrote {fmt} report to {target}" + (" (masked)" if data.masked else ""))
        return ReportResult(target, fmt, data.clean)


def _emit(target: Path, text: str) -> None:
    """Write the report: `-` is standard output, anything else a file written atomically."""
    if str(target) == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        sys.stdout.flush()
    else:
        _write_atomically(target, text)


def _write_atomically(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)


def estate(folder: Path) -> EstateResult:
    """One row per plan in `folder` (stage, lag, last verification, gates, cutover), most in need of attention
    first; a plan that does not load is a row saying why."""
    from migrate.reports.build import build_report
    from migrate.reports.estate import EstateResult, component_row, invalid_row, sort_rows
    from migrate.state.journal import now

    rows = []
    for path in plan_files([folder]):
        try:
            with session(path, "status", lock=False) as ctx:
                data = build_report(ctx, _azure_checks(ctx.loaded))
                rows.append(component_row(path.name, data, list(ctx.loaded.plan.depends_on)))
        except MigrateError as exc:
            rows.append(invalid_row(path.name, exc.message))
    return EstateResult(str(folder), sort_rows(rows), now())


def report_schema() -> dict[str, Any]:
    """JSON Schema of the JSON report (`migrate report --format json`)."""
    from migrate.reports.schema import report_json_schema

    return report_json_schema()
