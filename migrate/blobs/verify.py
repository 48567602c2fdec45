"""Verification of a blob item: every path on both sides, by size and MD5.

- The target's MD5 is its Content-MD5 (set by us on every write); a folder keeps none, so its files are
  hashed. A blob without Content-MD5 is a difference: nothing proves its bytes.
- The source's MD5 is the one the journal recorded when the bytes were read for the copy, as long as the
  file still has the size and mtime it had then (a hash cache, as rclone's hasher); otherwise, or for a
  blob source, its Content-MD5 or its bytes.
- `deep` trusts no stored hash: it re-reads the bytes on both sides, and also reports a target whose bytes
  no longer match its own Content-MD5.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from migrate import interrupt
from migrate.blobs.filters import PathFilter
from migrate.blobs.inventory import filtered
from migrate.blobs.records import PathRecord
from migrate.blobs.store import BlobEntry, BlobStore, Listing, StoreFault
from migrate.errors import Difference
from migrate.stages.engine import Progress, VerifyResult


@dataclass
class BlobVerifier:
    """Compares a source and a target store for one item."""

    item: str
    source: BlobStore
    target: BlobStore
    keep: PathFilter
    records: dict[str, PathRecord]
    concurrency: int
    progress: Progress

    def run(self, deep: bool = False) -> VerifyResult:
        return self.compare(filtered(self.source.listing(), self.keep), filtered(self.target.listing(), self.keep),
                            deep)

    def compare(self, src: Listing, dst: Listing, deep: bool = False) -> VerifyResult:
        """Every difference between two listings (of the whole item, or of one path range of it)."""
        result = VerifyResult(self.item)
        for path in sorted(src.entries.keys() - dst.entries.keys()):
            result.differences.append(Difference(self.item, "missing_on_target", path,
                                                 f"{src.entries[path].size} bytes on the source"))
        for path in sorted(dst.entries.keys() - src.entries.keys()):
            result.differences.append(Difference(self.item, "missing_on_source", path,
                                                 f"{dst.entries[path].size} bytes on the target"))
        both = sorted(src.entries.keys() & dst.entries.keys())
        to_hash: list[tuple[BlobEntry, BlobEntry]] = []
        for path in both:
            s, t = src.entries[path], dst.entries[path]
            if s.size != t.size:
                result.differences.append(Difference(self.item, "different", path,
                                                     f"size: source {s.size} bytes, target {t.size} bytes"))
            else:
                to_hash.append((s, t))
        hashed = [0, 0]  # bytes read on the source, on the target
        lock = threading.Lock()
        bar = self.progress.task(f"verify {self.item}", total=None, unit="B")

        def check(pair: tuple[BlobEntry, BlobEntry]) -> Difference | None:
            interrupt.check()  # after Ctrl-C, queued files are not hashed
            s, t = pair
            try:
                ours = self._source_md5(s, deep)
                if ours is None:
                    ours = self.source.hash(s.path)
                    with lock:
                        hashed[0] += s.size
                        bar.advance(s.size)
                theirs = t.md5
                if deep or theirs is None and self.target.kind == "folder":
                    actual = self.target.hash(t.path)
                    with lock:
                        hashed[1] += t.size
                        bar.advance(t.size)
                    if theirs is not None and actual != theirs:
                        return Difference(self.item, "different", t.path,
                                          "target bytes do not match its own Content-MD5")
                    theirs = actual
            except StoreFault as exc:
                return Difference(self.item, "different", s.path, f"cannot read: {exc}")
            if theirs is None:
                return Difference(self.item, "different", t.path, "target has no Content-MD5")
            if theirs != ours:
                return Difference(self.item, "different", t.path,
                                  f"MD5: source {ours.hex()}, target {theirs.hex()}")
            return None

        try:
            with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="blob-verify") as pool:
                for difference in pool.map(check, to_hash):
                    if difference is not None:
                        result.differences.append(difference)
        finally:
            bar.close()
        result.checked = len(src.entries.keys() | dst.entries.keys())
        result.differences.sort(key=lambda d: (d.key, d.kind))
        result.metrics = {"files": len(src.entries), "bytes": src.bytes, "target_files": len(dst.entries),
                          "target_bytes": dst.bytes, "deep": deep, "source_bytes_read": hashed[0],
                          "target_bytes_read": hashed[1],
                          "source_problems": src.problems[:100]}
        return result

    def _source_md5(self, entry: BlobEntry, deep: bool) -> bytes | None:
        """The source MD5 without reading, when it can be trusted; None when the bytes must be read."""
        if deep:
            return None
        if entry.md5 is not None:
            return entry.md5
        record = self.records.get(entry.path)
        if record is not None and record.status == "done" and record.md5 is not None \
                and record.size == entry.size and record.mtime_ns == entry.mtime_ns:
            return record.md5
        return None
