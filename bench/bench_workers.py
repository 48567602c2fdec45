"""Benchmark: the load of one 1M-row PostgreSQL table by one runner (`migrate run --until load`) against the same
load by N local workers (`migrate run --workers N --until load`, claims in a PostgreSQL journal), whole commands,
same run, same source; and the work table's own rate: claims + done-marks per second by 4 processes.

Everything runs on this machine (source, target and journal in one throwaway cluster), so the figures show the
coordination's cost, not scale-out: workers pay off when each runs on its own machine against servers that can
take more (see the README, Scale-out).

    .venv/bin/python bench/bench_workers.py [--rows 1000000] [--workers 2 4]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_db_load import build_source  # noqa: E402
from fixtures_postgres import PostgresCluster  # noqa: E402

CLAIMER = """
import sys, time
sys.path.insert(0, {repo!r})
from migrate.state.claims import WorkTable
from migrate.state.journal import Journal
work = WorkTable(Journal(sys.argv[1]), owner=sys.argv[2], ttl=60)
while claims := work.claim("bench", "copy", limit=1):
    for claim in claims:
        work.done(claim, units=1)
"""


def plan(folder: Path, name: str, source: str, target: str, journal: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: {name}
        state: "{journal}"
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - {{name: obs, source: src, target: dst, tables: [observations], chunk_rows: 50000}}
        """), encoding="utf-8")
    return path


def timed(*args: str) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "migrate", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"migrate {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - started


def claim_rate(cluster: PostgresCluster, tasks: int = 5000, processes: int = 4) -> float:
    from migrate.state.claims import WorkTable
    from migrate.state.journal import Journal

    url = cluster.create_database("claims")
    WorkTable(Journal(url), owner="setup").add("bench", "copy", [f"t{i}" for i in range(tasks)])
    script = CLAIMER.format(repo=str(REPO))
    started = time.perf_counter()
    runners = [subprocess.Popen([sys.executable, "-c", script, url, f"r{i}"]) for i in range(processes)]
    for runner in runners:
        runner.wait()
    return tasks / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    cluster = PostgresCluster(settings={"max_wal_size": "4GB", "checkpoint_timeout": "30min"}).start()
    lines = []
    try:
        source = build_source(cluster, args.rows)
        folder = Path(tempfile.mkdtemp(prefix="bench-workers-"))
        one = timed("run", str(plan(folder, "single", source, cluster.create_database("dst_single"),
                                    cluster.create_database("journal_single"))), "--until", "load")
        lines.append(f"one runner: {one:.2f} s, {args.rows / one:,.0f} rows/s")
        for count in args.workers:
            path = plan(folder, f"workers{count}", source, cluster.create_database(f"dst_{count}"),
                        cluster.create_database(f"journal_{count}"))
            seconds = timed("run", str(path), "--workers", str(count), "--until", "load")
            lines.append(f"{count} workers: {seconds:.2f} s, {args.rows / seconds:,.0f} rows/s "
                         f"({one / seconds:.2f}x one runner)")
        rate = claim_rate(cluster)
        lines.append(f"work table: {rate:,.0f} claims + done-marks per second (4 processes, one task per claim)")
    finally:
        cluster.stop()
    print("\n".join(lines))
    print(json.dumps({"rows": args.rows}))


if __name__ == "__main__":
    main()
