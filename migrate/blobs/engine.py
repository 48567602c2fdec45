"""The blob item engine: preflight, load, verify, sync and the dry-run preview of one `blobs:` item."""

from __future__ import annotations

import secrets
import time
from typing import Any

from migrate.blobs import chunked
from migrate.blobs.copy import SMALL_FACTOR, BlobCopier, CopyOutcome
from migrate.blobs.endpoints import normalise_prefix, open_store
from migrate.blobs.filters import PathFilter
from migrate.blobs.inventory import ChangeSet, ChangeStream, CycleTally, classify, filtered, resolve
from migrate.blobs.records import PathRecord, RecordBook
from migrate.blobs.store import EMPTY_MD5, BlobProps, BlobStore, Listing, Precondition, StoreFault
from migrate.blobs.verify import BlobVerifier
from migrate.errors import EndpointError, MassDeleteRefused
from migrate.plan.loader import LoadedPlan
from migrate.plan.model import BlobItem
from migrate.redact import redact
from migrate.stages import parts
from migrate.stages.engine import ItemEngine, Preview, StageContext, StageResult, SyncResult, VerifyResult
from migrate.stages.guards import guarded_deletes
from migrate.state.claims import Journaled, Split
from migrate.units import human_bytes

__all__ = ["BlobEngine", "open_store"]

STATE_KEY = "blob_inventory"  # journal key/value: the last inventory's summary and measured throughput
DEFAULT_RATE = {"folder": 200e6, "blob": 60e6}  # bytes per second, until a load has measured one
PER_FILE_SECONDS = {"folder": 0.002, "blob": 0.03}
MAX_EVENTS = 100


def capped(lines: list[str], limit: int = MAX_EVENTS) -> list[str]:
    """At most `limit` lines, the rest summarised (a deleted container must not yield 100,000 warnings)."""
    return lines if len(lines) <= limit else [*lines[:limit], f"... and {len(lines) - limit} more"]


class BlobEngine(ItemEngine):
    """Moves one set of files or blobs from a folder or container into a container (or a folder)."""

    kind = "blob"
    stages = ("preflight", "load", "verify", "sync")

    def __init__(self, item: BlobItem, loaded: LoadedPlan, reverse: bool = False) -> None:
        super().__init__(item, loaded, reverse)
        self.item: BlobItem = item
        self.keep = PathFilter(list(item.include), list(item.exclude))
        self._source: BlobStore | None = None
        self._target: BlobStore | None = None

    # -- stores --

    def _open(self, name: str, prefix: str = "") -> BlobStore:
        connection = self.loaded.plan.connections[name]
        return open_store(connection, self.loaded, prefix=prefix, concurrency=self.item.concurrency,
                          block_size=self.item.block_size)

    def _plan_source(self) -> BlobStore:
        return self._open(self.item.source)

    def _plan_target(self) -> BlobStore:
        return self._open(self.item.target, normalise_prefix(self.item.prefix))

    @property
    def source(self) -> BlobStore:
        """Where this engine copies from: the plan's source, or its target in reverse."""
        if self._source is None:
            self._source = self._plan_target() if self.reverse else self._plan_source()
        return self._source

    @property
    def target(self) -> BlobStore:
        if self._target is None:
            self._target = self._plan_source() if self.reverse else self._plan_target()
        return self._target

    def close(self) -> None:
        for store in (self._source, self._target):
            if store is not None:
                store.close()
        self._source = self._target = None

    # -- stages --

    def preflight(self, ctx: StageContext) -> StageResult:
        """Read-only: the source exists and lists, the target is reachable (or can be created), space."""
        self._require_source()
        if self.source.identity() == self.target.identity():
            raise EndpointError(f"{self.name}: source and target are the same place ({self.source.identity()}); "
                                "nothing was written", hint="point the target connection at the Azure container")
        files = size = unsaid = 0
        said: list[str] = []
        for page in self.source.listing_pages():  # counted page by page: a page's entries are let go
            page = filtered(page, self.keep)
            files += len(page.entries)
            size += page.bytes
            lines, room = page.problems + page.warnings, MAX_EVENTS - len(said)  # a bad file must not stop the load
            said += lines[:room]
            unsaid += max(0, len(lines) - room)
        there = self.target.probe()
        facts = [f"source: {files} files, {human_bytes(size)}",
                 f"target: {there.detail}" + ("" if there.exists else "; it will be created")]
        result = StageResult(self.name, "preflight", metrics={"files": files, "bytes": size,
                                                              "target_exists": there.exists})
        result.warnings += said + ([f"... and {unsaid} more"] if unsaid else [])
        if not files:
            result.warnings.append("no source file matches the item's include/exclude")
        free = getattr(self.target, "free_bytes", lambda: None)()
        if free is not None and free < size:
            result.problems.append(f"target has {human_bytes(free)} free, the source holds {human_bytes(size)}")
        result.ok = not result.problems
        result.summary = "; ".join(facts)
        return result

    def load(self, ctx: StageContext) -> StageResult:
        """Copy everything not yet on the target; a rerun resumes (journaled per file, blocks reused)."""
        changes, outcome, created = self._cycle(ctx, delete=False, label="load")
        problems = changes.problems + outcome.problems
        summary = (f"copied {outcome.copied} files ({human_bytes(outcome.bytes_copied)}) in "
                   f"{outcome.seconds:.1f} s; {changes.unchanged + outcome.adopted} already there")
        if created:
            summary += "; target created"
        return StageResult(self.name, "load", ok=not problems, summary=summary,
                           metrics={**outcome.metrics(), "unchanged": changes.unchanged, "target_created": created},
                           warnings=capped(changes.warnings + outcome.warnings), problems=problems)

    def sync(self, ctx: StageContext) -> SyncResult:
        """Copy what changed since the last cycle; delete on the target only when the item says so."""
        cycle_start = time.time_ns()
        changes, outcome, _ = self._cycle(ctx, delete=self.item.delete, label="sync")
        remaining = list(outcome.failed.values())
        lag = max(0.0, (cycle_start - min(remaining)) / 1e9) if remaining else 0.0
        oldest = changes.oldest_pending_ns
        at_start = max(0.0, (cycle_start - oldest) / 1e9) if oldest is not None else 0.0
        return SyncResult(
            self.name, created=outcome.created, updated=outcome.updated + outcome.touched, deleted=outcome.deleted,
            lag_seconds=round(lag, 3),
            lag_detail={"at_start": round(at_start, 3), "pending_at_start": changes.pending,
                        "pending_after": len(remaining), "conflicts": len(changes.conflicts)},
            problems=changes.problems + outcome.problems,
            metrics={**outcome.metrics(), "unchanged": changes.unchanged,
                     "warnings": capped(changes.warnings + outcome.warnings)},
        )

    def verify(self, ctx: StageContext, deep: bool = False) -> VerifyResult:
        """Size and MD5 of every path on both sides; `deep` re-reads the bytes of both."""
        self._require_source()
        records = RecordBook(ctx.journal, self.name).load()
        verifier = BlobVerifier(self.name, self.source, self.target, self.keep, records, self.item.concurrency,
                                ctx.progress)
        return verifier.run(deep=deep)

    def preview(self, ctx: StageContext) -> Preview:
        """What load/sync would do, from the listings and the journal alone: reads no file, writes nothing."""
        self._require_source()
        there = self.target.probe()
        source = filtered(self.source.listing(), self.keep)
        target = filtered(self.target.listing(), self.keep) if there.exists else Listing()
        records = RecordBook(ctx.journal, self.name).load()
        state = ctx.journal.get(self.name, STATE_KEY) or {}
        changes = classify(source, target, records, delete=self.item.delete,
                           previous_inventory_ns=int(state.get("inventory_at_ns", 0)))
        create = [t for t in changes.transfers if t.reason != "changed"]
        update = [t.entry for t in changes.transfers if t.reason == "changed"]
        update += [s.entry for s in changes.suspects if s.kind == "mtime"] + [t[0] for t in changes.touches]
        foreign = [s for s in changes.suspects if s.kind == "foreign"]
        nbytes = sum(t.entry.size for t in create) + sum(e.size for e in update)
        preview = Preview(self.name, "blob", create=len(create), update=len(update), delete=len(changes.deletes),
                          unchanged=changes.unchanged + len(foreign), bytes=nbytes)
        kind = self.target.kind
        rate = float(state.get("bytes_per_second") or 0) or DEFAULT_RATE.get(kind, 60e6)
        files = len(create) + len(update) + len(changes.deletes)
        preview.estimate_seconds = round(nbytes / rate + files * PER_FILE_SECONDS.get(kind, 0.03)
                                         / self.item.concurrency, 1)
        if not there.exists:
            preview.details.append(f"{there.detail}: it will be created")
        preview.details.append(f"source {self.source.display}: {len(source.entries)} files, "
                               f"{human_bytes(source.bytes)}")
        preview.details.append(f"create {len(create)} files ({human_bytes(sum(t.entry.size for t in create))}), "
                               f"update {len(update)}, delete {len(changes.deletes)}, unchanged "
                               f"{preview.unchanged}")
        if foreign:
            preview.details.append(f"{len(foreign)} files already on the target will be compared by MD5 "
                                   "and adopted when equal")
        preview.warnings += [f"{p}: {why}" for p, why in changes.conflicts[:MAX_EVENTS]]
        preview.warnings += source.problems[:MAX_EVENTS] + changes.warnings[:MAX_EVENTS]
        return preview

    def reverse_ready(self, ctx: StageContext) -> tuple[bool, str]:
        """The plan's source takes a write (a probe object written and deleted at once) and the target lists."""
        home, away = self._plan_source(), self._plan_target()
        try:
            if not away.probe().exists:
                return False, f"target {away.display} does not exist"
            probe = f".migrate-probe-{secrets.token_hex(6)}"
            try:
                etag = home.put(probe, b"", BlobProps(size=0, md5=EMPTY_MD5, mtime_ns=time.time_ns(),
                                                       content_type="application/octet-stream"),
                                Precondition.absent())
                home.delete(probe, Precondition.matching(etag))
            except (StoreFault, EndpointError, OSError) as exc:
                return False, f"source {home.display} not writable: {redact(exc)}"
            return True, f"source {home.display} writable (probe written and deleted); target {away.display} lists"
        finally:
            home.close()
            away.close()

    def _seed_reverse_records(self, ctx: StageContext, book: RecordBook, home: Listing) -> dict[str, PathRecord]:
        """Reverse replication's first cycle: every plan-source file that is still exactly what forward sync
        copied is recorded as ours, with the forward record's size, MD5 and mtime. So a blob modified on the
        target after cutover is a change to copy back (the target wins), not a conflict."""
        seeded: dict[str, PathRecord] = {}
        for path, rec in RecordBook(ctx.journal, self.item.name).load().items():
            entry = home.entries.get(path)
            if rec.status != "done" or rec.md5 is None or rec.mtime_ns is None or entry is None or not entry.etag:
                continue
            if entry.size != rec.size or entry.mtime_ns != rec.mtime_ns:
                continue  # changed on the source since (it should have been frozen): left to classify
            book.done(path, rec.size, rec.md5, rec.mtime_ns, entry.etag)
            seeded[path] = PathRecord(path, "done", rec.size, rec.md5, rec.mtime_ns, entry.etag)
        book.flush()
        ctx.journal.event("reverse", f"reverse replication seeded with {len(seeded)} files from the forward records",
                          item=self.name)
        return seeded

    # -- the shared load/sync cycle --

    def _require_source(self) -> None:
        """A missing source must never look like an empty one (that would delete the whole target)."""
        found = self.source.probe()
        if not found.exists:
            raise EndpointError(f"{self.name}: source {found.detail}",
                                hint="check the source connection's path or container in the plan, and that "
                                     "a share is mounted")

    def copier(self, ctx: StageContext, book: RecordBook, description: str) -> BlobCopier:
        """The copier of one cycle or chunk, sized by the item's concurrency and its throttle."""
        throttle = ctx.throttle(self.item)
        small = throttle.workers(SMALL_FACTOR * self.item.concurrency)
        return BlobCopier(self.source, self.target, book, concurrency=throttle.workers(self.item.concurrency),
                          small_concurrency=small, max_workers=throttle.workers(self.item.concurrency + small),
                          block_size=self.item.block_size, progress=ctx.progress, description=description,
                          throttle=throttle)

    # -- as claimable tasks (`migrate worker`, see migrate.blobs.chunked) --

    def load_tasks(self, ctx: StageContext) -> list[tuple[str, str]]:
        return chunked.first_tasks(self, ctx)

    def load_task(self, ctx: StageContext, task: str, spec: str | None) -> int | Split:
        assert spec is not None, f"blob task {task} has no range"
        return chunked.run_task(self, ctx, spec, self.item.chunk_files)

    def load_finish(self, ctx: StageContext) -> StageResult:
        return chunked.finish(self, ctx)

    # -- verify as claimable tasks (`migrate worker --until verify`) --

    def verify_tasks(self, ctx: StageContext, loaded: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
        """A verification's parts: the load's copy chunks (path ranges tiling the whole path space, so a file
        made since falls in one of them too); one part for everything when no worker loaded the item."""
        return chunked.verify_tasks(loaded)

    def verify_task(self, ctx: StageContext, verification: str, task: str,
                    spec: str | None = None) -> Journaled:
        """Compare one part (its path range listed on both sides, by size and MD5): the paths checked, and the
        record of what it found under `verification`, journaled with the task's done-mark."""
        assert spec is not None, f"blob task {task} has no range"
        return chunked.verify_part(self, ctx, verification, task, spec)

    def verify_parts(self, ctx: StageContext, verification: str) -> VerifyResult:
        return parts.add_up(ctx.journal, self.name, verification)

    # -- a sync cycle as claimable tasks (`migrate worker --sync`) --

    def sync_tasks(self, ctx: StageContext, loaded: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
        """A cycle's parts: the load's copy chunks, else the root split; the guards and deletes wait for the
        closing task (`sync_parts`)."""
        return chunked.sync_tasks(loaded)

    def sync_task(self, ctx: StageContext, cycle: str, task: str,
                  spec: str | None = None) -> Journaled | Split:
        assert spec is not None, "a blob sync task has a range"
        return chunked.sync_part(self, ctx, cycle, spec)

    def sync_parts(self, ctx: StageContext, cycle: str, opened_ns: int) -> SyncResult:
        return chunked.sync_finish(self, ctx, cycle, opened_ns)

    def _cycle(self, ctx: StageContext, *, delete: bool, label: str) -> tuple[CycleTally, CopyOutcome, bool]:
        """List the target, then list the source page by page, each page's copies starting at once while
        the next page is listed; deletes wait for the end of the listing (only then is a path known to be
        gone from the source)."""
        started_ns = time.time_ns()
        self._require_source()
        created = self.target.ensure()
        book = RecordBook(ctx.journal, self.name, before_flush=self.target.durable)
        records = book.load()
        state: dict[str, Any] = ctx.journal.get(self.name, STATE_KEY) or {}
        target = filtered(self.target.listing(), self.keep)
        if self.reverse and not records:
            records = self._seed_reverse_records(ctx, book, target)
        stream = ChangeStream(target, records, delete=delete,
                              previous_inventory_ns=int(state.get("inventory_at_ns", 0)))
        copier = self.copier(ctx, book, f"{label} {self.name}")
        tally = CycleTally()
        refused: MassDeleteRefused | None = None
        listing_problems = 0
        copier.start()
        try:
            for page in self.source.listing_pages():
                page = filtered(page, self.keep)
                changes = stream.page(page)
                changes.problems += page.problems
                changes.warnings += page.warnings
                listing_problems += len(page.problems)
                resolve(changes, lambda e: self.source.hash(e.path), lambda e: self.target.hash(e.path),
                        self.item.concurrency)
                tally.add(changes)
                copier.submit(changes)
                if copier.stopped:
                    break
            rest = stream.finish() if not copier.stopped else ChangeSet()
            rest.deletes, held_back, refused = guarded_deletes(  # a refusal is raised once the copies are done
                f"blob set {self.name}", rest.deletes, source_files=stream.files,
                listing_problems=listing_problems, target_files=len(target.entries), allow=ctx.allow_mass_delete)
            rest.problems += held_back
            tally.add(rest)
            copier.submit(rest)
        except BaseException:
            copier.abort()
            raise
        outcome = copier.finish()
        if refused is not None:
            raise refused
        if not tally.problems and not outcome.problems and target.litter:
            self.target.clean_litter(target.litter)
        for path, why in tally.conflicts[:MAX_EVENTS]:
            ctx.journal.event("blob_conflict", f"{path}: {why}", item=self.name, outcome="refused")
        rate = outcome.bytes_copied / outcome.seconds if outcome.bytes_copied > 64 * 1024 * 1024 else 0
        ctx.journal.put(self.name, STATE_KEY, {
            "inventory_at_ns": started_ns, "files": stream.files, "bytes": stream.bytes,
            "target_files": len(target.entries), "bytes_per_second": round(rate) or state.get("bytes_per_second"),
        })
        return tally, outcome, created
