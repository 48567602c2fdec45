"""`migrate worker` on blob items: the path space cut into name ranges by claimed split tasks (one level
listed at a time), copy chunks of at most `chunk_files` files. Real processes, a real PostgreSQL journal, a
worker killed with kill -9 while it copies; both sides compared outside the tool (sha256 of every file)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fixtures_azurite import Azurite, env_with
from test_db_postgres import pg
from test_worker import outcome, stop_holding, synced_in_all

from migrate.blobs.partition import PathRange, Task, cut, folder_range, root_task

pytestmark = pytest.mark.postgres


def test_cut_tiles_a_folders_range_and_every_later_path_falls_in_exactly_one_task() -> None:
    rng = random.Random(7)
    names = ["a", "a.txt", "a-b", "a0", "b", "é", "z~", "\U0001f600", "0", "A", " x"]
    for _ in range(200):
        folder = rng.choice(["", "letters/", "letters/2024/"])
        files = {folder + rng.choice(names) + str(rng.randrange(50)) for _ in range(rng.randrange(60))}
        folders = {folder + rng.choice(names) + "/" for _ in range(rng.randrange(6))}
        files -= {f[:-1] for f in folders}  # a name is a file or a folder, not both
        task = Task("split", folder, folder_range(folder)) if folder else root_task()
        tasks = cut(task, files, folders, bound=7)
        ranges = sorted((t.range for t in tasks), key=lambda r: r.lo)
        assert ranges[0].lo == task.range.lo and ranges[-1].hi == task.range.hi
        for left, right in zip(ranges, ranges[1:], strict=False):
            assert left.hi == right.lo  # no gap, no overlap
        copies = [t for t in tasks if t.kind == "copy"]
        assert all(sum(1 for f in files if f in t.range) <= 7 for t in copies)
        probes = list(files) + [f + "later" for f in folders] + [folder + rng.choice(names) + "new"
                                                                for _ in range(20)]
        for path in probes:
            assert sum(1 for t in tasks if path in t.range) == 1, path
    assert folder_range("a/b/") == PathRange("a/b/", "a/b0")


def blob_worker_plan(folder: Path, source: Path, target: str, journal: str, chunk_files: int,
                     concurrency: int = 4, delete: bool = False) -> Path:
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: scaleblobs
        state: "{journal}"
        connections:
          onprem: {{path: "{source}"}}
          cloud: {target}
        blobs:
          - {{name: letters, source: onprem, target: cloud, chunk_files: {chunk_files}, concurrency: {concurrency},
             delete: {str(delete).lower()}}}
        """), encoding="utf-8")
    return path


def make_files(root: Path, nested: int, flat: int) -> dict[str, str]:
    """`nested` files in folders two levels deep and `flat` files in one flat folder; returns path -> sha256."""
    out = {}
    for i in range(nested + flat):
        rel = f"flat/letter-{i:06d}.txt" if i < flat else f"ward-{i % 13}/day-{i % 7}/letter-{i}.txt"
        data = f"synthetic letter {i}\n".encode() * (1 + i % 5)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[rel] = hashlib.sha256(data).hexdigest()
    return out


def tree_sha(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def start(plan: Path, count: int, env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-m", "migrate", "worker", str(plan), "--shard", f"{i}/{count}",
                              "--lease", "3s", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for i in range(count)]


def load_tasks(journal: str) -> list[tuple]:
    return pg(journal, "SELECT task, status, owner, fence, spec FROM tasks WHERE stage = 'load' ORDER BY task")


def test_four_workers_one_killed_mid_chunk_copy_every_file_once(pg_cluster, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    expected = make_files(source, nested=2500, flat=1500)
    journal = pg_cluster.create_database()
    plan = blob_worker_plan(tmp_path, source, f'{{path: "{target}"}}', journal, chunk_files=150)
    # a partial write an earlier worker left behind (whatever the kill below leaves is removed the same way)
    (target / "ward-3").mkdir(parents=True)
    (target / "ward-3" / ".migrate-0123456789abcdef.tmp").write_bytes(b"half a letter")
    started = time.monotonic()
    workers = start(plan, 4)

    def copying() -> tuple[int, str] | None:  # a worker holding a copy chunk of files while files land
        if not target.exists() or sum(1 for _ in target.rglob("*.txt")) < 500:
            return None
        leased = [r for r in load_tasks(journal) if r[1] == "leased" and r[0].startswith("copy:")
                  and any(p in Task.of(r[4]).range for p in expected)]
        return (int(leased[0][2].rsplit(":", 1)[1]), leased[0][0]) if leased else None

    pid, task = stop_holding(journal, copying)
    os.kill(pid, signal.SIGKILL)
    results = [w.communicate(timeout=180) for w in workers]
    codes = [w.returncode for w in workers]
    assert sorted(codes) == [-signal.SIGKILL, 0, 0, 0], results
    seconds = time.monotonic() - started
    assert tree_sha(target) == expected  # every file once, same bytes; no temporary file left behind
    rows = load_tasks(journal)
    assert all(status == "done" for _, status, _, _, _ in rows)
    chunks = [Task.of(spec) for *_, spec in rows]
    leaves = sorted((t.range for t in chunks if t.kind == "copy"), key=lambda r: r.lo)
    folders = [t.range for t in chunks if t.kind == "split"]
    # the copy chunks tile the whole path space (no gap, no overlap): each file lies in exactly one
    assert leaves[0].lo == "" and leaves[-1].hi is None
    for left, right in zip(leaves, leaves[1:], strict=False):
        assert left.hi == right.lo
    for path in expected:
        assert sum(1 for r in leaves if path in r) == 1, path
    assert all(sum(1 for p in expected if p in r) <= 150 for r in leaves)
    assert len(folders) == 1 + 1 + 13 + 13 * 7  # the root, flat/, each ward and each of its days
    state = {t: fence for t, _, _, fence, _ in rows}
    assert state[task] >= 2  # the killed worker's chunk was claimed again
    events = pg(journal, "SELECT message FROM events WHERE kind = 'worker'")
    assert any(f"{task}: claimed again" in m for (m,) in events), events
    status = json.loads(subprocess.run([sys.executable, "-m", "migrate", "status", str(plan), "--json"],
                                       capture_output=True, text=True).stdout)["result"]["items"][0]
    assert status["stage"] == "load" and status["status"] == "done"
    work, finish = status["work"]  # the load's tasks, aggregated in the journal: all done, at a measured pace
    assert (finish["stage"], finish["tasks"], finish["done"]) == ("load:finish", 1, 1)
    assert (work["stage"], work["tasks"], work["done"], work["left"]) == ("load", len(rows), len(rows), 0)
    assert work["units"] == len(expected) and work["units_per_second"] > 0 and work["eta_seconds"] is None
    said = subprocess.run([sys.executable, "-m", "migrate", "status", str(plan)], capture_output=True, text=True)
    assert f"letters: load by workers: {len(rows)}/{len(rows)} task(s) done, {len(expected):,} units" in said.stderr
    verify = subprocess.run([sys.executable, "-m", "migrate", "verify", str(plan), "--json"],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"6,500 files by 4 workers (one killed) in {seconds:.1f} s")


@pytest.mark.azurite
def test_two_workers_load_into_azurite_listing_one_level_at_a_time(pg_cluster, azurite: Azurite,
                                                                   blob_container: str, tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    source = tmp_path / "src"
    expected = make_files(source, nested=450, flat=150)
    journal = pg_cluster.create_database()
    target = f'{{connection_string: "${{AZ_CS}}", container: {blob_container}}}'
    plan = blob_worker_plan(tmp_path, source, target, journal, chunk_files=100)
    env = env_with(AZ_CS=azurite.connection_string)
    workers = start(plan, 2, env=env)
    outs = [w.communicate(timeout=240) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        blob_container)
    found = {b.name: b for b in container.list_blobs()}
    assert set(found) == set(expected)
    for name, blob in found.items():
        data = container.download_blob(name).readall()
        assert hashlib.sha256(data).hexdigest() == expected[name]
        assert bytes(blob.content_settings.content_md5) == hashlib.md5(data).digest()
    again = start(plan, 1, env=env)[0]  # the load is done: nothing to claim, exit 0
    assert again.wait(timeout=60) == 0


def test_a_file_that_cannot_be_read_fails_its_chunk_only_and_is_named(pg_cluster, tmp_path: Path) -> None:
    """As with `migrate run`: every other file is copied, the chunk holding the bad one fails (after its
    attempts) naming it, and the workers exit 1; a split never fails for a file it only counts."""
    source, target = tmp_path / "src", tmp_path / "dst"
    expected = make_files(source, nested=300, flat=100)
    (source / "ward-2" / "day-2" / "broken.txt").symlink_to(tmp_path / "nowhere")
    journal = pg_cluster.create_database()
    plan = blob_worker_plan(tmp_path, source, f'{{path: "{target}"}}', journal, chunk_files=50)
    workers = start(plan, 2)
    outs = [w.communicate(timeout=180) for w in workers]
    assert [w.returncode for w in workers] == [1, 1], outs
    assert tree_sha(target) == expected
    failed = pg(journal, "SELECT status, error, spec FROM tasks WHERE stage = 'load' AND status <> 'done'")
    assert len(failed) == 1 and failed[0][0] == "failed"
    assert "ward-2/day-2/broken.txt: broken symbolic link" in failed[0][1]
    assert "ward-2/day-2/broken.txt" in Task.of(failed[0][2]).range


def start_until(plan: Path, count: int, until: str, *extra: str) -> list[subprocess.Popen]:
    mode = list(extra) if "--sync" in extra else ["--until", until, *extra]
    return [subprocess.Popen([sys.executable, "-m", "migrate", "worker", str(plan), "--shard", f"{i}/{count}",
                              *mode, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(count)]


def finished(workers: list[subprocess.Popen]) -> list[tuple[int, dict]]:
    return [outcome(w) for w in workers]


def test_workers_sync_a_blob_item_in_parts_and_apply_the_delete_guards_to_the_totals(pg_cluster,
                                                                                       tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    make_files(source, nested=300, flat=100)
    journal = pg_cluster.create_database()
    plan = blob_worker_plan(tmp_path, source, f'{{path: "{target}"}}', journal, chunk_files=50, delete=True)
    assert [w.wait(timeout=180) for w in start_until(plan, 2, "load")] == [0, 0]
    copies = {task for task, _, _, _, spec in load_tasks(journal) if Task.of(spec).kind == "copy"}
    # on the source: two files changed (one longer, one the same size), three deleted, four new (a new folder)
    nested = sorted(p for p in tree_sha(source) if p.startswith("ward-"))
    (source / nested[0]).write_bytes(b"a longer letter than before\n" * 9)
    same = source / nested[1]
    same.write_bytes(same.read_bytes().replace(b"synthetic", b"SYNTHETIC"))
    os.utime(same, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    for gone in (nested[2], "flat/letter-000007.txt", "flat/letter-000099.txt"):
        (source / gone).unlink()
    (source / "zz-new").mkdir()
    for i in range(3):
        (source / "zz-new" / f"letter-{i}.txt").write_bytes(f"new letter {i}\n".encode())
    (source / "flat" / "letter-999999.txt").write_bytes(b"the newest letter\n")
    results = finished(start_until(plan, 3, "", "--sync"))
    assert [code for code, _ in results] == [0, 0, 0], results
    assert tree_sha(target) == tree_sha(source)  # checked outside the tool: every path, every byte
    parts = pg(journal, "SELECT task, status FROM tasks WHERE stage = 'sync'")
    assert {task for task, _ in parts} == copies and all(status == "done" for _, status in parts)
    assert pg(journal, "SELECT count(*), min(status) FROM tasks WHERE stage = 'sync:finish'") == [(1, "done")]
    assert synced_in_all(journal) == (4, 2, 3)  # by one cycle, or more when a worker came after it had ended
    assert all(r["result"]["items"][0]["synced"] for _, r in results)  # each worker reports its cycle
    # one runner's sync afterwards finds nothing to do: the inventory and records the parts left agree
    single = subprocess.run([sys.executable, "-m", "migrate", "sync", str(plan), "--json"], capture_output=True,
                            text=True)
    assert single.returncode == 0, single.stderr
    [synced] = json.loads(single.stdout)["result"]["results"]
    assert (synced["created"], synced["updated"], synced["deleted"]) == (0, 0, 0)

    # most of the source gone (an unmounted share, half restored): the totals trip the mass-delete guard, although
    # no single part proposes more than its own chunk
    kept = sorted(tree_sha(source))[::4]
    for path in set(tree_sha(source)) - set(kept):
        (source / path).unlink()
    (source / "zz-new" / "letter-3.txt").write_bytes(b"still copied\n")
    before = tree_sha(target)
    results = finished(start_until(plan, 2, "", "--sync"))
    assert [code for code, _ in results] == [1, 1], results
    assert any("mass delete refused" in failure for _, r in results for failure in r["result"]["failed"]), results
    after = tree_sha(target)
    assert set(before) <= set(after)  # nothing deleted ...
    assert after["zz-new/letter-3.txt"] == tree_sha(source)["zz-new/letter-3.txt"]  # ... what is new still copied
    results = finished(start_until(plan, 2, "", "--sync", "--allow-mass-delete"))
    assert [code for code, _ in results] == [0, 0], results
    assert tree_sha(target) == tree_sha(source)


def test_workers_verify_a_blob_item_in_the_loads_chunks_and_find_what_an_outside_comparison_finds(
        pg_cluster, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    files = make_files(source, nested=300, flat=100)
    journal = pg_cluster.create_database()
    plan = blob_worker_plan(tmp_path, source, f'{{path: "{target}"}}', journal, chunk_files=50)
    assert [w.wait(timeout=180) for w in start_until(plan, 2, "load")] == [0, 0]
    nested = next(p for p in sorted(files) if p.startswith("ward-4/"))
    copies = {task for task, status, _, _, spec in load_tasks(journal) if Task.of(spec).kind == "copy"}
    # behind the tool's back: one file's bytes changed (same size), one gone, one extra in a new folder
    changed = target / nested
    changed.write_bytes(changed.read_bytes().replace(b"synthetic", b"SYNTHETIC"))
    (target / "flat" / "letter-000042.txt").unlink()
    (target / "zz-new").mkdir()
    (target / "zz-new" / "stray.txt").write_bytes(b"not from the source")
    theirs, ours = tree_sha(source), tree_sha(target)
    outside = sorted(p for p in theirs.keys() | ours.keys() if theirs.get(p) != ours.get(p))
    assert len(outside) == 3
    outcomes = [(w.wait(timeout=180), w) for w in start_until(plan, 2, "verify")]
    assert [code for code, _ in outcomes] == [3, 3], [w.communicate() for _, w in outcomes]
    [(clean, checked, differences, detail)] = pg(journal, "SELECT clean, checked, differences, detail "
                                                          "FROM verifications")
    detail = json.loads(detail)
    assert (clean, differences) == (False, 3) and checked == len(theirs.keys() | ours.keys())
    assert sorted(d["key"] for d in detail["differences"]) == outside
    assert {(d["key"], d["kind"]) for d in detail["differences"]} == {
        (nested, "different"), ("flat/letter-000042.txt", "missing_on_target"),
        ("zz-new/stray.txt", "missing_on_source")}
    parts = pg(journal, "SELECT task, status FROM tasks WHERE stage = 'verify'")
    assert {task for task, _ in parts} == copies and all(status == "done" for _, status in parts)
    assert detail["parts"] == len(copies) and detail["files"] == len(theirs)
    # put right by hand: the next run verifies again (the last one was not clean) and finds nothing
    changed.write_bytes(changed.read_bytes().replace(b"SYNTHETIC", b"synthetic"))
    (target / "flat" / "letter-000042.txt").write_bytes((source / "flat" / "letter-000042.txt").read_bytes())
    (target / "zz-new" / "stray.txt").unlink()
    assert start_until(plan, 1, "verify")[0].wait(timeout=180) == 0
    assert pg(journal, "SELECT clean, checked FROM verifications ORDER BY id DESC LIMIT 1") == [(True, len(theirs))]


def test_a_worker_killed_mid_sync_part_is_replaced_and_the_cycle_ends_whole(pg_cluster, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    make_files(source, nested=200, flat=100)
    journal = pg_cluster.create_database()
    plan = blob_worker_plan(tmp_path, source, f'{{path: "{target}"}}', journal, chunk_files=50, delete=True)
    assert [w.wait(timeout=180) for w in start_until(plan, 2, "load")] == [0, 0]
    (source / "zz-new").mkdir()  # 2,000 new files, all in the load's last (open-ended) chunk: one long part
    for i in range(2000):
        (source / "zz-new" / f"letter-{i:05d}.txt").write_bytes(f"new letter {i}\n".encode() * 800)
    (source / "flat" / "letter-000003.txt").unlink()
    workers = start_until(plan, 3, "", "--sync", "--lease", "3s")

    def copying() -> tuple[int, str] | None:  # a worker holding the long part while its files land
        landed = sum(1 for _ in (target / "zz-new").glob("*.txt")) if (target / "zz-new").exists() else 0
        if not 200 <= landed < 1500:
            return None
        leased = pg(journal, "SELECT owner, task, spec FROM tasks WHERE stage = 'sync' AND status = 'leased'")
        held = [(int(owner.rsplit(":", 1)[1]), task) for owner, task, spec in leased
                if "zz-new/letter-00000.txt" in Task.of(spec).range]
        return held[0] if held else None

    pid, task = stop_holding(journal, copying, stage="sync")
    for verb in ("sync", "run"):  # no race with one runner
        single = subprocess.run([sys.executable, "-m", "migrate", verb, str(plan)], capture_output=True, text=True)
        assert single.returncode == 1 and f"{verb} refused: workers hold" in single.stderr, single.stderr
    os.kill(pid, signal.SIGKILL)
    results = [outcome(w) for w in workers]
    assert sorted(code for code, _ in results) == [-signal.SIGKILL, 0, 0], results
    assert tree_sha(target) == tree_sha(source)  # every new file once, the deleted one gone, no partial write
    [(fence, status)] = pg(journal, "SELECT fence, status FROM tasks WHERE stage = 'sync' AND task = %s", (task,))
    assert (status, fence >= 2) == ("done", True)  # claimed again after the killed worker's lease expired
    assert pg(journal, "SELECT count(*), min(status) FROM tasks WHERE stage = 'sync:finish'") == [(1, "done")]
    events = pg(journal, "SELECT message FROM events WHERE kind = 'worker'")
    assert any(f"{task}: claimed again" in m for (m,) in events), events
    verify = subprocess.run([sys.executable, "-m", "migrate", "verify", str(plan), "--json"], capture_output=True,
                            text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_workers_sync_an_item_one_runner_loaded_over_ranges_found_by_split_tasks(pg_cluster, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dst"
    make_files(source, nested=300, flat=100)
    journal = pg_cluster.create_database()
    plan = blob_worker_plan(tmp_path, source, f'{{path: "{target}"}}', journal, chunk_files=60, delete=True)
    run = subprocess.run([sys.executable, "-m", "migrate", "run", str(plan), "--until", "load"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr
    (source / "flat" / "letter-000050.txt").unlink()
    (source / "ward-1" / "day-1" / "late.txt").write_bytes(b"a late letter\n")
    results = finished(start_until(plan, 2, "", "--sync"))
    assert [code for code, _ in results] == [0, 0], results
    assert tree_sha(target) == tree_sha(source)
    tasks = pg(journal, "SELECT spec, status FROM tasks WHERE stage = 'sync'")
    kinds = [Task.of(spec).kind for spec, _ in tasks]
    assert kinds.count("split") > 1 and "copy" in kinds and {status for _, status in tasks} == {"done"}
    leaves = sorted((Task.of(spec).range for spec, _ in tasks if Task.of(spec).kind == "copy"), key=lambda r: r.lo)
    assert leaves[0].lo == "" and leaves[-1].hi is None  # no worker loaded it: split tasks found the tiling
    assert all(a.hi == b.lo for a, b in zip(leaves, leaves[1:], strict=False))
    assert synced_in_all(journal) == (1, 0, 1)
