"""Compare the source, the target and the journal, and decide what a load or sync must do per path.

For each source path (after include/exclude), with the target object `t` and our record `r`:
- no `t`: copy, on condition the target is still absent;
- `t` is what we last wrote (`r.etag == t.etag`): unchanged when size and mtime match the record; a
  different size is a change; the same size with another mtime is confirmed by hash (equal MD5: only the
  mtime is updated on the target; different: copy, on condition the target still has `t.etag`);
- `t` is not what we last wrote (no record: a killed run, or a blob someone else put there): when its size
  and MD5 equal the source's it is adopted as ours without copying; when we hold no record of it and it
  carries the source's exact mtime, it is our own write cut short and is rewritten; otherwise it is a
  conflict, reported and never overwritten.
Target paths with no source are deleted (sync with `delete: true`) only when they are still what we wrote.

The change time of each pending path (for lag) is its mtime, but never before the previous inventory
(a file that appeared since then with an old mtime has been waiting only since then).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from migrate import interrupt
from migrate.blobs.filters import PathFilter
from migrate.blobs.records import PathRecord
from migrate.blobs.store import BlobEntry, Listing, Precondition, SourceUnreadable, SourceVanished, StoreFault


@dataclass(frozen=True)
class Transfer:
    """One source object to copy onto the target."""

    entry: BlobEntry
    when: Precondition
    reason: str  # new | changed | recreate
    since_ns: int


@dataclass(frozen=True)
class Suspect:
    """A path whose fate depends on MD5s: `mtime` (ours, same size, new mtime) or `foreign` (not ours)."""

    kind: str
    entry: BlobEntry
    target: BlobEntry
    record: PathRecord | None
    since_ns: int


@dataclass
class ChangeSet:
    """Everything a load or sync cycle will do."""

    transfers: list[Transfer] = field(default_factory=list)
    touches: list[tuple[BlobEntry, str, bytes]] = field(default_factory=list)  # (source, target etag, md5)
    adoptions: list[tuple[BlobEntry, BlobEntry, bytes]] = field(default_factory=list)  # (source, target, md5)
    deletes: list[tuple[str, Precondition, int]] = field(default_factory=list)  # (path, condition, since)
    forget: list[str] = field(default_factory=list)  # records of paths gone on both sides
    conflicts: list[tuple[str, str]] = field(default_factory=list)  # (path, why)
    suspects: list[Suspect] = field(default_factory=list)
    kept_extra: list[str] = field(default_factory=list)  # on the target only, not ours or delete is off
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def bytes_to_copy(self) -> int:
        return sum(t.entry.size for t in self.transfers)

    def pending_since(self) -> list[int]:
        """Change times of everything not yet on the target (conflicts excluded: they wait for a person)."""
        return [t.since_ns for t in self.transfers] + [d[2] for d in self.deletes] + \
            [s.since_ns for s in self.suspects if s.kind == "mtime"]


@dataclass
class CycleTally:
    """What a streamed load or sync cycle decided, in counts and messages: the decisions themselves went to
    the copier page by page and were let go."""

    unchanged: int = 0
    pending: int = 0  # paths not yet on the target when the cycle began (transfers, deletes, new mtimes)
    oldest_pending_ns: int | None = None
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, changes: ChangeSet) -> None:
        self.unchanged += changes.unchanged
        since = changes.pending_since()
        if since:
            self.pending += len(since)
            oldest = min(since)
            self.oldest_pending_ns = oldest if self.oldest_pending_ns is None else min(oldest, self.oldest_pending_ns)
        self.conflicts += changes.conflicts
        self.problems += changes.problems
        self.warnings += changes.warnings


def filtered(listing: Listing, keep: PathFilter) -> Listing:
    if not keep.active:
        return listing
    return Listing({p: e for p, e in listing.entries.items() if keep(p)}, listing.problems, listing.warnings,
                   listing.litter)


def classify(source: Listing, target: Listing, records: dict[str, PathRecord], *, delete: bool,
             previous_inventory_ns: int = 0) -> ChangeSet:
    """Decide per path what to do, leaving the hash-dependent cases in `suspects` (see `resolve`)."""
    stream = ChangeStream(target, records, delete=delete, previous_inventory_ns=previous_inventory_ns)
    changes = stream.page(source)
    rest = stream.finish()
    changes.deletes, changes.forget, changes.kept_extra = rest.deletes, rest.forget, rest.kept_extra
    changes.warnings += rest.warnings
    return changes


class ChangeStream:
    """`classify` fed the source listing page by page, so copying starts while the source is still listed.

    The target listing and the records are whole (each source path is decided against them); what the
    target holds beyond the source (deletes, records to forget) is known only when `finish` is called,
    after the last page. Source entries are not kept: a page's decisions go to the copier and are let go.
    """

    def __init__(self, target: Listing, records: dict[str, PathRecord], *, delete: bool,
                 previous_inventory_ns: int = 0) -> None:
        self.target = target
        self.records = records
        self.delete = delete
        self.previous_inventory_ns = previous_inventory_ns
        self.unseen_target = set(target.entries)
        self.unseen_records = set(records)
        self.files = 0  # source entries decided so far
        self.bytes = 0

    def _since(self, entry_mtime: int, record: PathRecord | None) -> int:
        if record is not None and record.status == "failed" and record.since_ns:
            return record.since_ns
        return max(entry_mtime, self.previous_inventory_ns)

    def page(self, source: Listing) -> ChangeSet:
        """The decisions for one page of source entries."""
        changes = ChangeSet()
        since = self._since
        for path, src in source.entries.items():
            self.files += 1
            self.bytes += src.size
            self.unseen_target.discard(path)
            self.unseen_records.discard(path)
            dst = self.target.entries.get(path)
            rec = self.records.get(path)
            if dst is None:
                reason = "recreate" if rec is not None and rec.status == "done" else "new"
                if reason == "recreate":
                    changes.warnings.append(f"{path}: deleted on the target behind our back; copying it again")
                changes.transfers.append(Transfer(src, Precondition.absent(), reason, since(src.mtime_ns, rec)))
            elif rec is not None and rec.owns(dst.etag):
                if src.size != rec.size or (src.md5 is not None and rec.md5 is not None and src.md5 != rec.md5):
                    changes.transfers.append(Transfer(src, Precondition.matching(dst.etag or ""), "changed",
                                                      since(src.mtime_ns, rec)))
                elif src.mtime_ns == rec.mtime_ns:
                    changes.unchanged += 1
                elif src.md5 is not None:  # the store knows the MD5 (a blob source): no read needed
                    changes.touches.append((src, dst.etag or "", src.md5))
                else:
                    changes.suspects.append(Suspect("mtime", src, dst, rec, since(src.mtime_ns, rec)))
            elif dst.size != src.size:
                if _interrupted_write(src, dst, rec):
                    changes.transfers.append(Transfer(src, Precondition.matching(dst.etag or ""), "changed",
                                                      since(src.mtime_ns, rec)))
                else:
                    changes.conflicts.append((path, _conflict_reason(rec, dst)))
            else:
                changes.suspects.append(Suspect("foreign", src, dst, rec, since(src.mtime_ns, rec)))
        return changes

    def finish(self) -> ChangeSet:
        """After the last page: target paths with no source (deleted when ours and `delete`), and records of
        paths gone on both sides."""
        changes = ChangeSet()
        for path in sorted(self.unseen_target):
            dst = self.target.entries[path]
            rec = self.records.get(path)
            if self.delete and rec is not None and rec.owns(dst.etag):
                changes.deletes.append((path, Precondition.matching(dst.etag or ""), self.previous_inventory_ns))
            else:
                changes.kept_extra.append(path)
                if self.delete:
                    changes.warnings.append(f"{path}: on the target only and not written by this migration "
                                            "(or changed since); left in place")
        for path in sorted(self.unseen_records):
            if self.records[path].status != "deleted" and path not in self.target.entries:
                changes.forget.append(path)
        return changes


def _interrupted_write(src: BlobEntry, dst: BlobEntry, rec: PathRecord | None) -> bool:
    """A target object we hold no record of, stamped with the source's exact mtime, is our own write cut
    short before the journal saw it (a power cut on a folder target): it is rewritten, not a conflict."""
    return (rec is None or rec.status != "done") and dst.mtime_ns == src.mtime_ns


def _conflict_reason(rec: PathRecord | None, dst: BlobEntry) -> str:
    if rec is None or rec.status != "done":
        return "exists on the target with other content and was not written by this migration; not overwritten"
    return "changed on the target by someone else since this migration wrote it; not overwritten"


def resolve(changes: ChangeSet, source_md5: Callable[[BlobEntry], bytes],
            target_md5: Callable[[BlobEntry], bytes], concurrency: int) -> None:
    """Hash what `classify` could not decide and move each suspect to its list."""
    if not changes.suspects:
        return

    def decide(suspect: Suspect) -> None:
        interrupt.check()  # after Ctrl-C, queued files are not hashed
        src, dst, rec = suspect.entry, suspect.target, suspect.record
        try:
            digest = src.md5 or source_md5(src)
            if suspect.kind == "mtime":
                if rec is not None and digest == rec.md5:
                    changes.touches.append((src, dst.etag or "", digest))
                else:
                    changes.transfers.append(Transfer(src, Precondition.matching(dst.etag or ""), "changed",
                                                      suspect.since_ns))
                return
            theirs = dst.md5 or target_md5(dst)
            if theirs == digest:
                changes.adoptions.append((src, dst, digest))
            elif _interrupted_write(src, dst, rec):
                changes.transfers.append(Transfer(src, Precondition.matching(dst.etag or ""), "changed",
                                                  suspect.since_ns))
            else:
                changes.conflicts.append((src.path, _conflict_reason(rec, dst)))
        except SourceVanished:
            changes.warnings.append(f"{src.path}: vanished before it could be compared")
        except (SourceUnreadable, StoreFault) as exc:
            changes.problems.append(f"{src.path}: cannot read: {exc}")

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="blob-hash") as pool:
        list(pool.map(decide, changes.suspects))
    changes.suspects = []
