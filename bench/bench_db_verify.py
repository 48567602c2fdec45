"""Benchmark: verification of 1,000,000 identical rows, ours vs reladiff; finding one changed row; one sync
cycle with 100 changed rows; our peak RSS.

Starts its own throwaway cluster, builds `observations` in `src`, loads it into `dst` with our load stage,
then times (ours and reladiff, alternately, medians of --rounds):
  1. verify of the identical tables,
  2. verify after one target row changed NULL -> text (both must name that row),
then puts the row back and, each round, changes 100 source rows and times one `sync` cycle (a fresh process,
as `migrate sync` runs), and finally verifies the target is clean.
reladiff (PyPI `reladiff[postgresql]`) is installed into .bench/reladiff-venv on first use.

    .venv/bin/python bench/bench_db_verify.py [--rows 1000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

from bench_db_load import REPO, build_source, run_ours, start_cluster, write_plan
from fixtures_postgres import PostgresCluster

RELADIFF_VENV = REPO / ".bench" / "reladiff-venv"
COLUMNS = ["patient_id", "code", "value", "unit", "observed_at", "note", "updated_at"]
TAMPERED_ID = 500_000  # id % 10 == 0: its note is NULL on the source


def reladiff_bin() -> Path:
    exe = RELADIFF_VENV / "bin" / "reladiff"
    if not exe.exists():
        print("installing reladiff[postgresql] into .bench/reladiff-venv ...", flush=True)
        venv.create(RELADIFF_VENV, with_pip=True)
        subprocess.run([str(RELADIFF_VENV / "bin" / "pip"), "install", "-q", "reladiff[postgresql]"], check=True)
    return exe


def run_reladiff(cluster: PostgresCluster, threads: int, *extra: str) -> tuple[float, list[str]]:
    def url(db: str) -> str:
        return f"postgresql://{cluster.user}@127.0.0.1:{cluster.port}/{db}"

    args = [str(reladiff_bin()), url("src"), "observations", url("dst"), "observations", "-k", "id",
            "-j", str(threads), *extra]
    for column in COLUMNS:
        args += ["-c", column]
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"reladiff failed: {done.stderr}")
    return elapsed, [line for line in done.stdout.splitlines() if line.strip()]


def sql(cluster: PostgresCluster, db: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(cluster.dsn(db), autocommit=True) as conn:
        conn.execute(statement)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=2, help="reladiff threads per database (-j)")
    parser.add_argument("--parallel", type=int, default=2, help="our item.parallel")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reladiff_bin()
    cluster = start_cluster()
    peak = 0.0
    times: dict[str, list[float]] = {}
    try:
        print(f"building {args.rows:,} rows in a throwaway cluster on port {cluster.port} ...", flush=True)
        source = build_source(cluster, args.rows)
        target = cluster.create_database("dst")
        with tempfile.TemporaryDirectory(prefix="bench-verify-") as folder:
            load_plan = write_plan(Path(folder) / "load", source, target, args.parallel, 50_000)
            _, rss = run_ours(load_plan, ["preflight", "schema", "load"])
            peak = max(peak, rss)
            sql(cluster, "dst", "VACUUM ANALYZE observations")

            def ours_verify(expect: int) -> float:
                # a fresh journal each time: ours plans its key ranges too, as reladiff does
                fresh = write_plan(Path(tempfile.mkdtemp(dir=folder)), source, target, args.parallel, 50_000)
                result, rss = run_ours(fresh, ["verify"])
                nonlocal peak
                peak = max(peak, rss)
                found = result["verify"]["differences"]
                assert len(found) == expect, found
                if expect:
                    assert found == [["different", f"observations:id={TAMPERED_ID}", "columns: note"]], found
                return float(result["verify"]["seconds"])

            for round_ in range(args.rounds):
                times.setdefault("ours clean", []).append(ours_verify(0))
                elapsed, lines = run_reladiff(cluster, args.threads)
                assert not lines, lines
                times.setdefault("reladiff clean", []).append(elapsed)
                print(f"  round {round_ + 1} identical: ours {times['ours clean'][-1]:.2f} s, "
                      f"reladiff {elapsed:.2f} s", flush=True)
            sql(cluster, "dst", f"UPDATE observations SET note = 'typed in' WHERE id = {TAMPERED_ID}")
            for round_ in range(args.rounds):
                times.setdefault("ours one row", []).append(ours_verify(1))
                # reladiff 0.6.0 crashes (TypeError sorting None against str) when a NULL became text,
                # unless told not to sort its output
                crash, _ = run_reladiff(cluster, args.threads)
                times.setdefault("reladiff crash", []).append(crash)
                elapsed, lines = run_reladiff(cluster, args.threads, "--skip-sort-results")
                assert sorted(line.split(",")[0] for line in lines if line[:1] in "+-") == [f"+ {TAMPERED_ID}",
                                                                                  f"- {TAMPERED_ID}"], lines
                times.setdefault("reladiff one row", []).append(elapsed)
                print(f"  round {round_ + 1} one changed row: ours {times['ours one row'][-1]:.2f} s, "
                      f"reladiff {elapsed:.2f} s", flush=True)
            sql(cluster, "dst", f"UPDATE observations SET note = NULL WHERE id = {TAMPERED_ID}")
            for round_ in range(args.rounds):
                sql(cluster, "src", f"UPDATE observations SET note = 'changed {round_}', updated_at = now() "
                                    f"WHERE id IN (SELECT (g * 9973 + {round_}) % {args.rows} + 1 "
                                    "FROM generate_series(1, 100) g)")
                result, rss = run_ours(load_plan, ["sync"])
                peak = max(peak, rss)
                sync = result["sync"]
                assert (sync["created"], sync["updated"], sync["deleted"]) == (0, 100, 0), sync
                times.setdefault("sync", []).append(sync["seconds"])
                print(f"  round {round_ + 1} sync of 100 changed rows: {sync['seconds']:.2f} s", flush=True)
            result, rss = run_ours(load_plan, ["verify"])
            assert not result["verify"]["differences"]
    finally:
        cluster.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"verify {args.rows:,} identical rows: ours {med['ours clean']:.2f} s vs reladiff -j {args.threads} "
          f"{med['reladiff clean']:.2f} s (ratio ours/reladiff {med['ours clean'] / med['reladiff clean']:.2f}; "
          "target <= 1.0)")
    print(f"find one NULL->text row:  ours {med['ours one row']:.2f} s = "
          f"{med['ours one row'] / med['reladiff clean']:.2f}x reladiff's clean time (target < 2x); "
          f"reladiff {med['reladiff one row']:.2f} s with --skip-sort-results (without it, it crashes after "
          f"{med['reladiff crash']:.2f} s: TypeError comparing None with str)")
    print(f"one sync cycle, 100 changed rows of {args.rows:,}: median {med['sync']:.2f} s (target < 1 s), "
          f"lag after it {sync['lag']} s; verify afterwards clean")
    print(f"our peak RSS (load, verify, sync children): {peak:.0f} MiB (target <= 300 MiB)")


if __name__ == "__main__":
    sys.exit(main())
