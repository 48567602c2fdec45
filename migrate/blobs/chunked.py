"""A blob item's load (and verification) as claimable tasks for `migrate worker` (see `migrate.blobs.partition`).

The first task splits the root folder; split tasks list one level and are replaced by the tasks of their
subfolders and by copy chunks of at most `chunk_files` files; a copy chunk lists its range on both sides,
reads the journal's records of that range only, and copies what is new or changed, as `migrate run` would
(conditional writes, Content-MD5 on every blob, a record per path once its bytes are durable). A runner
holds one chunk's entries at a time, never the whole listing. Deletes are sync's business, not the load's.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from migrate.blobs.inventory import ChangeStream, filtered, resolve
from migrate.blobs.partition import Task, cut, folder_range, listing_in, root_task
from migrate.blobs.records import RecordBook
from migrate.blobs.verify import BlobVerifier
from migrate.errors import MigrateError
from migrate.stages import parts
from migrate.stages.engine import StageContext, StageResult
from migrate.state.claims import Split
from migrate.units import human_bytes

if TYPE_CHECKING:
    from migrate.blobs.engine import BlobEngine

STARTED_KEY = "work:blob_load_started_ns"  # when the split of the first task began (the load's inventory time)
MAX_SAID = 5  # problems named in a failed chunk's message
LITTER = "#litter"  # journal item (the blob item's name + this): partial writes each chunk saw, by task


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
    if task.kind == "split":
        # a file or folder that cannot be read is not the split's problem: the chunk that lists it again says it
        # (and copies the rest), as `migrate run` would
        level = engine.source.list_level(task.folder)
        kept = filtered(level.files, engine.keep)
        if _fits(engine, len(kept.entries), level.folders, bound):  # the whole folder in one chunk
            whole = Task("copy", task.folder, task.range)
            return Split([(whole.name, whole.spec)])
        return Split([(t.name, t.spec) for t in cut(task, kept.entries, level.folders, bound)])
    return _copy(engine, ctx, task)


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


def _copy(engine: BlobEngine, ctx: StageContext, task: Task) -> int:
    rng = task.range
    source = filtered(listing_in(engine.source, task.folder, rng), engine.keep)
    target = filtered(listing_in(engine.target, task.folder, rng), engine.keep)
    if target.litter:  # removed once no copy is in flight (`finish`): it may be another chunk's write under way
        ctx.journal.put(engine.name + LITTER, task.name, sorted(set(target.litter)))
    if not source.entries and not source.problems:
        return 0  # nothing here to load (what the target holds beyond the source is sync's business)
    book = RecordBook(ctx.journal, engine.name, before_flush=engine.target.durable)
    stream = ChangeStream(target, book.load(rng.lo, rng.hi), delete=False,
                          previous_inventory_ns=int(ctx.journal.get(engine.name, STARTED_KEY) or 0))
    changes = stream.page(source)
    changes.problems += source.problems + target.problems
    resolve(changes, lambda e: engine.source.hash(e.path), lambda e: engine.target.hash(e.path),
            engine.item.concurrency)
    copier = engine.copier(ctx, book, f"load {engine.name} {task.name}")
    copier.start()
    try:
        copier.submit(changes)
    except BaseException:
        copier.abort()
        raise
    outcome = copier.finish()
    for path, why in changes.conflicts[:MAX_SAID]:
        ctx.journal.event("blob_conflict", f"{path}: {why}", item=engine.name, outcome="refused")
    problems = changes.problems + outcome.problems
    if problems:
        raise MigrateError(f"{engine.name}: chunk [{rng.lo!r}, {rng.hi!r}): {len(problems)} problem(s): "
                           + "; ".join(problems[:MAX_SAID]))
    return stream.files


def finish(engine: BlobEngine, ctx: StageContext) -> StageResult:
    """After the last chunk: the inventory the next sync compares against, counted in the journal."""
    from migrate.blobs.engine import STATE_KEY

    seen = sorted({path for paths in ctx.journal.values(engine.name + LITTER).values() for path in paths})
    if seen:  # partial writes of runners that died: nothing is in flight now
        engine.target.clean_litter(seen)
        ctx.journal.event("blob_litter", f"removed {len(seen)} partial write(s) left by stopped runners",
                          item=engine.name)
    ctx.journal.forget_item(engine.name + LITTER)
    done = ctx.journal.chunk_totals(engine.name, "load").get("done", (0, 0))
    state: dict[str, Any] = ctx.journal.get(engine.name, STATE_KEY) or {}
    ctx.journal.put(engine.name, STATE_KEY, {
        **state, "inventory_at_ns": int(ctx.journal.get(engine.name, STARTED_KEY) or time.time_ns()),
        "files": done[0], "bytes": done[1]})
    return StageResult(engine.name, "load", summary=f"{done[0]} files ({human_bytes(done[1])}) on the target, "
                       "copied by workers chunk by chunk", metrics={"files": done[0], "bytes": done[1]})


def verify_tasks(loaded: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    """The parts of a verification: the load's copy chunks, else one part covering every path."""
    chunks = [(name, spec) for name, spec in loaded if spec is not None and Task.of(spec).kind == "copy"]
    if chunks:
        return chunks
    whole = Task("copy", "", folder_range(""))
    return [(whole.name, whole.spec)]


def verify_part(engine: BlobEngine, ctx: StageContext, verification: str, task: str, spec: str) -> int:
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
    parts.record(ctx.journal, engine.name, verification, task, started, found.checked, found.differences,
                 files=len(source.entries), bytes=source.bytes, target_files=len(target.entries),
                 target_bytes=target.bytes, source_bytes_read=found.metrics["source_bytes_read"],
                 target_bytes_read=found.metrics["target_bytes_read"])
    return found.checked
