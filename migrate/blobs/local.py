"""A local folder (or a mounted share) as a blob store: a source, and a target for the embedded demo.

Choices, documented here and in the README:
- Symbolic links: a link to a file is followed (the file's bytes and mtime are copied under the link's
  name); a link to a folder is skipped with a warning (following them can loop); a broken link is a
  problem of the listing. Sockets, FIFOs and devices are skipped with a warning.
- Writes go to a hidden temporary file beside the target (`.migrate-*.tmp`, or `.migrate-*.part` for a
  block upload), get the source mtime, then are renamed into place: a reader never sees a half-written
  file. Leftovers of a killed run are never listed and are removed after a clean load.
- Durability is group-committed: before the journal records a batch of finished files, `durable()`
  syncs the file system (one sync per batch instead of two fsyncs per file; tens of thousands of small
  files copy at disk speed). Blocks of a large file are fsynced one by one before their id is noted, so a
  resumed upload never reuses a block that did not reach the disk.
- A folder keeps no Content-MD5: the MD5 is recomputed from the bytes whenever it is needed (verify,
  adoption after a crash), so it can never be stale.
- The etag of a file is its inode, size and mtime: a write or a rename over it changes it, which is what
  conditional writes need. "Create only if absent" uses link(2), which is atomic.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat as stat_mod
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from migrate.blobs.store import (
    BlobEntry,
    BlobProps,
    BlobStore,
    BlockWriter,
    Level,
    Listing,
    Precondition,
    SourceChanged,
    SourceReader,
    SourceUnreadable,
    SourceVanished,
    StoreState,
    TargetChanged,
    block_index,
)

LITTER_PREFIX = ".migrate-"
LITTER_SUFFIXES = (".tmp", ".part", ".part-ids")
HASH_CHUNK = 1024 * 1024
PAGE_ENTRIES = 1000  # files per listing page handed on while the listing goes on


def is_litter(name: str) -> bool:
    """Our own temporary files (partial writes), never part of a listing."""
    return name.startswith(LITTER_PREFIX) and name.endswith(LITTER_SUFFIXES)


def etag_of(st: os.stat_result) -> str:
    """Inode, size and mtime: a write changes the mtime, a replacement the inode. (Not the ctime: removing
    a leftover hard link of our own would change it without touching the file.)"""
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


class LocalReader(SourceReader):
    """Reads a file and notices if it was modified, truncated, extended or replaced meanwhile."""

    def __init__(self, full: Path) -> None:
        self.full = full
        try:
            self._file = open(full, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError as exc:
            raise SourceVanished(str(exc)) from exc
        except OSError as exc:
            raise SourceUnreadable(exc.strerror or str(exc)) from exc
        self._st = os.fstat(self._file.fileno())
        self.size = self._st.st_size
        self.mtime_ns = self._st.st_mtime_ns
        self._read = 0

    def read(self, n: int) -> bytes:
        try:
            data = self._file.read(n)
        except OSError as exc:
            raise SourceUnreadable(exc.strerror or str(exc)) from exc
        self._read += len(data)
        return data

    def check_unchanged(self) -> None:
        now = os.fstat(self._file.fileno())
        try:
            by_name = os.stat(self.full)
        except FileNotFoundError as exc:
            raise SourceVanished("deleted while being read") from exc
        before = (self._st.st_size, self._st.st_mtime_ns, self._st.st_ino)
        if (now.st_size, now.st_mtime_ns, now.st_ino) != before or by_name.st_ino != self._st.st_ino \
                or (by_name.st_size, by_name.st_mtime_ns) != before[:2] or self._read != self._st.st_size:
            raise SourceChanged("changed while being read")

    def close(self) -> None:
        self._file.close()


class LocalFolderStore(BlobStore):
    """A folder tree; paths are relative to `root`."""

    kind = "folder"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.display = str(self.root)
        self._dirty = False

    # -- paths --

    def full(self, path: str) -> Path:
        """The file for a relative path; refuses names that would leave the root."""
        parts = path.split("/")
        if not path or any(p in ("", ".", "..") for p in parts) or "\x00" in path:
            raise SourceUnreadable(f"name {path!r} cannot be a file path under {self.display}")
        return self.root.joinpath(*parts)

    # -- read side --

    def identity(self) -> str:
        if self.root.exists():
            found = self.root.stat()
            return f"one folder: device {found.st_dev}, inode {found.st_ino}"
        return f"folder {self.root.resolve()}"

    def probe(self) -> StoreState:
        if self.root.is_dir():
            return StoreState(True, f"folder {self.display} exists")
        if self.root.exists():
            return StoreState(False, f"{self.display} exists but is not a folder")
        return StoreState(False, f"folder {self.display} does not exist")

    def ensure(self) -> bool:
        if self.root.is_dir():
            return False
        self.root.mkdir(parents=True, exist_ok=True)
        return True

    def free_bytes(self) -> int | None:
        probe = self.root
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        try:
            return shutil.disk_usage(probe).free
        except OSError:
            return None

    def listing_pages(self) -> Iterator[Listing]:
        """Depth first, a folder's files before its subfolders; a page every PAGE_ENTRIES files (and at the end)."""
        page = Listing()
        if not self.root.is_dir():
            yield page
            return
        stack: list[tuple[str, str]] = [(str(self.root), "")]
        while stack:
            folder, rel_folder = stack.pop()
            try:
                with os.scandir(folder) as it:
                    children = list(it)
            except OSError as exc:
                page.problems.append(f"{rel_folder or '.'}: cannot list folder: {exc.strerror or exc}")
                continue
            for child in children:
                rel = f"{rel_folder}/{child.name}" if rel_folder else child.name
                self._list_one(child, rel, page, stack)
                if len(page.entries) >= PAGE_ENTRIES:
                    yield page
                    page = Listing()
        yield page

    def list_level(self, folder: str) -> Level:
        level = Level(Listing(), [])
        stack: list[tuple[str, str]] = []
        try:
            with os.scandir(self.full(folder.rstrip("/")) if folder else self.root) as it:
                children = list(it)
        except (FileNotFoundError, NotADirectoryError):
            return level  # not there (yet): nothing to list
        except OSError as exc:
            level.files.problems.append(f"{folder or '.'}: cannot list folder: {exc.strerror or exc}")
            return level
        for child in children:
            self._list_one(child, f"{folder}{child.name}", level.files, stack)
        level.folders = [f"{rel}/" for _, rel in stack]
        return level

    def _list_one(self, child: os.DirEntry[str], rel: str, listing: Listing,
                  stack: list[tuple[str, str]]) -> None:
        if is_litter(child.name):
            listing.litter.append(rel)
            return
        try:
            if child.is_symlink():
                try:
                    st = os.stat(child.path)
                except OSError:
                    listing.problems.append(f"{rel}: broken symbolic link")
                    return
                if stat_mod.S_ISDIR(st.st_mode):
                    listing.warnings.append(f"{rel}: symbolic link to a folder, skipped")
                    return
            elif child.is_dir(follow_symlinks=False):
                stack.append((child.path, rel))
                return
            else:
                st = child.stat(follow_symlinks=False)
        except OSError as exc:
            listing.problems.append(f"{rel}: cannot read: {exc.strerror or exc}")
            return
        if not stat_mod.S_ISREG(st.st_mode):
            listing.warnings.append(f"{rel}: not a regular file, skipped")
            return
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            listing.problems.append(f"{rel.encode('utf-8', 'surrogateescape')!r}: name is not valid UTF-8")
            return
        listing.entries[rel] = BlobEntry(rel, st.st_size, st.st_mtime_ns, etag_of(st))

    def stat(self, path: str) -> BlobEntry | None:
        try:
            st = os.stat(self.full(path))
        except FileNotFoundError:
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        return BlobEntry(path, st.st_size, st.st_mtime_ns, etag_of(st))

    def open_read(self, path: str, expected: BlobEntry | None = None) -> SourceReader:
        return LocalReader(self.full(path))

    def hash(self, path: str) -> bytes:
        digest = hashlib.md5()
        with LocalReader(self.full(path)) as reader:
            while chunk := reader.read(HASH_CHUNK):
                digest.update(chunk)
        return digest.digest()

    # -- write side --

    def _install(self, temp: Path, final: Path, when: Precondition) -> str:
        """Move a finished temporary file into place if `when` holds; return the new etag."""
        try:
            if when.kind == "absent":
                try:
                    os.link(temp, final)
                except FileExistsError:
                    raise TargetChanged("appeared on the target meanwhile") from None
                except OSError as exc:  # file systems without hard links: check, then rename
                    if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                        raise
                    if os.path.lexists(final):
                        raise TargetChanged("appeared on the target meanwhile") from None
                    os.replace(temp, final)
                else:
                    os.unlink(temp)
            else:
                if when.kind == "etag":
                    try:
                        current = etag_of(os.stat(final))
                    except FileNotFoundError:
                        raise TargetChanged("deleted on the target meanwhile") from None
                    if current != when.etag:
                        raise TargetChanged("changed on the target meanwhile")
                os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._dirty = True
        return etag_of(os.stat(final))

    def put(self, path: str, data: bytes, props: BlobProps, when: Precondition) -> str:
        final = self.full(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.parent / f"{LITTER_PREFIX}{uuid.uuid4().hex}.tmp"
        try:
            with open(temp, "wb") as out:
                out.write(data)
            os.utime(temp, ns=(props.mtime_ns, props.mtime_ns))
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return self._install(temp, final, when)

    def block_writer(self, path: str, block_size: int) -> BlockWriter:
        return LocalBlockWriter(self, path, block_size)

    def delete(self, path: str, when: Precondition) -> None:
        final = self.full(path)
        try:
            st = os.stat(final)
        except FileNotFoundError:
            return
        if when.kind == "etag" and etag_of(st) != when.etag:
            raise TargetChanged("changed on the target meanwhile")
        final.unlink(missing_ok=True)
        folder = final.parent
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent

    def set_mtime(self, path: str, mtime_ns: int, when: Precondition) -> str:
        final = self.full(path)
        if when.kind == "etag" and etag_of(os.stat(final)) != when.etag:
            raise TargetChanged("changed on the target meanwhile")
        os.utime(final, ns=(mtime_ns, mtime_ns))
        return etag_of(os.stat(final))

    def durable(self) -> None:
        if self._dirty:
            self._dirty = False
            os.sync()

    def clean_litter(self, paths: list[str]) -> None:
        for rel in paths:
            try:
                self.root.joinpath(*rel.split("/")).unlink(missing_ok=True)
            except OSError:
                pass


class LocalBlockWriter(BlockWriter):
    """Blocks written in place into `.migrate-<hash>.part`; their ids are appended to `.part-ids` only
    after the data is fsynced, so a killed upload resumes from the blocks it really has."""

    def __init__(self, store: LocalFolderStore, path: str, block_size: int) -> None:
        self.store = store
        self.final = store.full(path)
        self.block_size = block_size
        tag = hashlib.sha1(f"{self.final.name}\x00{block_size}".encode()).hexdigest()[:20]
        self.part = self.final.parent / f"{LITTER_PREFIX}{tag}.part"
        self.ids = self.final.parent / f"{LITTER_PREFIX}{tag}.part-ids"
        self._fd: int | None = None
        self._lock = threading.Lock()

    def staged(self) -> dict[str, int]:
        try:
            lines = self.ids.read_text(encoding="ascii").splitlines()
            size = self.part.stat().st_size
        except (FileNotFoundError, UnicodeDecodeError):
            return {}
        out: dict[str, int] = {}
        for line in lines:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                index = block_index(parts[0])
                if index is not None and index * self.block_size + int(parts[1]) <= size:
                    out[parts[0]] = int(parts[1])
        return out

    def _open(self) -> int:
        with self._lock:
            if self._fd is None:
                self.final.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.part, os.O_RDWR | os.O_CREAT, 0o644)
            return self._fd

    def stage(self, index: int, block_id: str, data: bytes, md5: bytes) -> None:
        fd = self._open()
        os.pwrite(fd, data, index * self.block_size)
        os.fsync(fd)
        with self._lock, open(self.ids, "a", encoding="ascii") as ids:
            ids.write(f"{block_id} {len(data)}\n")

    def commit(self, block_ids: list[str], props: BlobProps, when: Precondition) -> str:
        for position, bid in enumerate(block_ids):
            if block_index(bid) != position:
                raise ValueError(f"block {bid} out of order at {position}")
        fd = self._open()
        os.ftruncate(fd, props.size)
        os.fsync(fd)
        self._close()
        os.utime(self.part, ns=(props.mtime_ns, props.mtime_ns))
        etag = self.store._install(self.part, self.final, when)
        self.ids.unlink(missing_ok=True)
        return etag

    def _close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        self._close()
