"""What the journal remembers per path of a blob item: what we wrote there, and when.

One chunk per source path under stage `load` (sync updates the same rows):
- `done`: units = size, detail = {"md5": hex, "mtime": RFC 3339, "etag": target etag after our write};
- `failed`: detail = {"error": text, "since": ISO time the change has been waiting};
- `deleted`: the path is gone on both sides.
Writes are queued and committed in batches by a writer thread (every 500 rows or second, and at the
end), after the target store has made them durable (`BlobStore.durable`): a path is
recorded only after its bytes are committed on the target, and a row lost to `kill -9` costs nothing but
a re-check (the next run finds the blob, compares its MD5 and adopts it without copying).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from migrate.blobs.store import format_mtime, parse_mtime
from migrate.redact import redact
from migrate.state.journal import Journal

STAGE = "load"
FLUSH_ROWS = 500
FLUSH_SECONDS = 1.0
MAX_QUEUED = 20_000


@dataclass(frozen=True)
class PathRecord:
    """The journal's memory of one path."""

    path: str
    status: str  # done | failed | deleted
    size: int
    md5: bytes | None = None
    mtime_ns: int | None = None
    etag: str | None = None
    since_ns: int | None = None  # failed: since when the change has been waiting
    error: str = ""

    def owns(self, etag: str | None) -> bool:
        """The target object is exactly what we last wrote there."""
        return self.status == "done" and self.etag is not None and self.etag == etag


def _ns_from_iso(text: Any) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.fromisoformat(str(text)).timestamp() * 1_000_000_000)
    except ValueError:
        return None


class RecordBook:
    """Reads and (in batches, thread-safely) writes the per-path records of one item."""

    def __init__(self, journal: Journal, item: str, before_flush: Callable[[], None] | None = None) -> None:
        self.journal = journal
        self.item = item
        self.before_flush = before_flush  # makes the recorded writes durable first (group commit)
        self._pending: list[tuple[str, str, int, dict[str, Any] | None]] = []
        self._cond = threading.Condition()
        self._io = threading.Lock()  # one journal write at a time
        self._writer: threading.Thread | None = None
        self._closing = False
        self._error: BaseException | None = None

    def load(self, lo: str | None = None, hi: str | None = None) -> dict[str, PathRecord]:
        """Every path's record, or those of the paths in [lo, hi) (a worker's chunk)."""
        out: dict[str, PathRecord] = {}
        for path, (status, units, detail) in self.journal.chunks(self.item, STAGE, lo, hi).items():
            md5_hex = detail.get("md5")
            out[path] = PathRecord(
                path=path, status=status, size=int(units or 0),
                md5=bytes.fromhex(md5_hex) if md5_hex else None,
                mtime_ns=parse_mtime(detail["mtime"]) if detail.get("mtime") else None,
                etag=detail.get("etag"), since_ns=_ns_from_iso(detail.get("since")),
                error=str(detail.get("error", "")),
            )
        return out

    def done(self, path: str, size: int, md5: bytes, mtime_ns: int, etag: str) -> None:
        self._add(path, "done", size, {"md5": md5.hex(), "mtime": format_mtime(mtime_ns), "etag": etag})

    def failed(self, path: str, error: str, since_ns: int) -> None:
        since = datetime.fromtimestamp(since_ns / 1e9, UTC).isoformat()
        self._add(path, "failed", 0, {"error": redact(error)[:500], "since": since})

    def deleted(self, path: str) -> None:
        self._add(path, "deleted", 0, None)

    def _add(self, path: str, status: str, size: int, detail: dict[str, Any] | None) -> None:
        """Queue a row; a writer thread commits queued rows in batches, so copies never wait on the journal
        (unless it falls MAX_QUEUED rows behind)."""
        with self._cond:
            if self._error is not None:
                raise self._error
            while len(self._pending) >= MAX_QUEUED and self._error is None:
                self._cond.wait(0.5)
            self._pending.append((path, status, size, detail))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="blob-journal", daemon=True)
                self._writer.start()
            if len(self._pending) >= FLUSH_ROWS:
                self._cond.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                if not self._closing and len(self._pending) < FLUSH_ROWS:
                    self._cond.wait(FLUSH_SECONDS)
                if self._closing and not self._pending:
                    return
            try:
                self._write_batch()
            except BaseException as exc:  # noqa: BLE001 - handed to the next caller
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return

    def _write_batch(self) -> None:
        with self._io:
            with self._cond:
                batch, self._pending = self._pending, []
                self._cond.notify_all()
            if batch:
                if self.before_flush is not None:
                    self.before_flush()
                self.journal.mark_chunks(self.item, STAGE, batch)

    def flush(self) -> None:
        """Commit everything queued so far; also stops the writer thread (a later row restarts it)."""
        with self._cond:
            writer, self._writer = self._writer, None
            self._closing = writer is not None
            self._cond.notify_all()
        if writer is not None:
            writer.join()
        with self._cond:
            self._closing = False
            error, self._error = self._error, None
        if error is not None:
            raise error
        self._write_batch()
