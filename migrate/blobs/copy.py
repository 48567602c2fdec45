"""Carry out ChangeSets, page after page as the listing yields them: parallel, streaming copies with
bounded memory, journaled per path.

- Work starts with the first page (`start`, then `submit` per page, then `finish`): copying overlaps the
  rest of the listing. At most MAX_BACKLOG jobs wait at any time; the listing waits beyond that.
- Three pools: objects above `block_size` go `concurrency` at once, their blocks to a second pool of the
  same size (so four big files still keep every connection busy); whole small objects, touches and
  deletes go to a third pool SMALL_FACTOR times wider, sized for many tiny requests that each spend more
  time waiting for an answer than moving bytes. A big file never waits behind thousands of small ones.
  `max_workers` (the throttle's `max_connections`) caps the objects in flight over both pools.
- Memory is bounded by two byte budgets that every read takes from before it reads and gives back once its
  bytes are on the target: blocks of large objects (at most `concurrency` blocks, never more than
  BUDGET_CAP bytes) and whole small objects (never more than SMALL_BUDGET_CAP bytes), so blocks in flight
  never hold the small files up.
- One read pass per object computes both the Content-MD5 of the whole and the MD5 of each block (sent so
  the service checks it, and part of the block id). A resumed upload re-reads the source but sends only
  the blocks the target does not already hold.
- A source that changes while read is retried (SOURCE_ATTEMPTS times); one that stays unreadable, a
  conflict on the target, or a name the service refuses is a problem of that path only. An endpoint
  failure (authorisation, container gone, retries exhausted) stops the copy; what was finished is
  already journaled, so a rerun resumes.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from migrate.blobs.inventory import ChangeSet, Transfer
from migrate.blobs.records import RecordBook
from migrate.blobs.retry import EndpointError, ObjectRejected
from migrate.blobs.store import (
    BlobProps,
    BlobStore,
    Precondition,
    SourceChanged,
    SourceReader,
    SourceUnreadable,
    SourceVanished,
    StoreFault,
    TargetChanged,
    block_id,
    content_type_for,
)
from migrate.stages.engine import Progress, ProgressTask

SOURCE_ATTEMPTS = 3
BUDGET_CAP = 96 * 1024 * 1024  # blocks of large objects in flight
SMALL_BUDGET_CAP = 32 * 1024 * 1024  # whole small objects in flight
SMALL_FACTOR = 2  # the pool for whole small objects is this many times `concurrency` wide
MAX_BACKLOG = 10_000  # jobs queued ahead of the copy while the listing goes on


class ByteBudget:
    """A counting semaphore over bytes held in memory by reads not yet written."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._available = limit
        self._cond = threading.Condition()

    def take(self, n: int) -> int:
        n = min(n, self.limit)
        with self._cond:
            while self._available < n:
                self._cond.wait()
            self._available -= n
        return n

    def give(self, n: int) -> None:
        with self._cond:
            self._available += n
            self._cond.notify_all()


@dataclass
class CopyOutcome:
    """What a copy run did."""

    copied: int = 0
    created: int = 0
    updated: int = 0
    bytes_copied: int = 0
    blocks_reused: int = 0
    bytes_reused: int = 0
    server_copies: int = 0
    touched: int = 0
    adopted: int = 0
    deleted: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # path -> since_ns, for lag
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def metrics(self) -> dict[str, Any]:
        rate = self.bytes_copied / self.seconds if self.seconds > 0 else 0.0
        return {"files_copied": self.copied, "bytes_copied": self.bytes_copied, "blocks_reused": self.blocks_reused,
                "bytes_reused": self.bytes_reused, "server_copies": self.server_copies, "touched": self.touched,
                "adopted": self.adopted, "deleted": self.deleted, "failed": len(self.failed),
                "seconds": round(self.seconds, 3), "bytes_per_second": round(rate)}


class _Stop(Exception):
    """Another worker hit an endpoint failure: stop taking new work."""


class BlobCopier:
    """Copies, touches, adopts and deletes, recording each path in the journal once it is durable."""

    def __init__(self, source: BlobStore, target: BlobStore, book: RecordBook, *, concurrency: int,
                 block_size: int, progress: Progress, description: str, throttle: Any = None,
                 small_concurrency: int | None = None, max_workers: int | None = None) -> None:
        self.source = source
        self.throttle = throttle  # the item's limiter: bytes written count against bytes_per_second
        self.target = target
        self.book = book
        self.concurrency = concurrency
        self.block_size = block_size
        self.progress = progress
        self.description = description
        self.budget = ByteBudget(max(block_size, min(concurrency * block_size, BUDGET_CAP)))
        self.small_concurrency = small_concurrency or concurrency
        # whole small objects have their own budget: blocks of big files in flight never starve them
        self.small_budget = ByteBudget(max(block_size, min(self.small_concurrency * block_size, SMALL_BUDGET_CAP)))
        self.outcome = CopyOutcome()
        self._lock = threading.Lock()
        self._fatal: BaseException | None = None
        self._bar: ProgressTask | None = None
        self._large: ThreadPoolExecutor | None = None
        self._blocks: ThreadPoolExecutor | None = None
        self._small: ThreadPoolExecutor | None = None
        # at most `max_workers` objects in flight over both pools (the throttle's max_connections)
        self._slots = threading.BoundedSemaphore(max_workers or concurrency + self.small_concurrency)
        self._backlog = threading.BoundedSemaphore(MAX_BACKLOG)
        self._started = time.monotonic()

    # -- bookkeeping --

    def _advance(self, n: int, files: int = 0) -> None:
        if self._bar is not None and (n or files):
            with self._lock:
                self._bar.advance(n, items=files)
        if self.throttle is not None and n:
            self.throttle.bytes(n)  # outside the lock: a waiting worker holds nobody else up

    def _problem(self, path: str, text: str, since_ns: int | None = None) -> None:
        with self._lock:
            self.outcome.problems.append(f"{path}: {text}")
            if since_ns is not None:
                self.outcome.failed[path] = since_ns
        if since_ns is not None:
            self.book.failed(path, text, since_ns)

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for key, value in deltas.items():
                setattr(self.outcome, key, getattr(self.outcome, key) + value)

    # -- the run: start, submit page after page, finish --

    def start(self) -> None:
        """Open the pools and the progress bar; then `submit` pages of work as the listing yields them."""
        self._started = time.monotonic()
        self._bar = self.progress.task(self.description, total=None, unit="B", items_total=0)
        self._large = ThreadPoolExecutor(self.concurrency, thread_name_prefix="blob-copy")
        self._blocks = ThreadPoolExecutor(self.concurrency, thread_name_prefix="blob-block")
        self._small = ThreadPoolExecutor(self.small_concurrency, thread_name_prefix="blob-small")

    @property
    def stopped(self) -> bool:
        """An endpoint failure (or Ctrl-C in a worker) ended the copy: listing further is pointless."""
        return self._fatal is not None

    def submit(self, changes: ChangeSet) -> None:
        """Queue one page of decisions. Blocks while MAX_BACKLOG jobs wait (the listing never runs far ahead
        of the copy, so memory stays bounded however many files the source holds)."""
        if self._fatal is not None:
            return
        for src, dst, digest in changes.adoptions:
            self.book.done(src.path, src.size, digest, src.mtime_ns, dst.etag or "")
            self._count(adopted=1)
        for path in changes.forget:
            self.book.deleted(path)
        with self._lock:
            self.outcome.problems += [f"{path}: {why}" for path, why in changes.conflicts]
        if self._bar is not None and changes.transfers:
            self._bar.extend(changes.bytes_to_copy, items=len(changes.transfers), listing=True)
        for transfer in changes.transfers:
            small = transfer.entry.size <= self.block_size
            self._queue(self._small if small else self._large, partial(self._transfer, transfer))
        for src, etag, digest in changes.touches:
            self._queue(self._small, partial(self._touch, src, etag, digest))
        for path, when, since_ns in changes.deletes:
            self._queue(self._small, partial(self._delete, path, when, since_ns))

    def _queue(self, pool: ThreadPoolExecutor | None, job: Callable[[], None]) -> None:
        assert pool is not None
        while not self._backlog.acquire(timeout=0.2):
            if self._fatal is not None:
                return
        try:
            future = pool.submit(self._guarded, job)
        except BaseException:
            self._backlog.release()
            raise
        future.add_done_callback(self._job_done)

    def _job_done(self, future: Future[None]) -> None:
        self._backlog.release()
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            with self._lock:
                self._fatal = self._fatal or exc

    def finish(self) -> CopyOutcome:
        """The listing is complete: wait for every queued job, flush the journal, raise a fatal error."""
        try:
            if self._bar is not None:
                self._bar.extend(0, listing=False)
            for pool in (self._small, self._large, self._blocks):
                if pool is not None:
                    pool.shutdown(wait=True)
        except BaseException:
            self.abort()
            raise
        finally:
            self._close()
        if self._fatal is not None and not isinstance(self._fatal, _Stop):
            raise self._fatal
        return self.outcome

    def abort(self) -> None:
        """Stop taking work (an error or Ctrl-C in the listing): queued jobs are dropped, running ones end."""
        self._fatal = self._fatal or _Stop()
        try:
            for pool in (self._small, self._large, self._blocks):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
        finally:
            self._close()

    def _close(self) -> None:
        try:
            self.book.flush()
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self.outcome.seconds = time.monotonic() - self._started

    def _guarded(self, job: Callable[[], None]) -> None:
        if self._fatal is not None:
            return
        with self._slots:
            try:
                job()
            except _Stop:
                return
            except EndpointError as exc:
                with self._lock:
                    self._fatal = self._fatal or exc
            except OSError as exc:  # the source side is wrapped by its store: this is the target failing
                with self._lock:
                    self._fatal = self._fatal or EndpointError(
                        f"cannot write to {self.target.display}: {exc.strerror or exc}",
                        hint="check free space and permissions on the target")

    # -- one path --

    def _transfer(self, transfer: Transfer) -> None:
        path = transfer.entry.path
        if self.throttle is not None:
            self.throttle.hold()  # paused (`migrate throttle --pause`): no new file starts
        last = ""
        for attempt in range(SOURCE_ATTEMPTS):
            try:
                etag, digest, size, mtime_ns = self._copy_once(transfer)
            except SourceChanged as exc:
                last = str(exc)
                time.sleep(0.05 * (attempt + 1))
                continue
            except SourceVanished:
                with self._lock:
                    self.outcome.warnings.append(f"{path}: vanished from the source before it was copied")
                return
            except SourceUnreadable as exc:
                self._problem(path, f"cannot read the source: {exc}", transfer.since_ns)
                return
            except TargetChanged:
                self._problem(path, "changed on the target by someone else while we copied; not overwritten",
                              transfer.since_ns)
                return
            except ObjectRejected as exc:
                self._problem(path, str(exc), transfer.since_ns)
                return
            self.book.done(path, size, digest, mtime_ns, etag)
            self._count(copied=1, bytes_copied=size, **{"created" if transfer.reason != "changed" else "updated": 1})
            self._advance(0, files=1)
            return
        self._problem(path, f"{last} on {SOURCE_ATTEMPTS} attempts; the next sync copies it", transfer.since_ns)

    def _copy_once(self, transfer: Transfer) -> tuple[str, bytes, int, int]:
        """Copy one object; return (etag, md5, size, mtime_ns) as written."""
        entry = transfer.entry
        if self._fatal is not None:
            raise _Stop()
        server = self.target.server_copy(self.source, entry.path, entry.path, entry, transfer.when)
        if server is not None:
            self._count(server_copies=1)
            self._advance(entry.size)
            return server[0], server[1], entry.size, entry.mtime_ns
        with self.source.open_read(entry.path, entry) as reader:
            if reader.size <= self.block_size:
                return self._copy_whole(transfer, reader)
            return self._copy_blocks(transfer, reader)

    def _props(self, path: str, reader: SourceReader, md5: bytes) -> BlobProps:
        return BlobProps(size=reader.size, md5=md5, mtime_ns=reader.mtime_ns, content_type=content_type_for(path))

    def _copy_whole(self, transfer: Transfer, reader: SourceReader) -> tuple[str, bytes, int, int]:
        path = transfer.entry.path
        held = self.small_budget.take(max(reader.size, 1))
        try:
            data = reader.read(reader.size + 1)  # +1 notices growth; check_unchanged confirms
            reader.check_unchanged()
            props = self._props(path, reader, hashlib.md5(data).digest())
            etag = self._write_checked(path, props, transfer.when,
                                       lambda: self.target.put(path, data, props, transfer.when))
        finally:
            self.small_budget.give(held)
        self._advance(props.size)
        return etag, props.md5, props.size, props.mtime_ns

    def _copy_blocks(self, transfer: Transfer, reader: SourceReader) -> tuple[str, bytes, int, int]:
        """Read once, in order, feeding the whole-object MD5; each block's own MD5 (its id, and the check
        the service makes on arrival) is computed by the block worker, in parallel with the next reads."""
        path = transfer.entry.path
        writer = self.target.block_writer(path, self.block_size)
        staged = writer.staged()
        whole = hashlib.md5()
        blocks: list[Future[str]] = []
        try:
            index = 0
            while True:
                if self._fatal is not None:
                    raise _Stop()
                held = self.budget.take(self.block_size)
                try:
                    data = reader.read(self.block_size)
                except BaseException:
                    self.budget.give(held)
                    raise
                if not data:
                    self.budget.give(held)
                    break
                whole.update(data)
                assert self._blocks is not None
                blocks.append(self._blocks.submit(self._block, writer, staged, index, data, held))
                index += 1
                for future in [f for f in blocks[-self.concurrency:] if f.done()]:
                    future.result()  # surface a failed block early
        finally:
            wait(blocks)
            writer.discard()
        ids = [future.result() for future in blocks]
        reader.check_unchanged()
        props = self._props(path, reader, whole.digest())
        etag = self._write_checked(path, props, transfer.when, lambda: writer.commit(ids, props, transfer.when))
        return etag, props.md5, props.size, props.mtime_ns

    def _block(self, writer: Any, staged: dict[str, int], index: int, data: bytes, held: int) -> str:
        """Stage one block unless the target already holds it; return its id."""
        try:
            digest = hashlib.md5(data).digest()
            bid = block_id(index, digest)
            if staged.get(bid) == len(data):
                self._count(blocks_reused=1, bytes_reused=len(data))
            else:
                writer.stage(index, bid, data, digest)
        finally:
            self.budget.give(held)
        self._advance(len(data))
        return bid

    def _write_checked(self, path: str, props: BlobProps, when: Precondition, write: Callable[[], str]) -> str:
        """Write; if refused because the target already holds exactly these bytes (our own earlier
        attempt whose answer was lost), take that as success."""
        try:
            return write()
        except TargetChanged:
            current = self.target.stat(path)
            if current is not None and current.size == props.size:
                theirs = current.md5 or self.target.hash(path)
                if theirs == props.md5:
                    return current.etag or ""
            raise

    def _touch(self, src: Any, etag: str, digest: bytes) -> None:
        try:
            new_etag = self.target.set_mtime(src.path, src.mtime_ns, Precondition.matching(etag))
        except TargetChanged:
            self._problem(src.path, "changed on the target by someone else; not overwritten", src.mtime_ns)
            return
        except (ObjectRejected, StoreFault) as exc:
            self._problem(src.path, str(exc), src.mtime_ns)
            return
        self.book.done(src.path, src.size, digest, src.mtime_ns, new_etag)
        self._count(touched=1)

    def _delete(self, path: str, when: Precondition, since_ns: int) -> None:
        try:
            self.target.delete(path, when)
        except TargetChanged:
            if self.target.stat(path) is not None:  # absent: our earlier attempt did it, its answer was lost
                self._problem(path, "changed on the target by someone else; not deleted", since_ns)
                return
        except ObjectRejected as exc:
            self._problem(path, str(exc), since_ns)
            return
        self.book.deleted(path)
        self._count(deleted=1)
