"""The small interface every blob store implements (a local folder, an Azure Blob container), and the
value types that cross it.

Paths are relative to the store's root (a folder, or a container plus an optional prefix), always with
`/` separators. Modification times are integer nanoseconds since the epoch; in blob metadata they are kept
as rclone does (`mtime`, RFC 3339 with nanoseconds, UTC) so rclone and this tool read each other's blobs.
"""

from __future__ import annotations

import base64
import mimetypes
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar, Literal

EMPTY_MD5 = bytes.fromhex("d41d8cd98f00b204e9800998ecf8427e")


class StoreFault(Exception):
    """Base of the per-object outcomes a copy handles itself (never shown raw to the user)."""


class TargetChanged(StoreFault):
    """A conditional write or delete was refused: the target is not as we last saw it."""


class SourceChanged(StoreFault):
    """The source object changed (size, mtime or version) while it was being read."""


class SourceVanished(StoreFault):
    """The source object disappeared between the listing and the read."""


class SourceUnreadable(StoreFault):
    """The source object exists but cannot be read (permissions, I/O error)."""


@dataclass(frozen=True)
class BlobEntry:
    """One object as a listing saw it."""

    path: str
    size: int
    mtime_ns: int
    etag: str | None = None  # version tag used for conditional writes
    md5: bytes | None = None  # Content-MD5 when the store keeps one; None when it must be computed


@dataclass
class Listing:
    """Everything under a store's root that passed its own checks, plus what it could not list."""

    entries: dict[str, BlobEntry] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # unreadable folders, broken links, bad names
    warnings: list[str] = field(default_factory=list)  # skipped on purpose (symlinked folders, devices)
    litter: list[str] = field(default_factory=list)  # our own leftovers (partial uploads), not listed

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries.values())

    def absorb(self, page: Listing) -> None:
        """Add one page of a listing to this one."""
        self.entries.update(page.entries)
        self.problems += page.problems
        self.warnings += page.warnings
        self.litter += page.litter


@dataclass
class Level:
    """One level of a folder (`BlobStore.list_level`): its files, and its subfolders ("a/b/")."""

    files: Listing
    folders: list[str]


@dataclass(frozen=True)
class Precondition:
    """When a write or delete may go ahead: the target is absent, still has `etag`, or always."""

    kind: Literal["absent", "etag", "any"]
    etag: str | None = None

    @classmethod
    def absent(cls) -> Precondition:
        return cls("absent")

    @classmethod
    def matching(cls, etag: str) -> Precondition:
        return cls("etag", etag)

    @classmethod
    def always(cls) -> Precondition:
        return cls("any")


@dataclass(frozen=True)
class BlobProps:
    """What we set on every object we write."""

    size: int
    md5: bytes
    mtime_ns: int
    content_type: str


@dataclass(frozen=True)
class StoreState:
    """What a read-only probe found at the store's root."""

    exists: bool
    detail: str  # shown in preflight and the dry run


class SourceReader(ABC):
    """Sequential reader of one source object that can tell whether the object changed meanwhile."""

    size: int  # size when opened
    mtime_ns: int  # modification time when opened

    @abstractmethod
    def read(self, n: int) -> bytes:
        """Up to `n` bytes; b"" at the end."""

    @abstractmethod
    def check_unchanged(self) -> None:
        """Raise SourceChanged when the object is not the one that was opened."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the handle."""

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockWriter(ABC):
    """Uploads one large object as numbered blocks and commits them; staged blocks survive a crash."""

    @abstractmethod
    def staged(self) -> dict[str, int]:
        """Block ids already staged but not committed, with their sizes."""

    @abstractmethod
    def stage(self, index: int, block_id: str, data: bytes, md5: bytes) -> None:
        """Store one block (`md5` lets the service check it on arrival)."""

    @abstractmethod
    def commit(self, block_ids: list[str], props: BlobProps, when: Precondition) -> str:
        """Make the object the concatenation of `block_ids`; return its new etag."""

    def discard(self) -> None:  # noqa: B027 - optional hook
        """Drop staged blocks that will not be committed."""


class BlobStore(ABC):
    """A place holding objects by path: list, read, write (whole or by blocks), delete, hash."""

    kind: ClassVar[str]
    display: str  # where it is, safe to show (no secret)

    @abstractmethod
    def probe(self) -> StoreState:
        """Read-only: does the root (folder, container) exist and can we reach it."""

    def identity(self) -> str:
        """Where the store is, whatever the spelling (preflight refuses a source and target alike)."""
        return self.display

    @abstractmethod
    def ensure(self) -> bool:
        """Create the root when missing; True when it was created."""

    def listing(self) -> Listing:
        """Every object under the root."""
        whole = Listing()
        for page in self.listing_pages():
            whole.absorb(page)
        return whole

    @abstractmethod
    def listing_pages(self) -> Iterator[Listing]:
        """Every object under the root, a page at a time as the listing proceeds (a load starts copying
        the first page while the next is listed). Each page holds its own entries and problems."""

    def list_level(self, folder: str) -> Level:
        """One level under `folder` ("" for the root, else ending in "/"): its files, and its subfolders as
        full paths ending in "/". A folder that does not exist is an empty level. This default reads the whole
        listing; the stores list one level (a folder's entries, a delimited blob listing)."""
        level = Level(Listing(), [])
        seen: set[str] = set()
        for page in self.listing_pages():
            level.files.problems += page.problems
            level.files.warnings += page.warnings
            for path, entry in page.entries.items():
                if not path.startswith(folder):
                    continue
                head, slash, _ = path[len(folder):].partition("/")
                if not slash:
                    level.files.entries[path] = entry
                elif folder + head + "/" not in seen:
                    seen.add(folder + head + "/")
                    level.folders.append(folder + head + "/")
        return level

    @abstractmethod
    def stat(self, path: str) -> BlobEntry | None:
        """One object's entry, or None when absent."""

    @abstractmethod
    def open_read(self, path: str, expected: BlobEntry | None = None) -> SourceReader:
        """Open for sequential reading (raises SourceVanished / SourceUnreadable)."""

    @abstractmethod
    def put(self, path: str, data: bytes, props: BlobProps, when: Precondition) -> str:
        """Write a whole object in one request; return its etag (raises TargetChanged)."""

    @abstractmethod
    def block_writer(self, path: str, block_size: int) -> BlockWriter:
        """A writer for an object too large for one request."""

    @abstractmethod
    def delete(self, path: str, when: Precondition) -> None:
        """Delete one object (absent already is fine; raises TargetChanged)."""

    @abstractmethod
    def set_mtime(self, path: str, mtime_ns: int, when: Precondition) -> str:
        """Record a new modification time without rewriting the bytes; return the new etag."""

    @abstractmethod
    def hash(self, path: str) -> bytes:
        """MD5 of the object's bytes, read in full."""

    def server_copy(self, source: BlobStore, src_path: str, dst_path: str, entry: BlobEntry,
                    when: Precondition) -> tuple[str, bytes] | None:
        """Copy inside the service when it can (same account); (etag, md5), or None to stream instead."""
        return None

    def durable(self) -> None:  # noqa: B027 - optional hook
        """Make every write so far durable (called before the journal records them)."""

    def clean_litter(self, paths: list[str]) -> None:  # noqa: B027 - optional hook
        """Remove leftovers of interrupted writes that a listing reported."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# -- small shared helpers --


def format_mtime(mtime_ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as rclone writes the `mtime` metadata."""
    seconds, nanos = divmod(mtime_ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:?\d{2})?$"
)


def parse_mtime(text: str) -> int | None:
    """Nanoseconds since the epoch from RFC 3339 text (any fraction length, any offset), or None."""
    match = _RFC3339.match(text.strip())
    if not match:
        return None
    day, clock, fraction, offset = match.groups()
    if not offset or offset in ("Z", "z"):
        offset = "+00:00"
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{offset}")
    except ValueError:
        return None
    nanos = int((fraction or "0").ljust(9, "0")[:9])
    return int(moment.timestamp()) * 1_000_000_000 + nanos


def content_type_for(path: str) -> str:
    """Content type from the file extension (application/octet-stream when unknown)."""
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or "application/octet-stream"


def block_id(index: int, md5: bytes) -> str:
    """Deterministic block id: position and content, so a resumed upload knows which blocks it has.

    All ids of one blob have the same length (a service rule): 6 digits, a dash, 32 hex digits.
    """
    return f"{index:06d}-{md5.hex()}"


def block_index(block_id_text: str) -> int | None:
    head, _, _ = block_id_text.partition("-")
    return int(head) if head.isdigit() else None


def md5_b64(md5: bytes | None) -> str:
    return base64.b64encode(md5).decode() if md5 else ""
