"""`migrate worker`: one of N stateless runners sharing a plan through a PostgreSQL journal.

Each database item's load is split into claimable tasks (one per key-range chunk) in the journal's work table
(`migrate.state.claims`). Whatever must happen once (preflight, schema, the pre-load watermark and slot, planning
the chunks; after the last chunk, index builds and statistics) happens under a lock held in the journal
database, by whichever worker gets there first; the others wait and find it done. A worker claims a chunk,
copies it (the chunk's target transaction takes a lock of its own on the target first, so a runner that froze
past its lease cannot interleave with the one that took the chunk over), and marks it done with its claim's
fence; a superseded done-mark is refused and said.

With `--until verify` an item's verification is claimable too, in parts (`migrate.stages.parts`): a table's
part is one load key range, compared by checksums on both sides (descending where they differ); a blob item's
part is one of the load's copy chunks (a path range), listed on both sides and compared by size and MD5. Each
journals what it found under the verification's id; the task finishing the last part adds them up into one
verification, dated by its earliest part's start. A clean verification newer than the last load and sync is not
repeated.

With `--sync` workers run one forward sync cycle instead (the load must be done): a blob item's cycle in parts over
the same path ranges, each part copying what changed in its range and proposing the deletes it finds, and a
closing task adding the parts up, applying the delete guards to the totals and making the deletes; a database
item's tables compared in full (no watermark column, no log; PostgreSQL to PostgreSQL) in parts of one load key
range each, the rest of its cycle (watermarks, the log, every delete) in the closing task. A worker joins the
cycle under way, or opens a new one (so workers started apart may run one cycle each: a cycle is idempotent, and
each one more only lowers the lag). Each part and the closing task first check that the target is not
authoritative and that no cutover, rollback or single-runner sync holds the plan; a single-runner `migrate sync`
refuses while workers hold leases.

A worker exits 0 once nothing of its stages is pending or leased, 1 when a task failed `max_attempts` times, 3
when the verification found differences, 130 on SIGTERM or Ctrl-C after giving its tasks back. A defect (an
exception that is not a MigrateError) also gives its task back at once, the attempt counted, before it stops the
worker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import text

from migrate import interrupt
from migrate.errors import MassDeleteRefused, MigrateError, UsageError
from migrate.plan.model import BlobItem, DatabaseItem
from migrate.redact import redact
from migrate.stages import parts
from migrate.stages.engine import StageContext
from migrate.stages.runner import StageRunner, engine_for, require_forward
from migrate.state.claims import ChunkRecord, Claim, Journaled, Split, WorkTable, parse_shard
from migrate.state.lock import current_lock
from migrate.state.sync_state import SyncState

log = logging.getLogger("migrate")

WORKER_STAGES = ("preflight", "schema", "load", "verify")  # what `--until` takes (a sync cycle: `--sync`)
FINISH = "load:finish"  # the singleton task after a load's last chunk: index builds, statistics, the stage done
VERIFY, VERIFY_FINISH = "verify", "verify:finish"  # a verification's parts; the task adding them up
VERIFYING = "work:verify"  # journal key: the verification workers are making ({"id", "tasks"})
SYNC, SYNC_FINISH = "sync", "sync:finish"  # a sync cycle's parts; the task closing it
SYNCING = "work:sync"  # journal key: the sync cycle workers are running ({"id", "tasks", "opened_at", "opened_ns"})


@dataclass
class ItemWork:
    """What one worker did for one item."""

    item: str
    claimed: int = 0
    done: int = 0
    refused: list[str] = field(default_factory=list)  # done-marks a newer claim superseded
    units: int = 0  # rows loaded
    checked: int = 0  # rows verified
    compared: int = 0  # source paths a sync cycle's parts compared
    finished_stage: bool = False  # this worker ran the item's finishing task
    verification: str = ""  # what the item's verification found, once it is complete
    synced: str = ""  # what the item's sync cycle did, once it is complete


@dataclass
class WorkerResult:
    owner: str
    items: list[ItemWork] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)  # items whose verification found differences
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 1 if self.failed else 3 if self.differences else 0


def owner_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Worker:
    """One runner's share of a plan's work, stage by stage, item by item."""

    def __init__(self, ctx: StageContext, *, shard: tuple[int, int] = (0, 1), until: str = "load",
                 sync: bool = False, ttl: float = 30.0, poll: float = 0.5, owner: str | None = None) -> None:
        if until not in WORKER_STAGES:
            raise UsageError(f"workers share {', '.join(WORKER_STAGES)}: --until takes one of them, not {until!r}",
                             hint="a sync cycle by workers is `migrate worker PLAN --sync`")
        self.ctx = ctx
        self.stages = (SYNC,) if sync else WORKER_STAGES[:WORKER_STAGES.index(until) + 1]
        self.owner = owner or owner_name()
        self.work = WorkTable(ctx.journal, self.owner, ttl=ttl, shard=shard)
        self.ttl = ttl
        self.poll = poll
        self.runner = StageRunner(ctx)
        self._held: dict[int, Claim] = {}
        self._guard = threading.Lock()

    def run(self) -> WorkerResult:
        result = WorkerResult(self.owner)
        self._unlocked()
        beat = threading.Thread(target=self._heartbeat, name="worker-heartbeat", daemon=True)
        beat.start()
        try:
            for item in self.ctx.loaded.plan.items:
                self.work.retry(item.name)
                result.items.append(self._item(item, result))
        except KeyboardInterrupt:
            result.interrupted = True
            self._give_back()
        finally:
            self._stopping = True
        return result

    # -- one item --

    def _item(self, item: DatabaseItem | BlobItem, result: WorkerResult) -> ItemWork:
        done = ItemWork(item.name)
        engine = engine_for(item, self.ctx)
        try:
            if self.stages == (SYNC,):
                self._sync(item, engine, done, result)
                return done
            loaded = "load" in self.stages and self.ctx.journal.last_done(item.name, "load")
            if (loaded or self._load(item, engine, done, result)) and "verify" in self.stages:
                self._verify(item, engine, done, result)
            return done
        finally:
            engine.close()

    def _load(self, item: DatabaseItem | BlobItem, engine: Any, done: ItemWork, result: WorkerResult) -> bool:
        """preflight and schema once, then the load's chunks and its finishing task; False when it stopped
        short of a finished load (a failure, or `--until` before it)."""
        journal = self.ctx.journal
        with self._singleton(f"{item.name}:prepare"):
            for stage in ("preflight", "schema"):
                if stage in self.stages and not journal.last_done(item.name, stage):
                    stage_result = self.runner.stage(engine, stage, partial(getattr(engine, stage), self.ctx))
                    if not stage_result.ok or stage_result.problems:
                        result.failed.append(f"{item.name}: {stage}: " + "; ".join(stage_result.problems))
                        return False
            if "load" not in self.stages:
                return False
            if journal.get(item.name, "work:load") is None:
                tasks = engine.load_tasks(self.ctx)
                self.work.add(item.name, "load", tasks)
                self.work.add(item.name, FINISH, ["finish"])
                journal.set_stage(item.name, engine.kind, "load", "running", run_id=self.ctx.run_id,
                                  detail={"tasks": len(tasks), "workers": "claims"})
                journal.put(item.name, "work:load", {"tasks": len(tasks)})
        self._claim_until_done(item.name, "load", lambda claim: engine.load_task(self.ctx, claim.task, claim.spec),
                               done, result)
        if result.failed:
            return False
        self._claim_until_done(item.name, FINISH, lambda _claim: self._finish_load(engine), done, result)
        return not result.failed

    def _verify(self, item: DatabaseItem | BlobItem, engine: Any, done: ItemWork, result: WorkerResult) -> None:
        """An item's verification in parts: joined where one is under way, begun where the last is not current
        (see the module), then reported by every worker once complete."""
        journal = self.ctx.journal
        with self._singleton(f"{item.name}:verify"):
            current = journal.get(item.name, VERIFYING)
            if current is not None and self.work.progress(item.name, VERIFY_FINISH).finished:
                current = None  # that one is complete
            if current is None:
                if self.runner.verification_current(item.name):
                    self._report(item.name, done, result)
                    return
                current = self._open_round(item.name, engine, VERIFY, VERIFYING, parts.VERIFY_PART,
                                           engine.verify_tasks(self.ctx, self.work.done_tasks(item.name, "load")))
        verification = current["id"]
        self._claim_until_done(item.name, VERIFY, lambda claim: engine.verify_task(
            self.ctx, verification, claim.task, claim.spec), done, result)
        if result.failed:
            return
        self._claim_until_done(item.name, VERIFY_FINISH, lambda claim: self._finish_verify(engine, claim.task),
                               done, result)
        if not result.failed:
            self._report(item.name, done, result)

    def _open_round(self, item: str, engine: Any, stage: str, key: str, records: str, tasks: list[Any],
                    **extra: Any) -> dict[str, Any]:
        """A new round of parts (a verification, a sync cycle) under a new id: the earlier round's tasks and part
        records go, its parts and the task closing it (`<stage>:finish`, named by the id) are added, and the
        round is journaled under `key`, which the workers joining it read."""
        round_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        closing = f"{stage}:finish"
        self.work.forget(item, (stage, closing))
        parts.forget(self.ctx.journal, item, records)
        self.work.add(item, stage, tasks)
        self.work.add(item, closing, [round_id])
        current = {"id": round_id, "tasks": len(tasks), **extra}
        self.ctx.journal.put(item, key, current)
        self.ctx.journal.set_stage(item, engine.kind, stage, "running", run_id=self.ctx.run_id,
                                   detail={"round": round_id, "tasks": len(tasks), "workers": "claims"})
        return current

    def _finish_verify(self, engine: Any, verification: str) -> int:
        self.runner.verify_item(engine, parts=partial(engine.verify_parts, self.ctx, verification))
        return 0

    def _report(self, item: str, done: ItemWork, result: WorkerResult) -> None:
        last = self.ctx.journal.last_verification(item)
        if last is None:
            return
        done.verification = (f"clean, {last.checked:,} checked" if last.clean
                             else f"{last.differences} difference(s) in {last.checked:,} checked")
        if not last.clean:
            result.differences.append(f"{item}: verification found {done.verification} (`migrate verify` lists "
                                      "them; `migrate sync` repairs what changed)")

    def _sync(self, item: DatabaseItem | BlobItem, engine: Any, done: ItemWork, result: WorkerResult) -> None:
        """One forward sync cycle of an item (see the module): joined where one is under way, else opened."""
        journal = self.ctx.journal
        if journal.last_done(item.name, "load") is None:
            result.failed.append(f"{item.name}: cannot sync before the load has finished (run the workers with "
                                 "--until load, or `migrate run PLAN`, first)")
            return
        with self._singleton(f"{item.name}:sync"):
            self._forward_only()
            current = journal.get(item.name, SYNCING)
            if current is None or self.work.progress(item.name, SYNC_FINISH).finished:
                current = self._open_round(item.name, engine, SYNC, SYNCING, parts.SYNC_PART,
                                           engine.sync_tasks(self.ctx, self.work.done_tasks(item.name, "load")),
                                           opened_at=journal.clock().isoformat(), opened_ns=time.time_ns())
        cycle = current["id"]

        def part(claim: Claim) -> Any:
            self._forward_only()
            return engine.sync_task(self.ctx, cycle, claim.task, claim.spec)

        self._claim_until_done(item.name, SYNC, part, done, result)
        if result.failed:
            return
        self._claim_until_done(item.name, SYNC_FINISH, lambda _claim: self._finish_sync(engine, current), done,
                               result)
        if not result.failed:
            self._report_sync(item.name, done, result)

    def _finish_sync(self, engine: Any, cycle: dict[str, Any]) -> int:
        self._forward_only()
        self.runner.sync_cycle(engine, datetime.fromisoformat(cycle["opened_at"]),
                               partial(engine.sync_parts, self.ctx, cycle["id"], cycle["opened_ns"]))
        return 0

    def _report_sync(self, item: str, done: ItemWork, result: WorkerResult) -> None:
        last = SyncState(self.ctx.journal, item).last_sync or {}
        done.synced = (f"{last.get('created', 0)} created, {last.get('updated', 0)} updated, "
                       f"{last.get('deleted', 0)} deleted, lag {last.get('lag_seconds', 0)}s")
        if last.get("problems"):
            result.failed.append(f"{item}: sync: " + "; ".join(last["problems"][:5]))

    def _forward_only(self) -> None:
        """Before each part of a sync cycle: the target is not authoritative, and no one runner holds the plan."""
        require_forward(self.ctx.journal)
        self._unlocked()

    def _unlocked(self) -> None:
        holder = current_lock(self.ctx.journal, self.ctx.loaded.plan.component)
        if holder is not None and not holder.is_stale(self.ctx.journal.clock()):
            raise MigrateError(f"the plan is locked by {holder.describe()}; workers share the plan only with "
                               "other workers", hint="wait for that command to finish, then start the workers")

    def _finish_load(self, engine: Any) -> int:
        self.runner.stage(engine, "load", lambda: engine.load_finish(self.ctx))
        return 0

    def _claim_until_done(self, item: str, stage: str, run: Any, done: ItemWork, result: WorkerResult) -> None:
        """Claim and run this stage's tasks until none is pending or leased (reclaiming expired leases)."""
        while True:
            interrupt.check()
            claims = self.work.claim(item, stage, limit=1)
            if not claims:
                progress = self.work.progress(item, stage)
                if progress.failed:
                    errors = self.work.errors(item, stage)
                    result.failed.append(f"{item}: {progress.failed} {stage} task(s) failed"
                                         + (": " + "; ".join(errors[:3]) if errors else " too often"))
                    return
                if progress.finished:
                    return
                time.sleep(self.poll)  # others hold leases: wait for them to finish or expire
                continue
            for claim in claims:
                self._run_claim(claim, run, done)

    def _run_claim(self, claim: Claim, run: Any, done: ItemWork) -> None:
        done.claimed += 1
        if claim.fence > 1:
            self.ctx.journal.event("worker", f"{claim.task}: claimed again (fence {claim.fence}) after an earlier "
                                   "claim's lease expired", item=claim.item, data={"owner": self.owner})
        with self._guard:
            self._held[claim.id] = claim
        try:
            units = run(claim)
        except Exception as exc:  # the task goes back at once, the attempt counted; a defect then stops the worker
            self._let_go(claim)
            ours = isinstance(exc, MigrateError)
            reason = str(exc) if ours else f"unexpected {type(exc).__name__}: {redact(str(exc))}"
            self.work.failed(claim, reason, final=isinstance(exc, MassDeleteRefused))  # the same again next time
            self.ctx.journal.event("worker", f"{claim.task} failed (attempt by {self.owner}): {reason}",
                                   item=claim.item, outcome="failed")
            if ours:
                return
            raise
        self._let_go(claim)  # (on Ctrl-C or SIGTERM the claim stays held: `_give_back` returns it)
        if isinstance(units, Split):  # replaced by smaller tasks, added as it is marked done
            if self.work.split(claim, units.tasks):
                done.done += 1
                return
            units = 0  # superseded: said below
        records: list[ChunkRecord] = []
        if isinstance(units, Journaled):  # its findings go in with its done-mark, or not at all
            records, units = units.records, units.units
        if self.work.done(claim, units, records):
            done.done += 1
            if claim.stage == VERIFY:
                done.checked += units
            elif claim.stage == SYNC:
                done.compared += units
            else:
                done.units += units
            done.finished_stage = done.finished_stage or claim.stage == FINISH
        else:
            owner, fence, status = self.work.holder(claim.item, claim.stage, claim.task)
            message = (f"{claim.task}: done-mark refused: this claim's fence {claim.fence} was superseded by fence "
                       f"{fence} ({owner}, {status})")
            done.refused.append(message)
            self.ctx.journal.event("worker", message, item=claim.item, outcome="refused")

    # -- leases --

    def _let_go(self, claim: Claim) -> None:
        with self._guard:
            self._held.pop(claim.id, None)

    _stopping = False

    def _heartbeat(self) -> None:
        while not self._stopping:
            time.sleep(self.ttl / 3)
            with self._guard:
                held = list(self._held.values())
            if held:
                try:
                    for lost in self.work.heartbeat(held):
                        log.warning("%s: lost the lease of %s (a newer claim exists)", lost.item, lost.task)
                except Exception as exc:  # noqa: BLE001 - a missed heartbeat only shortens the lease
                    log.warning("heartbeat failed: %s", exc)

    def _give_back(self) -> None:
        with self._guard:
            held = list(self._held.values())
            self._held.clear()
        if held:
            self.work.release(held)
            self.ctx.journal.event("worker", f"stopped: gave back {', '.join(c.task for c in held)}",
                                   data={"owner": self.owner})

    @contextmanager
    def _singleton(self, name: str) -> Iterator[None]:
        """Held by one worker at a time (a session lock in the journal database, released at the end or when
        the worker's connection dies)."""
        key = zlib.crc32(f"migrate:{self.ctx.loaded.plan.component}:{name}".encode())
        with self.ctx.journal.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()


def run_worker(plan_path: Path, *, shard: tuple[int, int], until: str, sync: bool = False, ttl: float = 30.0,
               allow_mass_delete: bool = False) -> WorkerResult:
    """`migrate worker`: SIGTERM, like Ctrl-C, stops claiming, cancels the running statement, gives the held
    tasks back and exits 130."""
    from migrate.commands import session

    previous = signal.signal(signal.SIGTERM, lambda *_: interrupt.stop())
    try:
        with session(plan_path, "worker", lock=False, allow_mass_delete=allow_mass_delete) as ctx:
            return Worker(ctx, shard=shard, until=until, sync=sync, ttl=ttl).run()
    finally:
        signal.signal(signal.SIGTERM, previous)


def shard_of(value: str | None) -> tuple[int, int]:
    """`--shard`: `i/N`; `/N` takes i from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job); none: (0, 1)."""
    if value is None:
        return 0, 1
    if value.startswith("/"):
        index = os.environ.get("JOB_COMPLETION_INDEX")
        if index is None:
            raise UsageError(f"--shard {value}: JOB_COMPLETION_INDEX is not set", hint="write --shard i/N")
        value = f"{index}{value}"
    return parse_shard(value)


def run_local_workers(plan_path: Path, count: int, until: str) -> None:
    """`migrate run PLAN --workers N`: N `migrate worker` processes on this machine, up to `until` (verify
    included); raises when one of them did not finish its work (a verification with differences is finished
    work: the run reports it)."""
    argv = [sys.executable, "-m", "migrate", "worker", str(plan_path), "--until", until]
    children = [subprocess.Popen([*argv, "--shard", f"{i}/{count}"], stdout=subprocess.DEVNULL)
                for i in range(count)]
    try:
        codes = [child.wait() for child in children]
    except KeyboardInterrupt:
        for child in children:
            child.send_signal(signal.SIGTERM)  # each gives its tasks back
        for child in children:
            child.wait()
        raise
    unfinished = [code for code in codes if code not in (0, 3)]  # 3: verified, with differences
    if unfinished:
        raise MigrateError(f"{len(unfinished)} of {count} workers did not finish (exit codes "
                           f"{', '.join(map(str, codes))}); their messages are above",
                           hint="run the same command again: finished chunks are kept, the rest are claimed again")
