"""The stage runner: drives each plan item through preflight → schema → load → verify, sync, and records
every transition in the journal so that a rerun after `kill -9` resumes where the work stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from migrate.errors import MigrateError, UsageError
from migrate.plan.model import BlobItem, DatabaseItem
from migrate.stages.engine import (
    RUN_STAGES,
    ItemEngine,
    Preview,
    StageContext,
    StageResult,
    SyncResult,
    VerifyResult,
)
from migrate.state.direction import read_direction
from migrate.state.journal import Journal, now
from migrate.state.sync_state import SyncState


def engine_for(item: DatabaseItem | BlobItem, ctx: StageContext, reverse: bool = False) -> ItemEngine:
    """The engine that moves this kind of item (imported lazily: each pulls in its own SDKs); `reverse`
    replicates the plan's target back to its source."""
    if isinstance(item, DatabaseItem):
        from migrate.databases.engine import DatabaseEngine

        return DatabaseEngine(item, ctx.loaded, reverse)
    from migrate.blobs.engine import BlobEngine

    return BlobEngine(item, ctx.loaded, reverse)


@dataclass
class ItemRun:
    """What one `run` did to one item."""

    item: str
    kind: str
    stages: list[StageResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stages already done before this run
    verification: VerifyResult | None = None
    seconds: float = 0.0

    @property
    def problems(self) -> list[str]:
        return [p for s in self.stages for p in s.problems]


class StageRunner:
    """Runs stages for the items of one plan; callers hold the plan lock."""

    def __init__(self, ctx: StageContext, only: list[str] | None = None) -> None:
        self.ctx = ctx
        items = ctx.loaded.plan.items
        if only:
            unknown = sorted(set(only) - {i.name for i in items})
            if unknown:
                raise UsageError(f"no item named {', '.join(unknown)} in the plan "
                                 f"(items: {', '.join(i.name for i in items)})")
            items = [i for i in items if i.name in only]
        self.items = items

    @contextmanager
    def _engine(self, item: DatabaseItem | BlobItem, reverse: bool = False) -> Iterator[ItemEngine]:
        engine = engine_for(item, self.ctx, reverse)
        try:
            yield engine
        finally:
            engine.close()

    def stage(self, engine: ItemEngine, stage: str, work: Callable[[], Any], **extra: Any) -> Any:
        """Run one stage of one item, journaling started → done | failed around it."""
        journal = self.ctx.journal
        journal.set_stage(engine.name, engine.kind, stage, "running", run_id=self.ctx.run_id)
        started = time.monotonic()
        throttle = self.ctx.throttle(engine.item)
        waited_before = throttle.waited()
        try:
            result = work()
        except BaseException as exc:
            journal.set_stage(engine.name, engine.kind, stage, "failed", run_id=self.ctx.run_id,
                              detail={"error": str(exc) if isinstance(exc, MigrateError) else type(exc).__name__})
            journal.event(stage, f"{stage} failed: {exc}", item=engine.name, outcome="failed")
            raise
        seconds = round(time.monotonic() - started, 3)
        detail = {"seconds": seconds, **extra, **_summary(result)}
        throttled = {why: round(s - waited_before.get(why, 0.0), 3) for why, s in throttle.waited().items()
                     if s - waited_before.get(why, 0.0) >= 0.01}
        if throttled:  # the board sees the source was protected, and why
            detail["throttled"] = throttled
            journal.event("throttle", f"{stage}: {sum(throttled.values()):.1f} s throttled ("
                          + "; ".join(f"{why}: {s:.1f} s" for why, s in throttled.items()) + ")",
                          item=engine.name, data={"stage": stage, "throttled": throttled})
        ok = not getattr(result, "problems", None) and getattr(result, "ok", True)
        journal.set_stage(engine.name, engine.kind, stage, "done" if ok else "failed", run_id=self.ctx.run_id,
                          detail=detail, fingerprint=self.ctx.loaded.fingerprint if stage == "load" else None)
        differs = bool(getattr(result, "differences", None))  # a verification that found differences
        journal.event(stage, _describe(stage, result), item=engine.name,
                      outcome="failed" if not ok else "differences" if differs else "ok", data=detail)
        return result

    # -- verbs --

    def run(self, until: str = "verify") -> list[ItemRun]:
        """preflight → schema → load → verify for every item, skipping what the journal says is done."""
        if until not in RUN_STAGES:
            raise UsageError(f"--until takes one of {', '.join(RUN_STAGES)}, not {until!r}")
        self._refuse_while_workers("run")
        runs = []
        for item in self.items:
            with self._engine(item) as engine:
                runs.append(self._run_item(engine, RUN_STAGES[: RUN_STAGES.index(until) + 1]))
        return runs

    def _run_item(self, engine: ItemEngine, stages: tuple[str, ...]) -> ItemRun:
        record = ItemRun(engine.name, engine.kind)
        started = time.monotonic()
        journal = self.ctx.journal
        added = engine.pending(self.ctx) if journal.last_done(engine.name, "load") else []
        if added:  # tables named after the load: schema and load again (done chunks are skipped)
            journal.event("run", f"added to the plan since the load: {', '.join(added)}", item=engine.name)
        for stage in stages:
            if stage not in engine.stages:
                continue
            if stage in ("schema", "load") and journal.last_done(engine.name, stage) and not added:
                record.skipped.append(stage)
                continue
            if stage == "verify":
                if self.verification_current(engine.name):
                    record.skipped.append(stage)
                    continue
                record.verification = self.verify_item(engine)
                continue
            baseline = SyncState(journal, engine.name).load_starting(now()) if stage == "load" else None
            result = self.stage(engine, stage, partial(getattr(engine, stage), self.ctx))
            record.stages.append(result)
            if not result.ok or result.problems:  # never verify over a partial load; a rerun resumes it
                break
            if baseline is not None:  # the lag bound counts from the load's start, not its end
                SyncState(journal, engine.name).caught_up(baseline, 0.0)
        record.seconds = round(time.monotonic() - started, 3)
        return record

    def verification_current(self, item: str) -> bool:
        """A clean verification newer than the last load and sync: nothing to verify again."""
        last = self.ctx.journal.last_verification(item)
        if last is None or not last.clean:
            return False
        changed = [self.ctx.journal.last_done(item, s) for s in ("load", "sync")]
        return all(c is None or c <= last.at for c in changed)

    def verify_item(self, engine: ItemEngine, deep: bool = False,
                    parts: Callable[[], VerifyResult] | None = None) -> VerifyResult:
        """Verify one item and record the verification. `parts`: the verification workers made in parts, added
        up, instead of verifying here; it is dated by its `since` (its earliest part's start), not by now."""
        result: VerifyResult = self.stage(engine, "verify", parts or partial(engine.verify, self.ctx, deep=deep),
                                          deep=deep)
        since = result.metrics.get("since")
        self.ctx.journal.record_verification(
            engine.name, result.clean, result.checked, result.found,
            detail={"deep": deep, "differences": [d.__dict__ for d in result.differences[:1000]],
                    **result.metrics},
            at=datetime.fromisoformat(since) if since else None,
        )
        return result

    def verify(self, deep: bool = False) -> list[VerifyResult]:
        results = []
        for item in self.items:
            self._require_loaded(item.name, "verify")
            with self._engine(item) as engine:
                results.append(self.verify_item(engine, deep=deep))
        return results

    def sync(self) -> list[SyncResult]:
        """One forward cycle (source → target) for every item. Refused whenever the target is, or may be,
        authoritative: copying from the source then would overwrite what the application wrote there."""
        require_forward(self.ctx.journal)
        self._refuse_while_workers("sync")
        return [self.sync_item(item, reverse=False) for item in self.items]

    def _refuse_while_workers(self, verb: str) -> None:
        """One runner never works beside `migrate worker`s holding tasks of the plan (a load or a sync cycle of
        its own would race theirs)."""
        if self.ctx.journal.engine.dialect.name != "postgresql":
            return  # workers need a PostgreSQL journal: there are none
        from migrate.state.claims import live_leases  # (the PostgreSQL dialect: imported only here)

        leases = live_leases(self.ctx.journal)
        if leases:
            raise MigrateError(f"{verb} refused: workers hold {len(leases)} task(s) of this plan ("
                               + ", ".join(sorted({owner for owner, _, _ in leases})) + f"); one runner's {verb} "
                               "would race theirs", hint="wait for the workers to finish (`migrate status PLAN`)")

    def sequences(self) -> list[str]:
        """`migrate:sequences` for every item: target sequences/identities at least the source's values."""
        done = []
        for item in self.items:
            with self._engine(item) as engine:
                done += engine.advance_sequences(self.ctx)
        return done

    def reverse_sync(self) -> list[SyncResult]:
        """One reverse cycle (target → source) for every item: the target's inserts, updates and deletes
        (new and modified blobs) reach the source, the target winning. Journaled as `<item>.reverse`."""
        return [self.sync_item(item, reverse=True) for item in self.items]

    def sync_item(self, item: DatabaseItem | BlobItem, reverse: bool) -> SyncResult:
        self._require_loaded(item.name, "sync")
        with self._engine(item, reverse) as engine:
            return self.sync_cycle(engine, now(), partial(engine.sync, self.ctx))

    def sync_cycle(self, engine: ItemEngine, started: datetime, work: Callable[[], SyncResult]) -> SyncResult:
        """Run and record one sync cycle of one item that began at `started` (workers' cycles in parts: the
        closing task adding its parts up); a clean one vouches that nothing older is missing on the target."""
        result: SyncResult = self.stage(engine, "sync", work)
        SyncState(self.ctx.journal, engine.name).cycle_done(started, _summary(result), clean=not result.problems,
                                                            lag_seconds=result.lag_seconds or 0.0)
        return result

    def preview(self) -> list[Preview]:
        return [self._preview(item) for item in self.items]

    def _preview(self, item: DatabaseItem | BlobItem) -> Preview:
        """One item's dry-run; a check that fails is the item's problem, and the other items are still checked."""
        try:
            with self._engine(item) as engine:
                return engine.preview(self.ctx)
        except MigrateError as exc:
            database = isinstance(item, DatabaseItem)
            return Preview(item.name, "database" if database else "blob", units="rows" if database else "files",
                           problems=[str(exc)])

    def _require_loaded(self, item: str, verb: str) -> None:
        if self.ctx.journal.last_done(item, "load") is None:
            raise MigrateError(f"{item}: cannot {verb} before the load has finished",
                               hint="run `migrate run PLAN` first")


def require_forward(journal: Journal) -> None:
    """Forward sync (source → target) is refused whenever the target is, or may be, authoritative."""
    direction = read_direction(journal)
    if direction.target_authoritative:
        raise MigrateError(f"forward sync refused: the target has been authoritative since {direction.since} "
                           f"({direction.reason}); copying from the source would overwrite what the "
                           "application writes there",
                           hint="after a completed cutover `migrate sync PLAN` replicates target → source; "
                                "`migrate rollback PLAN` goes back to the source")


def _summary(result: Any) -> dict[str, Any]:
    """The small, JSON-able part of a stage result that goes into the journal."""
    out: dict[str, Any] = {}
    for key in ("summary", "created", "updated", "deleted", "lag_seconds", "checked"):
        value = getattr(result, key, None)
        if value not in (None, ""):
            out[key] = value
    if getattr(result, "metrics", None):
        out["metrics"] = result.metrics
    if getattr(result, "problems", None):
        out["problems"] = result.problems[:50]
    if isinstance(result, VerifyResult):
        out["differences"] = result.found
    return out


def _describe(stage: str, result: Any) -> str:
    if isinstance(result, VerifyResult):
        return (f"verify: {result.checked} checked, clean" if result.clean
                else f"verify: {result.found} difference(s) in {result.checked} checked")
    if isinstance(result, SyncResult):
        return (f"sync: {result.created} created, {result.updated} updated, {result.deleted} deleted, "
                f"lag {result.lag_seconds if result.lag_seconds is not None else '?'}s")
    return f"{stage}: {getattr(result, 'summary', '') or 'done'}"
