"""Benchmark: one `migrate worker` loading a folder of small files into a folder, at two sizes (by default 20,000
and 100,000 files, nested two levels deep plus one flat folder of 5,000), against one `migrate run --until load`
of the same tree: whole commands, same run, peak RSS of each (wait4). A worker holds one chunk's entries at a
time (`chunk_files`), so its peak RSS should grow little with the tree (issue 15: under 10% from 20k to 100k
files); `migrate run` holds both listings and every path record.

    .venv/bin/python bench/bench_worker_blobs.py [--sizes 20000 100000] [--chunk-files 10000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fixtures_postgres import PostgresCluster  # noqa: E402
from test_worker_blobs import blob_worker_plan  # noqa: E402

FLAT = 5_000


def build_tree(root: Path, files: int) -> int:
    """`files` synthetic letters of 1-4 KiB: FLAT in one folder, the rest in ward-*/day-*/ folders."""
    size = 0
    for i in range(files):
        rel = f"flat/letter-{i:07d}.txt" if i < FLAT else f"ward-{i % 40:02d}/day-{i % 28:02d}/letter-{i}.txt"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (f"synthetic letter {i} ".encode() * 64)[: 1024 * (1 + i % 4)]
        path.write_bytes(data)
        size += len(data)
    return size


def whole(*args: str) -> tuple[float, float]:
    """(seconds, peak RSS MiB) of `migrate ARGS` as a whole command."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "migrate", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"migrate {' '.join(args)} failed: {err.decode()[-2000:]}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--chunk-files", type=int, default=10_000)
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "migrate")], check=True)
    cluster = PostgresCluster().start()
    rss: dict[int, float] = {}
    try:
        for files in args.sizes:
            with tempfile.TemporaryDirectory(prefix="bench-wblobs-") as name:
                folder = Path(name)
                size = build_tree(folder / "src", files)
                print(f"[{files:,} files, {size / 2**20:.0f} MiB]", flush=True)
                runs = {}
                for how in ("worker", "run"):
                    target = folder / f"dst-{how}"
                    (folder / how).mkdir()
                    path = blob_worker_plan(folder / how, folder / "src", f'{{path: "{target}"}}',
                                            cluster.create_database(), args.chunk_files, concurrency=16)
                    if how == "worker":
                        runs[how] = whole("worker", str(path), "--until", "load")
                    else:
                        runs[how] = whole("run", str(path), "--until", "load")
                    got = sum(1 for p in target.rglob("*") if p.is_file())
                    if got != files:
                        raise SystemExit(f"{how}: {got} files on the target, expected {files}")
                    shutil.rmtree(target)
                    seconds, peak = runs[how]
                    print(f"  one `migrate {how}`: {seconds:.2f} s ({files / seconds:,.0f} files/s), "
                          f"peak RSS {peak:.0f} MiB", flush=True)
                rss[files] = runs["worker"][1]
    finally:
        cluster.stop()
    if len(rss) >= 2:
        low, high = min(rss), max(rss)
        growth = rss[high] / rss[low] - 1
        print(f"worker peak RSS {rss[low]:.0f} MiB at {low:,} files, {rss[high]:.0f} MiB at {high:,} files: "
              f"{growth:+.1%} (target under +10%); load average "
              f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")


if __name__ == "__main__":
    main()
