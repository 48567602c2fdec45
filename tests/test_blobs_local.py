"""Blob items between local folders: load, verify, sync, preview and crash-resume, on real files."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from migrate.blobs.engine import BlobEngine
from migrate.blobs.filters import PathFilter
from migrate.blobs.local import LocalFolderStore, is_litter
from migrate.blobs.records import RecordBook
from migrate.blobs.store import (
    BlobProps,
    Listing,
    Precondition,
    SourceChanged,
    TargetChanged,
    block_id,
    content_type_for,
    format_mtime,
    parse_mtime,
)
from migrate.errors import EndpointError, MassDeleteRefused
from migrate.plan.loader import LoadedPlan, load_plan
from migrate.stages.engine import StageContext
from migrate.state.journal import Journal

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


# -- helpers --


def build_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def tree_md5(root: Path) -> dict[str, str]:
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not is_litter(path.name):
            out[path.relative_to(root).as_posix()] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def identity(root: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) per file: every write goes to a new file renamed into place, so an unchanged
    inode means the file was not rewritten."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and not is_litter(path.name):
            st = path.stat()
            out[path.relative_to(root).as_posix()] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def write_plan(folder: Path, item: str = "", source: str = "src", target: str = "dst") -> Path:
    plan = folder / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        component: blobtest
        connections:
          onprem: {{path: {source}}}
          cloud: {{path: {target}}}
        blobs:
          - name: letters
            source: onprem
            target: cloud
        """) + textwrap.indent(textwrap.dedent(item), " " * 4))
    return plan


class Setup:
    """A plan in tmp_path with a source tree, and a fresh engine/context on demand."""

    def __init__(self, folder: Path, item: str = "", files: dict[str, bytes] | None = None) -> None:
        self.folder = folder
        self.src = folder / "src"
        self.dst = folder / "dst"
        self.src.mkdir(exist_ok=True)
        if files:
            build_tree(self.src, files)
        self.plan = write_plan(folder, item)
        self.loaded: LoadedPlan = load_plan(self.plan)
        self.journal = Journal(self.loaded.state_url)

    def engine(self) -> BlobEngine:
        return BlobEngine(self.loaded.plan.blobs[0], self.loaded)

    def ctx(self) -> StageContext:
        return StageContext(self.loaded, self.journal)

    def run(self, stage: str, **kwargs: object) -> object:
        engine = self.engine()
        try:
            return getattr(engine, stage)(self.ctx(), **kwargs)
        finally:
            engine.close()


def demo_letters(count: int = 300) -> dict[str, bytes]:
    files = {f"clinic-{i % 7}/2024/{i % 12 + 1:02d}/letter-{i:04d}.txt":
             f"Dear Dr Smith,\nre patient {i}\n".encode() * (i % 5 + 1) for i in range(count)}
    files["empty.txt"] = b""
    files["clinic-0/Ærøskøbing – résumé ✓.txt"] = b"non-ASCII name"
    files["scans/big-scan.pdf"] = os.urandom(5 * MIB + 12345)
    return files


# -- units: names, times, globs --


def test_mtime_round_trips_in_rclone_format() -> None:
    ns = 1_700_000_000_123_456_789
    assert format_mtime(ns) == "2023-11-14T22:13:20.123456789Z"
    assert parse_mtime(format_mtime(ns)) == ns
    assert parse_mtime("2023-11-14T23:13:20.5+01:00") == 1_700_000_000_500_000_000
    assert parse_mtime("not a time") is None


def test_globs_are_double_star_aware() -> None:
    keep = PathFilter(["**/*.pdf", "index.csv"], ["tmp/**", "**/*draft*"])
    assert keep("a.pdf") and keep("x/y/z.pdf") and keep("index.csv") and keep("deep/index.csv")
    assert not keep("tmp/a.pdf") and not keep("x/my-draft.pdf") and not keep("a.txt")
    anchored = PathFilter(["letters/*.txt"])
    assert anchored("letters/a.txt") and not anchored("x/letters/a.txt") and not anchored("letters/b/a.txt")
    assert PathFilter([], [])("anything/at/all")


def test_block_ids_are_fixed_length_and_deterministic() -> None:
    a = block_id(0, hashlib.md5(b"x").digest())
    b = block_id(123456, hashlib.md5(b"y").digest())
    assert len(a) == len(b) and a == block_id(0, hashlib.md5(b"x").digest())
    assert content_type_for("a/b.pdf") == "application/pdf"
    assert content_type_for("noext") == "application/octet-stream"


def test_local_store_conditional_writes(tmp_path: Path) -> None:
    store = LocalFolderStore(tmp_path)
    props = BlobProps(size=3, md5=hashlib.md5(b"one").digest(), mtime_ns=1_600_000_000_000_000_000,
                      content_type="text/plain")
    etag = store.put("a/b.txt", b"one", props, Precondition.absent())
    assert (tmp_path / "a/b.txt").read_bytes() == b"one"
    assert (tmp_path / "a/b.txt").stat().st_mtime_ns == props.mtime_ns
    with pytest.raises(TargetChanged):
        store.put("a/b.txt", b"two", props, Precondition.absent())
    (tmp_path / "a/b.txt").write_bytes(b"someone else")
    with pytest.raises(TargetChanged):
        store.put("a/b.txt", b"two", props, Precondition.matching(etag))
    with pytest.raises(TargetChanged):
        store.delete("a/b.txt", Precondition.matching(etag))
    assert (tmp_path / "a/b.txt").read_bytes() == b"someone else"
    assert not [p for p in tmp_path.rglob("*") if is_litter(p.name)]


def test_reader_notices_a_file_changed_while_read(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000)
    store = LocalFolderStore(tmp_path)
    with store.open_read("f.bin") as reader:
        reader.read(2000)
        with open(path, "ab") as more:
            more.write(b"y")
        with pytest.raises(SourceChanged):
            reader.check_unchanged()


# -- load, verify, preview --


def test_preview_before_load_writes_nothing(tmp_path: Path) -> None:
    setup = Setup(tmp_path, files=demo_letters(50))
    preview = setup.run("preview")
    assert (preview.create, preview.update, preview.delete) == (53, 0, 0)
    assert preview.bytes == sum(len(v) for v in demo_letters(50).values()) - 5 * MIB - 12345 + 5 * MIB + 12345
    assert preview.changes and preview.estimate_seconds >= 0
    assert any("will be created" in d for d in preview.details)
    assert not setup.dst.exists()
    assert setup.journal.chunks("letters", "load") == {}


def test_load_copies_every_byte_and_verify_proves_it(tmp_path: Path) -> None:
    files = demo_letters()
    setup = Setup(tmp_path, "block_size: 1048576\n", files)
    result = setup.run("load")
    assert result.ok and not result.problems, result.problems
    assert result.metrics["files_copied"] == len(files)
    assert tree_md5(setup.dst) == tree_md5(setup.src) == {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    for rel in files:  # source mtime kept, to the nanosecond
        assert (setup.dst / rel).stat().st_mtime_ns == (setup.src / rel).stat().st_mtime_ns
    chunks = setup.journal.chunks("letters", "load")
    assert set(chunks) == set(files)
    assert all(status == "done" for status, _, _ in chunks.values())
    assert chunks["scans/big-scan.pdf"][2]["md5"] == hashlib.md5(files["scans/big-scan.pdf"]).hexdigest()
    assert chunks["empty.txt"][1] == 0 and chunks["empty.txt"][2]["md5"] == hashlib.md5(b"").hexdigest()

    verified = setup.run("verify")
    assert verified.clean and verified.checked == len(files)
    deep = setup.run("verify", deep=True)
    assert deep.clean and deep.metrics["source_bytes_read"] == sum(len(v) for v in files.values())
    again = setup.run("preview")
    assert not again.changes and again.unchanged == len(files)


def test_second_load_copies_nothing(tmp_path: Path) -> None:
    setup = Setup(tmp_path, files=demo_letters(40))
    setup.run("load")
    before = identity(setup.dst)
    result = setup.run("load")
    assert result.metrics["files_copied"] == 0 and result.metrics["unchanged"] == 43
    assert identity(setup.dst) == before


def test_lost_journal_adopts_identical_files_without_copying(tmp_path: Path) -> None:
    setup = Setup(tmp_path, files=demo_letters(40))
    setup.run("load")
    before = identity(setup.dst)
    setup.journal.clear_chunks("letters", "load")
    result = setup.run("load")
    assert result.metrics["files_copied"] == 0 and result.metrics["adopted"] == 43
    assert identity(setup.dst) == before
    assert setup.run("verify").clean


def test_write_cut_short_by_a_power_loss_is_rewritten_not_a_conflict(tmp_path: Path) -> None:
    setup = Setup(tmp_path, files={"a.txt": b"the real letter", "b.txt": b"another letter"})
    setup.run("load")
    setup.journal.clear_chunks("letters", "load")  # the journal never saw these writes
    mtime = (setup.src / "a.txt").stat().st_mtime_ns
    (setup.dst / "a.txt").write_bytes(b"\0\0\0")  # what a power cut can leave: wrong bytes, our mtime
    os.utime(setup.dst / "a.txt", ns=(mtime, mtime))
    (setup.dst / "b.txt").write_bytes(b"edited by a person")  # someone else's: a new mtime
    result = setup.run("load")
    assert (setup.dst / "a.txt").read_bytes() == b"the real letter"
    assert [p for p in result.problems if p.startswith("b.txt")] and len(result.problems) == 1
    assert (setup.dst / "b.txt").read_bytes() == b"edited by a person"


def test_preview_of_a_pending_sync_counts_each_change(tmp_path: Path) -> None:
    setup = Setup(tmp_path, "delete: true\n", {"a.txt": b"a", "b.txt": b"b", "c.txt": b"c"})
    setup.run("load")
    (setup.src / "a.txt").write_bytes(b"a, longer")
    (setup.src / "b.txt").unlink()
    (setup.src / "d.txt").write_bytes(b"d")
    before = identity(setup.dst)
    preview = setup.run("preview")
    assert (preview.create, preview.update, preview.delete, preview.unchanged) == (1, 1, 1, 1)
    assert preview.bytes == len(b"a, longer") + 1
    assert identity(setup.dst) == before


def test_verify_lists_every_kind_of_difference(tmp_path: Path) -> None:
    setup = Setup(tmp_path, files={"a.txt": b"alpha", "b.txt": b"bravo", "c.txt": b"charlie", "d.txt": b"delta"})
    setup.run("load")
    (setup.dst / "a.txt").unlink()
    (setup.dst / "extra.txt").write_bytes(b"x")
    (setup.dst / "b.txt").write_bytes(b"BRAVO")  # same size, other bytes: only MD5 can tell
    (setup.dst / "c.txt").write_bytes(b"short")
    result = setup.run("verify")
    found = {(d.kind, d.key) for d in result.differences}
    assert found == {("missing_on_target", "a.txt"), ("missing_on_source", "extra.txt"),
                     ("different", "b.txt"), ("different", "c.txt")}
    assert "MD5" in next(d.detail for d in result.differences if d.key == "b.txt")


# -- sync --


def test_sync_copies_only_changes_and_propagates_deletes(tmp_path: Path) -> None:
    setup = Setup(tmp_path, "delete: true\n", {"keep.txt": b"same", "edit.txt": b"old", "gone.txt": b"bye",
                                               "touch.txt": b"touched", "deep/x/y.txt": b"deep"})
    setup.run("load")
    before = identity(setup.dst)
    (setup.src / "edit.txt").write_bytes(b"new text")
    (setup.src / "gone.txt").unlink()
    (setup.src / "added.txt").write_bytes(b"hello")
    os.utime(setup.src / "touch.txt", ns=(1_500_000_000_000_000_000,) * 2)  # mtime only: confirmed by hash
    (setup.src / "deep/x/y.txt").unlink()
    result = setup.run("sync")
    assert (result.created, result.updated, result.deleted) == (1, 2, 2), result
    assert result.metrics["files_copied"] == 2 and result.metrics["touched"] == 1
    assert result.lag_seconds == 0 and result.lag_detail["pending_at_start"] == 4
    assert tree_md5(setup.dst) == tree_md5(setup.src)
    after = identity(setup.dst)
    assert after["keep.txt"] == before["keep.txt"]
    assert after["touch.txt"][0] == before["touch.txt"][0]  # same inode: not rewritten
    assert after["touch.txt"][2] == 1_500_000_000_000_000_000
    assert not (setup.dst / "deep").exists()  # emptied folders go too
    quiet = setup.run("sync")
    assert (quiet.created, quiet.updated, quiet.deleted, quiet.lag_seconds) == (0, 0, 0, 0)
    assert setup.run("verify").clean


def test_a_refused_mass_delete_deletes_nothing_and_the_cycles_copies_still_land(tmp_path: Path) -> None:
    files = {f"f{i:03d}.txt": os.urandom(100) for i in range(150)}
    setup = Setup(tmp_path, "delete: true\n", files)
    setup.run("load")
    for i in range(120):  # 120 of 150: past the guard
        (setup.src / f"f{i:03d}.txt").unlink()
    (setup.src / "new.txt").write_bytes(b"arrived while the share was half empty")
    with pytest.raises(MassDeleteRefused, match="blob set letters: 120 of 150 would be deleted"):
        setup.run("sync")
    kept = tree_md5(setup.dst)
    assert all(f"f{i:03d}.txt" in kept for i in range(150))  # nothing deleted
    assert kept["new.txt"] == hashlib.md5(b"arrived while the share was half empty").hexdigest()
    allowed = setup.engine()
    try:
        result = allowed.sync(StageContext(setup.loaded, setup.journal, allow_mass_delete=True))
    finally:
        allowed.close()
    assert result.deleted == 120 and result.created == 0
    assert tree_md5(setup.dst) == tree_md5(setup.src)


def test_sync_keeps_target_files_when_delete_is_off(tmp_path: Path) -> None:
    setup = Setup(tmp_path, files={"a.txt": b"a", "b.txt": b"b"})
    setup.run("load")
    (setup.src / "a.txt").unlink()
    result = setup.run("sync")
    assert result.deleted == 0 and (setup.dst / "a.txt").exists()
    assert [d.kind for d in setup.run("verify").differences] == ["missing_on_source"]


def test_a_missing_or_empty_source_never_empties_the_target(tmp_path: Path) -> None:
    setup = Setup(tmp_path, "delete: true\n", {"a.txt": b"a", "b/c.txt": b"c"})
    setup.run("load")
    for path in list(setup.src.rglob("*"))[::-1]:
        path.unlink() if path.is_file() else path.rmdir()
    result = setup.run("sync")  # an unmounted share looks like an empty folder
    assert result.deleted == 0 and any("refusing to delete 2 files" in p for p in result.problems)
    assert tree_md5(setup.dst) == {"a.txt": hashlib.md5(b"a").hexdigest(), "b/c.txt": hashlib.md5(b"c").hexdigest()}
    setup.src.rmdir()
    for stage in ("preflight", "load", "sync", "verify", "preview"):
        with pytest.raises(EndpointError, match="does not exist"):
            setup.run(stage)


def test_target_changed_by_someone_else_is_reported_not_overwritten(tmp_path: Path) -> None:
    setup = Setup(tmp_path, "delete: true\n", {"a.txt": b"ours", "b.txt": b"ours too"})
    setup.run("load")
    (setup.dst / "a.txt").write_bytes(b"theirs, longer")
    (setup.dst / "b.txt").write_bytes(b"THEIRS!!")
    (setup.src / "a.txt").write_bytes(b"ours, edited")
    (setup.src / "b.txt").unlink()
    result = setup.run("sync")
    assert len(result.problems) == 1 and "a.txt" in result.problems[0] and "someone else" in result.problems[0]
    assert (setup.dst / "a.txt").read_bytes() == b"theirs, longer"
    assert (setup.dst / "b.txt").read_bytes() == b"THEIRS!!"  # not ours any more: not deleted either
    events = setup.journal.events(item="letters")
    assert any(e["kind"] == "blob_conflict" for e in events)


def test_include_exclude_and_prefix(tmp_path: Path) -> None:
    setup = Setup(tmp_path, 'prefix: "archive/2024"\ninclude: ["**/*.pdf", "*.csv"]\nexclude: ["drafts/**"]\n',
                  {"a.pdf": b"1", "x/y/b.pdf": b"2", "drafts/c.pdf": b"3", "d.txt": b"4", "x/index.csv": b"5"})
    result = setup.run("load")
    assert result.metrics["files_copied"] == 3
    assert tree_md5(setup.dst) == {f"archive/2024/{p}": hashlib.md5(d).hexdigest()
                                   for p, d in {"a.pdf": b"1", "x/y/b.pdf": b"2", "x/index.csv": b"5"}.items()}
    assert setup.run("verify").clean


def test_edge_case_names_sizes_and_nesting(tmp_path: Path) -> None:
    deep = "/".join(f"level{i}" for i in range(40))
    files = {
        "with space.txt": b"space", "naïve café.txt": b"unicode", "日本語/ファイル.txt": b"cjk",
        "hash#1.txt": b"hash", "100%.txt": b"percent", "a+b.txt": b"plus", "semi;colon.txt": b"semi",
        "emoji 🎉.txt": b"emoji", f"{deep}/bottom.txt": b"deep", "zero.bin": b"",
        "exactly-one-block.bin": b"z" * 65536, "one-block-plus-one.bin": b"y" * 65537,
    }
    setup = Setup(tmp_path, "block_size: 65536\n", files)
    result = setup.run("load")
    assert not result.problems
    assert tree_md5(setup.dst) == {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    assert setup.run("verify", deep=True).clean


def test_symlinks_files_followed_folders_skipped_broken_reported(tmp_path: Path) -> None:
    setup = Setup(tmp_path, files={"real/a.txt": b"real file", "other.txt": b"o"})
    os.symlink(setup.src / "real/a.txt", setup.src / "link-to-file.txt")
    os.symlink(setup.src / "real", setup.src / "link-to-folder")
    os.symlink(setup.src, setup.src / "real/loop")
    os.symlink(setup.src / "nowhere", setup.src / "broken.txt")
    result = setup.run("load")
    assert (setup.dst / "link-to-file.txt").read_bytes() == b"real file"
    assert not (setup.dst / "link-to-folder").exists() and not (setup.dst / "real/loop").exists()
    assert [p for p in result.problems if "broken.txt" in p and "broken symbolic link" in p]
    assert set(tree_md5(setup.dst)) == {"real/a.txt", "other.txt", "link-to-file.txt"}
    preflight = setup.run("preflight")
    assert any("link-to-folder" in w for w in preflight.warnings)


def test_unreadable_file_is_a_problem_and_the_rest_continue(tmp_path: Path) -> None:
    files = {f"f{i}.txt": b"ok %d" % i for i in range(20)}
    setup = Setup(tmp_path, files=files)
    if os.geteuid() == 0:  # root reads anything: use a file whose read fails with EIO
        os.symlink("/proc/self/mem", setup.src / "unreadable.bin")
    else:
        (setup.src / "unreadable.bin").write_bytes(b"secret")
        (setup.src / "unreadable.bin").chmod(0)
    result = setup.run("load")
    assert not result.ok
    assert len(result.problems) == 1 and result.problems[0].startswith("unreadable.bin: cannot read")
    assert tree_md5(setup.dst) == {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    assert setup.journal.chunks("letters", "load")["unreadable.bin"][0] == "failed"


def test_source_changing_while_read_is_retried_then_reported(tmp_path: Path) -> None:
    setup = Setup(tmp_path, "block_size: 65536\n", {"growing.log": b"x" * 4 * MIB, "calm.txt": b"calm"})
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            with open(setup.src / "growing.log", "ab") as log:
                log.write(b"more\n")
            time.sleep(0.0005)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        result = setup.run("load")
    finally:
        stop.set()
        writer.join()
    assert [p for p in result.problems if p.startswith("growing.log") and "changed while being read" in p]
    assert (setup.dst / "calm.txt").read_bytes() == b"calm"
    assert not (setup.dst / "growing.log").exists()
    again = setup.run("sync")  # once it is quiet, the next cycle copies it
    assert not again.problems and again.created == 1
    assert tree_md5(setup.dst) == tree_md5(setup.src)


@pytest.mark.slow
@pytest.mark.drill  # 20 s: in `make drill`; the 6,500-file worker test and the page tests cover it in `make test`
def test_tens_of_thousands_of_small_files(tmp_path: Path) -> None:
    files = {f"d{i % 100:02d}/e{i % 7}/f{i:05d}.txt": b"%05d" % i for i in range(20_000)}
    setup = Setup(tmp_path, files=files)
    started = time.monotonic()
    result = setup.run("load")
    assert result.metrics["files_copied"] == 20_000 and not result.problems
    assert setup.run("verify").clean
    assert len(setup.journal.chunks("letters", "load")) == 20_000
    assert time.monotonic() - started < 120


# -- kill -9 and resume --

RUNNER = textwrap.dedent("""
    import sys
    from migrate.blobs.engine import BlobEngine
    from migrate.plan.loader import load_plan
    from migrate.stages.engine import StageContext
    from migrate.state.journal import Journal

    loaded = load_plan(sys.argv[1])
    engine = BlobEngine(loaded.plan.blobs[0], loaded)
    engine.load(StageContext(loaded, Journal(loaded.state_url)))
""")


def start_load(plan: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(plan)], env=env, stderr=subprocess.PIPE)


def kill_when(process: subprocess.Popen[bytes], ready: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            pytest.fail(f"the load finished (exit {process.returncode}) before it could be killed\n{err}")
        if ready():  # type: ignore[operator]
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        time.sleep(0.002)
    process.kill()
    pytest.fail("the load never got far enough to be killed")


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file() and not is_litter(p.name)) if root.exists() else 0


def test_kill_9_mid_load_then_rerun_loses_nothing_and_recopies_nothing(tmp_path: Path) -> None:
    files = {f"batch-{i % 30:02d}/letter-{i:05d}.txt": os.urandom(2048) for i in range(3000)}
    setup = Setup(tmp_path, "concurrency: 2\n", files)
    process = start_load(setup.plan)
    kill_when(process, lambda: count_files(setup.dst) >= 300)
    finished = identity(setup.dst)  # complete files only: temporaries are never under their final name
    assert 300 <= len(finished) < len(files)
    for rel in finished:
        assert hashlib.md5((setup.dst / rel).read_bytes()).digest() == hashlib.md5(files[rel]).digest()

    result = setup.run("load")
    assert not result.problems
    assert result.metrics["files_copied"] == len(files) - len(finished)
    after = identity(setup.dst)
    assert {rel: after[rel] for rel in finished} == finished  # nothing finished was copied again
    assert tree_md5(setup.dst) == {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    assert setup.run("verify").clean
    assert not [p for p in setup.dst.rglob("*") if is_litter(p.name)]  # leftovers cleaned


def test_kill_9_mid_large_file_resumes_from_its_blocks(tmp_path: Path) -> None:
    big = os.urandom(24 * MIB)
    setup = Setup(tmp_path, "block_size: 65536\nconcurrency: 2\n", {"scans/huge.tif": big})
    process = start_load(setup.plan)

    def some_blocks() -> bool:
        ids = list((setup.dst / "scans").glob(".migrate-*.part-ids")) if (setup.dst / "scans").exists() else []
        return bool(ids) and ids[0].read_text().count("\n") >= 40

    kill_when(process, some_blocks)
    assert not (setup.dst / "scans/huge.tif").exists()
    result = setup.run("load")
    assert not result.problems
    assert result.metrics["blocks_reused"] >= 40
    assert result.metrics["bytes_reused"] == result.metrics["blocks_reused"] * 65536
    assert hashlib.md5((setup.dst / "scans/huge.tif").read_bytes()).digest() == hashlib.md5(big).digest()
    assert setup.run("verify", deep=True).clean
    assert not [p for p in setup.dst.rglob("*") if is_litter(p.name)]


def test_record_book_survives_reload(tmp_path: Path) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 'j.db'}")
    book = RecordBook(journal, "item")
    book.done("a/b.txt", 3, hashlib.md5(b"abc").digest(), 1_700_000_000_000_000_001, "etag-1")
    book.failed("c.txt", "AccountKey=abc123 leaked?", 1_700_000_000_000_000_000)
    book.flush()
    records = RecordBook(journal, "item").load()
    assert records["a/b.txt"].md5 == hashlib.md5(b"abc").digest()
    assert records["a/b.txt"].mtime_ns == 1_700_000_000_000_000_001 and records["a/b.txt"].owns("etag-1")
    assert records["c.txt"].status == "failed" and "abc123" not in records["c.txt"].error


# -- throttling holds across the pools (large objects, blocks, small objects) --


class CountingFolder(LocalFolderStore):
    """A real folder that notes how many of its files are open for reading at once (one per object copied)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.open = 0
        self.most = 0
        self.lock = threading.Lock()

    def open_read(self, path: str, expected: object = None) -> object:  # type: ignore[override]
        reader = super().open_read(path)
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)
        close = reader.close

        def closed() -> None:
            close()
            with self.lock:
                self.open -= 1

        reader.close = closed  # type: ignore[method-assign]
        return reader


def test_throttle_holds_bytes_and_connections_over_both_pools(tmp_path: Path) -> None:
    from migrate.throttle.control import Throttles

    files = {f"notes/n{i:03d}.txt": os.urandom(16 * 1024) for i in range(200)}  # 3.1 MiB of small objects
    files["scans/big.tif"] = os.urandom(3 * MIB)  # 3 MiB in 256 KiB blocks
    setup = Setup(tmp_path, "block_size: 262144\nthrottle: {bytes_per_second: 2 MiB, max_connections: 2}\n", files)
    engine = setup.engine()
    source = CountingFolder(setup.src)
    engine._source = source
    started = time.monotonic()
    try:
        result = engine.load(StageContext(setup.loaded, setup.journal,
                                          throttles=Throttles(setup.loaded, setup.journal)))
    finally:
        engine.close()
    seconds = time.monotonic() - started
    total = sum(len(v) for v in files.values())
    assert not result.problems and result.metrics["files_copied"] == len(files)
    assert total / seconds <= 2 * MIB * 1.15, f"{total / seconds / MIB:.2f} MiB/s"
    assert source.most <= 2  # max_connections caps the objects in flight over the large and small pools
    assert tree_md5(setup.dst) == {k: hashlib.md5(v).hexdigest() for k, v in files.items()}


class PacedFolder(LocalFolderStore):
    """A real folder that notes, as its listing hands on each page, how many files it had listed and how
    many were already copied to `target`."""

    def __init__(self, root: Path, target: Path) -> None:
        super().__init__(root)
        self.target = target
        self.at_pages: list[tuple[int, int]] = []

    def listing_pages(self) -> Iterator[Listing]:
        listed = 0
        for page in super().listing_pages():
            self.at_pages.append((listed, count_files(self.target)))
            listed += len(page.entries)
            yield page


def test_the_listing_waits_when_the_backlog_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.blobs import copy

    monkeypatch.setattr(copy, "MAX_BACKLOG", 40)
    files = {f"d{i % 4}/f{i:05d}.txt": os.urandom(512) for i in range(4000)}
    setup = Setup(tmp_path, "concurrency: 2\n", files)
    engine = setup.engine()
    source = PacedFolder(setup.src, setup.dst)
    engine._source = source
    try:
        result = engine.load(setup.ctx())
    finally:
        engine.close()
    assert not result.problems and result.metrics["files_copied"] == len(files)
    # each page is asked for only once the copy has caught up to within the backlog (and the few in flight)
    for listed, copied in source.at_pages[1:]:
        assert copied >= listed - 40 - 2 - 4, source.at_pages
    assert tree_md5(setup.dst) == {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
