"""The path space of a blob item cut into name ranges for several runners (`migrate worker`).

Paths are compared by code point (Python's `str` order, and `COLLATE "C"` in PostgreSQL). A range is
[lo, hi): `hi` None is open. A folder `a/b/` holds exactly the paths of [`a/b/`, `a/b0`) (`0` follows `/`), so
a folder's range is one contiguous range, disjoint from its siblings' and from the files beside it.

A split task lists one level of one folder (its files and its subfolders, never deeper) and cuts the
folder's range into: one split task per subfolder, and copy chunks of at most `bound` of the level's files
that cover everything else, gaps included. So the ranges of a plan's tasks tile the whole path space (no gap,
no overlap) and a file made later, even in a folder made later, falls in exactly one of them. A chunk lists
its range (one level at a time, descending only into folders inside it), so a runner holds one chunk's
entries, never the whole listing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from migrate.blobs.store import BlobStore, Listing

DEFAULT_BOUND = 10_000  # files per copy chunk


@dataclass(frozen=True)
class PathRange:
    """Paths p with lo <= p < hi (hi None: no end), by code point."""

    lo: str
    hi: str | None

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.lo <= path and (self.hi is None or path < self.hi)

    def meets(self, other: PathRange) -> bool:
        """The two ranges share at least one path."""
        return (other.hi is None or self.lo < other.hi) and (self.hi is None or other.lo < self.hi)


def folder_range(folder: str) -> PathRange:
    """Every path under `folder` ("" for the root, else ending in "/")."""
    return PathRange(folder, folder[:-1] + "0" if folder else None)


@dataclass(frozen=True)
class Task:
    """A split task (list one level of `folder`, cut its range) or a copy chunk (copy what lies in the range,
    listing from `folder` down). `name` is short and stable; `spec` carries the range."""

    kind: str  # split | copy
    folder: str
    range: PathRange

    @property
    def spec(self) -> str:
        return json.dumps({"kind": self.kind, "folder": self.folder, "lo": self.range.lo, "hi": self.range.hi},
                          ensure_ascii=False, sort_keys=True)

    @property
    def name(self) -> str:
        return f"{self.kind}:{hashlib.blake2b(self.spec.encode(), digest_size=12).hexdigest()}"

    @classmethod
    def of(cls, spec: str) -> Task:
        value = json.loads(spec)
        return cls(value["kind"], value["folder"], PathRange(value["lo"], value["hi"]))


def root_task(prefix_folder: str = "") -> Task:
    return Task("split", prefix_folder, folder_range(prefix_folder))


def cut(task: Task, files: Iterable[str], folders: Iterable[str], bound: int = DEFAULT_BOUND) -> list[Task]:
    """The tasks that replace a split task, given one level of its folder: `files` and `folders` (full paths,
    folders ending in "/") in any order. Their ranges tile the task's range."""
    rng = task.range
    subfolders = sorted(f for f in folders if folder_range(f).meets(rng))
    out = [Task("split", f, folder_range(f)) for f in subfolders]
    level = sorted(p for p in files if p in rng)
    # the gaps between subfolder ranges, in order: each is cut into chunks of at most `bound` files
    gaps: list[PathRange] = []
    start = rng.lo
    for f in subfolders:
        inner = folder_range(f)
        if start < inner.lo:
            gaps.append(PathRange(start, inner.lo))
        start = inner.hi  # type: ignore[assignment]  # a subfolder's range always ends
    if rng.hi is None or start < rng.hi:
        gaps.append(PathRange(start, rng.hi))
    at = 0
    for gap in gaps:
        inside = []
        while at < len(level) and level[at] in gap:
            inside.append(level[at])
            at += 1
        lo = gap.lo
        for first in range(bound, len(inside), bound):  # boundaries between chunks: a chunk's first file
            out.append(Task("copy", task.folder, PathRange(lo, inside[first])))
            lo = inside[first]
        out.append(Task("copy", task.folder, PathRange(lo, gap.hi)))
    return out


def listing_in(store: BlobStore, folder: str, rng: PathRange) -> Listing:
    """Every file of `rng`, listed one level at a time from `folder` down, entering only folders that meet the
    range (for a copy chunk: none but those made after its split). `litter` holds every leftover of our own
    seen in those levels, in the range or not (a temporary file's name need not fall in its file's range)."""
    out = Listing()
    todo = [folder]
    while todo:
        level = store.list_level(todo.pop())
        out.problems += level.files.problems
        out.warnings += level.files.warnings
        out.litter += level.files.litter
        out.entries.update({p: e for p, e in level.files.entries.items() if p in rng})
        todo += [f for f in level.folders if folder_range(f).meets(rng)]
    return out
