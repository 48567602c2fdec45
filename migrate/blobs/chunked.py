"""A blob item's load, verification and sync cycles as claimable tasks for `migrate worker` (see
`migrate.blobs.partition`).

The first task splits the root folder; split tasks list one level and are replaced by the tasks of their
subfolders and by copy chunks of at most `chunk_files` files; a copy chunk lists its range on both sides,
reads the journal's records of that range only, and copies what is new or changed, as `migrate run` would
(conditional writes, Content-MD5 on every blob, a record per path once its bytes are durable). A runner
holds one chunk's entries at a time, never the whole listing. Deletes are sync's business, not the load's.

A sync cycle in parts (`migrate worker --sync`) runs over the same path ranges: each part lists its range on
both sides, copies what is new or changed and *proposes* the deletes it finds; the cycle's closing task adds
the parts up and applies the guards (an empty source, a listing with problems, the mass-delete limit) to the
totals before any delete, which it then makes itself, each on condition the target is still what was listed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from migrate.blobs.copy import CopyOutcome
from migrate.blobs.inventory import ChangeSet, ChangeStream, CycleTally, filtered, resolve
from migrate.blobs.partition import Task, cut, folder_range, listing_in, root_task
from migrate.blobs.records import RecordBook
from migrate.blobs.store import Listing, Precondition
from migrate.blobs.verify import BlobVerifier
from migrate.errors import MigrateError
from migrate.stages import parts
from migrate.stages.engine import StageContext, StageResult, SyncResult
from migrate.stages.guards import guarded_deletes
from migrate.state.claims import Journaled, Split
from migrate.units import human_bytes

if TYPE_CHECKING:
    from migrate.blobs.engine import BlobEngine

STARTED_KEY = "work:blob_load_started_ns"  # when the split of the first task began (the load's inventory time)
MAX_SAID = 5  # problems named in a failed chunk's message
LITTER = "#litter"  # journal item (the blob item's name + this): partial writes each chunk saw, by task
KEPT = 100  # problems and warnings a sync part journals in full (all are counted)


def first_tasks(engine: BlobEngine, ctx: StageContext) -> list[tuple[str, str]]:
    """Once, before any chunk: the target made, the load's start recorded, and the task splitting the root."""
    engine._require_source()
    engine.target.ensure()
    if ctx.journal.get(engine.name, STARTED_KEY) is None:
        ctx.journal.put(engine.name, STARTED_KEY, time.time_ns())
    root = root_task()
    return [(root.name, root.spec)]


def run_task(engine: BlobEngine, ctx: StageContext, spec: str, bound: int) -> int | Split:
    task = Task.of(spec)
    return _split(engine, task, bound) if task.kind == "split" else _copy(engine, ctx, task)


def _split(engine: BlobEngine, task: Task, bound: int) -> Split:
    """A split task replaced by its level's tasks. A file or folder that cannot be read is not the split's
    problem: the chunk that lists it again says it (and copies the rest), as `migrate run` would."""
    level = engine.source.list_level(task.folder)
    kept = filtered(level.files, engine.keep)
    if _fits(engine, len(kept.entries), level.folders, bound):  # the whole folder in one chunk
        whole = Task("copy", task.folder, task.range)
        return Split([(whole.name, whole.spec)])
    return Split([(t.name, t.spec) for t in cut(task, kept.entries, level.folders, bound)])


def _fits(engine: BlobEngine, files: int, folders: list[str], bound: int) -> bool:
    """Whether a folder's subtree holds at most `bound` files and folders (its first level holds `files` files
    and `folders`): listed one level at a time, and no further than that. Small folders then make one chunk
    each, not one split task per subfolder."""
    count, todo = files + len(folders), list(folders)
    while todo and count <= bound:
        level = engine.source.list_level(todo.pop())
        count += len(filtered(level.files, engine.keep).entries) + len(level.folders)
        todo += level.folders
    return count <= bound


@dataclass
class _Pass:
    """One chunk's pass: what was decided (in counts), what the copy did, and the deletes found (made by nobody
    here: a sync cycle's closing task decides them on the totals)."""

    stream: ChangeStream
    tally: CycleTally
    outcome: CopyOutcome
    proposed: list[tuple[str, Precondition, int]]


def _listed(engine: BlobEngine, ctx: StageContext, task: Task) -> tuple[Listing, Listing]:
    """A chunk's range listed on both sides; partial writes seen on the target are noted for the finishing task
    (removed once no copy is in flight: one may be another chunk's write under way)."""
    source = filtered(listing_in(engine.source, task.folder, task.range), engine.keep)
    target = filtered(listing_in(engine.target, task.folder, task.range), engine.keep)
    if target.litter:
        ctx.journal.put(engine.name + LITTER, task.name, sorted(set(target.litter)))
    return source, target


def _pass(engine: BlobEngine, ctx: StageContext, task: Task, source: Listing, target: Listing, *, sync: bool,
          since_ns: int) -> _Pass:
    """Decide and copy what is new or changed in one chunk, as `migrate run` (or, `sync`, `migrate sync`) would:
    conditional writes, Content-MD5 on every blob, a record per path once its bytes are durable."""
    rng = task.range
    book = RecordBook(ctx.journal, engine.name, before_flush=engine.target.durable)
    stream = ChangeStream(target, book.load(rng.lo, rng.hi), delete=sync and engine.item.delete,
                          previous_inventory_ns=since_ns)
    changes = stream.page(source)
    changes.problems += source.problems + target.problems
    resolve(changes, lambda e: engine.source.hash(e.path), lambda e: engine.target.hash(e.path),
            engine.item.concurrency)
    tally = CycleTally()
    tally.add(changes)
    rest = stream.finish() if sync else ChangeSet()  # what the target holds beyond the source: sync's business
    tally.add(rest)  # proposed deletes are pending too, until the closing task makes them
    proposed, rest.deletes = rest.deletes, []
    copier = engine.copier(ctx, book, f"{'sync' if sync else 'load'} {engine.name} {task.name}")
    copier.start()
    try:
        copier.submit(changes)
        copier.submit(rest)  # records of paths gone from both sides
    except BaseException:
        copier.abort()
        raise
    outcome = copier.finish()
    for path, why in tally.conflicts[:MAX_SAID]:
        ctx.journal.event("blob_conflict", f"{path}: {why}", item=engine.name, outcome="refused")
    return _Pass(stream, tally, outcome, proposed)


def _copy(engine: BlobEngine, ctx: StageContext, task: Task) -> int:
    source, target = _listed(engine, ctx, task)
    if not source.entries and not source.problems:
        return 0  # nothing here to load
    done = _pass(engine, ctx, task, source, target, sync=False,
                 since_ns=int(ctx.journal.get(engine.name, STARTED_KEY) or 0))
    problems = done.tally.problems + done.outcome.problems
    if problems:
        rng = task.range
        raise MigrateError(f"{engine.name}: chunk [{rng.lo!r}, {rng.hi!r}): {len(problems)} problem(s): "
                           + "; ".join(problems[:MAX_SAID]))
    return done.stream.files


def finish(engine: BlobEngine, ctx: StageContext) -> StageResult:
    """After the last chunk: the inventory the next sync compares against, counted in the journal."""
    from migrate.blobs.engine import STATE_KEY

    _clean_litter(engine, ctx)
    done = ctx.journal.chunk_totals(engine.name, "load").get("done", (0, 0))
    state: dict[str, Any] = ctx.journal.get(engine.name, STATE_KEY) or {}
    ctx.journal.put(engine.name, STATE_KEY, {
        **state, "inventory_at_ns": int(ctx.journal.get(engine.name, STARTED_KEY) or time.time_ns()),
        "files": done[0], "bytes": done[1]})
    return StageResult(engine.name, "load", summary=f"{done[0]} files ({human_bytes(done[1])}) on the target, "
                       "copied by workers chunk by chunk", metrics={"files": done[0], "bytes": done[1]})


def _clean_litter(engine: BlobEngine, ctx: StageContext) -> None:
    """Partial writes of runners that died, which chunks saw and noted: removed once nothing is in flight."""
    seen = sorted({path for paths in ctx.journal.values(engine.name + LITTER).values() for path in paths})
    if seen:
        engine.target.clean_litter(seen)
        ctx.journal.event("blob_litter", f"removed {len(seen)} partial write(s) left by stopped runners",
                          item=engine.name)
    ctx.journal.forget_item(engine.name + LITTER)


def _copy_chunks(loaded: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """The load's copy chunks (path ranges tiling the whole path space), none when no worker loaded the item."""
    return [(name, spec) for name, spec in loaded if spec is not None and Task.of(spec).kind == "copy"]


def verify_tasks(loaded: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """The parts of a verification: the load's copy chunks, else one part covering every path."""
    whole = Task("copy", "", folder_range(""))
    return _copy_chunks(loaded) or [(whole.name, whole.spec)]


def verify_part(engine: BlobEngine, ctx: StageContext, verification: str, task: str, spec: str) -> Journaled:
    """One part of a verification: the range listed on both sides, compared as `migrate verify` compares the
    whole item (the source's MD5 from the journal's records of that range where the file is unchanged)."""
    started = datetime.now(UTC)
    rng = Task.of(spec)
    source = filtered(listing_in(engine.source, rng.folder, rng.range), engine.keep)
    target = filtered(listing_in(engine.target, rng.folder, rng.range), engine.keep)
    records = RecordBook(ctx.journal, engine.name).load(rng.range.lo, rng.range.hi)
    verifier = BlobVerifier(engine.name, engine.source, engine.target, engine.keep, records,
                            engine.item.concurrency, ctx.progress)
    found = verifier.compare(source, target)
    return parts.record(engine.name, verification, task, started, found.checked, found.differences,
                        files=len(source.entries), bytes=source.bytes, target_files=len(target.entries),
                        target_bytes=target.bytes, source_bytes_read=found.metrics["source_bytes_read"],
                        target_bytes_read=found.metrics["target_bytes_read"])


# -- a sync cycle in parts --


def sync_tasks(loaded: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """The parts of a sync cycle: the load's copy chunks, else the root split (the path space found in ranges of
    at most `chunk_files`, as a load by workers finds it)."""
    root = root_task()
    return _copy_chunks(loaded) or [(root.name, root.spec)]


def sync_part(engine: BlobEngine, ctx: StageContext, cycle: str, spec: str) -> Journaled | Split:
    """One part of a sync cycle: its range listed on both sides, what is new or changed copied (as `migrate sync`
    copies it), the deletes it finds proposed to the closing task, not made; returns the source paths listed and
    the part's record (journaled with the done-mark: a superseded runner's never overwrites it)."""
    from migrate.blobs.engine import STATE_KEY

    task = Task.of(spec)
    if task.kind == "split":
        return _split(engine, task, engine.item.chunk_files)
    source, target = _listed(engine, ctx, task)
    state: dict[str, Any] = ctx.journal.get(engine.name, STATE_KEY) or {}
    done = _pass(engine, ctx, task, source, target, sync=True, since_ns=int(state.get("inventory_at_ns", 0)))
    stream, tally, outcome = done.stream, done.tally, done.outcome
    problems, warnings = tally.problems + outcome.problems, tally.warnings + outcome.warnings
    return parts.journaled(engine.name, parts.SYNC_PART, cycle, task.name, stream.files, {
        "files": stream.files, "bytes": stream.bytes, "target_files": len(target.entries),
        "listing_problems": len(source.problems), "unchanged": tally.unchanged, "pending": tally.pending,
        "oldest_pending_ns": tally.oldest_pending_ns, "conflicts": len(tally.conflicts),
        "created": outcome.created, "updated": outcome.updated + outcome.touched, "copy": outcome.metrics(),
        "failed_since": min(outcome.failed.values(), default=None), "still_pending": len(outcome.failed),
        "problems": problems[:KEPT], "problem_count": len(problems),
        "warnings": warnings[:KEPT], "warning_count": len(warnings),
        "deletes": [[path, when.etag, since_ns] for path, when, since_ns in done.proposed]})


def sync_finish(engine: BlobEngine, ctx: StageContext, cycle: str, opened_ns: int) -> SyncResult:
    """The cycle's closing task: its parts added up, the delete guards applied to the totals, the deletes made
    (each on condition the target is still what its part listed), the inventory recorded for the next cycle."""
    from migrate.blobs.engine import STATE_KEY

    found = parts.of_round(ctx.journal, engine.name, parts.SYNC_PART, cycle)
    total = {key: sum(part[key] for part in found) for key in (
        "files", "bytes", "target_files", "listing_problems", "unchanged", "pending", "conflicts", "created",
        "updated", "still_pending", "problem_count", "warning_count")}
    proposed = [(path, Precondition.matching(etag or ""), since_ns)
                for part in found for path, etag, since_ns in part["deletes"]]
    deletes, problems, refused = guarded_deletes(f"blob set {engine.name}", proposed, source_files=total["files"],
                                                 listing_problems=total["listing_problems"],
                                                 target_files=total["target_files"], allow=ctx.allow_mass_delete)
    if refused is not None:  # the cycle fails with it (the copies are made): the workers exit 1 and say it
        problems.append(f"{refused.message} ({refused.hint})")
    outcome = CopyOutcome()
    if deletes:
        book = RecordBook(ctx.journal, engine.name, before_flush=engine.target.durable)
        copier = engine.copier(ctx, book, f"sync {engine.name}: deletes")
        copier.start()
        try:
            copier.submit(ChangeSet(deletes=deletes))
        except BaseException:
            copier.abort()
            raise
        outcome = copier.finish()
    problems = [p for part in found for p in part["problems"]] + problems + outcome.problems
    if not problems:
        _clean_litter(engine, ctx)
    state: dict[str, Any] = ctx.journal.get(engine.name, STATE_KEY) or {}
    ctx.journal.put(engine.name, STATE_KEY, {**state, "inventory_at_ns": opened_ns, "files": total["files"],
                                              "bytes": total["bytes"], "target_files": total["target_files"]})
    waiting = [p["failed_since"] for p in found if p["failed_since"] is not None] + list(outcome.failed.values())
    oldest = min((p["oldest_pending_ns"] for p in found if p["oldest_pending_ns"] is not None), default=None)
    copied = {key: sum(part["copy"][key] for part in found) for key in found[0]["copy"]} if found else {}
    copied["deleted"] = outcome.deleted
    copied.pop("bytes_per_second", None)
    more = total["problem_count"] - sum(len(p["problems"]) for p in found)
    return SyncResult(
        engine.name, created=total["created"], updated=total["updated"], deleted=outcome.deleted,
        lag_seconds=round(max(0.0, (opened_ns - min(waiting)) / 1e9), 3) if waiting else 0.0,
        lag_detail={"at_start": round(max(0.0, (opened_ns - oldest) / 1e9), 3) if oldest is not None else 0.0,
                    "pending_at_start": total["pending"], "pending_after": total["still_pending"] + len(outcome.failed),
                    "conflicts": total["conflicts"]},
        problems=problems + ([f"... and {more} more problem(s) in the parts"] if more > 0 else []),
        metrics={**copied, "unchanged": total["unchanged"], "cycle": cycle, "parts": len(found),
                 "warnings": [w for p in found for w in p["warnings"]][:KEPT] + outcome.warnings[:KEPT]},
    )
