"""Benchmark: full load of 1,000,000 rows PostgreSQL -> PostgreSQL, ours vs `pg_dump -t | psql`.

Starts its own throwaway cluster (the test fixture's code), builds `observations` in database `src`, then
times `migrate`'s schema + load stages into `dst_ours` and `pg_dump -t observations src | psql dst_dump`
into `dst_dump`. Ours runs in a child process so its peak RSS is measured on its own.

    .venv/bin/python bench/bench_db_load.py [--rows 1000000] [--parallel 2] [--chunk-rows 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from fixtures_postgres import PostgresCluster  # noqa: E402

OBSERVATIONS = """
CREATE TABLE observations (id bigint PRIMARY KEY, patient_id bigint NOT NULL, code text NOT NULL,
  value numeric(12,4), unit text, observed_at timestamptz NOT NULL, note text NULL,
  updated_at timestamptz NOT NULL);
INSERT INTO observations
SELECT g, 1 + g % 50000, 'LOINC-' || (g % 400), round((random() * 1000)::numeric, 4),
       (ARRAY['mmol/L', 'mg/dL', 'bpm', '°C'])[1 + g % 4],
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1.5 second',
       CASE WHEN g % 10 = 0 THEN NULL ELSE 'observed on ward ' || (g % 37) || ' — ok' END,
       timestamptz '2020-01-01 00:00:00+00' + g * interval '1.5 second'
FROM generate_series(1, %(rows)s) g;
ANALYZE observations;
"""


def start_cluster() -> PostgresCluster:
    return PostgresCluster(settings={"max_wal_size": "4GB", "checkpoint_timeout": "30min"}).start()


def build_source(cluster: PostgresCluster, rows: int, name: str = "src") -> str:
    import psycopg

    url = cluster.create_database(name)
    with psycopg.connect(cluster.dsn(name), autocommit=True) as conn:
        conn.execute(OBSERVATIONS.replace("%(rows)s", str(rows)))
    return url


def write_plan(folder: Path, source: str, target: str, parallel: int, chunk_rows: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        component: bench
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - name: obs
            source: src
            target: dst
            tables: [observations]
            incremental: {{column: updated_at, overlap: 60s}}
            parallel: {parallel}
            chunk_rows: {chunk_rows}
        """), encoding="utf-8")
    return plan


CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
from migrate.databases import DatabaseEngine
from migrate.plan.loader import load_plan
from migrate.stages.engine import StageContext
from migrate.state.journal import Journal

loaded = load_plan({plan!r}, env={{}})
journal = Journal(loaded.state_url)
ctx = StageContext(loaded, journal)
engine = DatabaseEngine(loaded.plan.databases[0], loaded)
out = {{}}
for stage in {stages!r}:
    started = time.perf_counter()
    result = getattr(engine, stage)(ctx)
    out[stage] = {{"seconds": time.perf_counter() - started}}
    if stage == "verify":
        out[stage]["differences"] = [(d.kind, d.key, d.detail) for d in result.differences]
        out[stage]["checked"] = result.checked
    elif stage == "sync":
        out[stage].update(created=result.created, updated=result.updated, deleted=result.deleted,
                          lag=result.lag_seconds, metrics=result.metrics)
    else:
        out[stage]["summary"] = result.summary
engine.close()
print(json.dumps(out))
"""


def run_ours(plan: Path, stages: list[str]) -> tuple[dict, float]:
    """Run our stages in a child process; return its JSON output and its peak RSS in MiB."""
    script = CHILD.format(repo=str(REPO), plan=str(plan), stages=stages)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"our child failed ({proc.returncode}):\n{err.decode()}")
    return json.loads(out.decode().strip().splitlines()[-1]), usage.ru_maxrss / 1024


def pg_dump_pipe(cluster: PostgresCluster, source_db: str, target_db: str) -> float:
    bin_dir = cluster.bin_dir
    common = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.user]
    pg_dump = str(bin_dir / "pg_dump") if (bin_dir / "pg_dump").exists() else "pg_dump"
    psql = str(bin_dir / "psql") if (bin_dir / "psql").exists() else "psql"
    started = time.perf_counter()
    dump = subprocess.Popen([pg_dump, *common, "-t", "observations", source_db], stdout=subprocess.PIPE)
    restore = subprocess.run([psql, *common, "-q", "-v", "ON_ERROR_STOP=1", "-d", target_db],
                             stdin=dump.stdout, stdout=subprocess.DEVNULL, check=True)
    assert dump.stdout is not None
    dump.stdout.close()
    if dump.wait() != 0 or restore.returncode != 0:
        raise SystemExit("pg_dump | psql failed")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each; medians are compared")
    args = parser.parse_args()
    cluster = start_cluster()
    ours: list[float] = []
    theirs: list[float] = []
    peak = 0.0
    try:
        print(f"building {args.rows:,} rows in a throwaway cluster on port {cluster.port} ...", flush=True)
        source = build_source(cluster, args.rows)
        for round_ in range(args.rounds):
            target = cluster.create_database(f"dst_ours_{round_}")
            with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
                plan = write_plan(Path(folder), source, target, args.parallel, args.chunk_rows)
                result, rss = run_ours(plan, ["preflight", "schema", "load"])
            ours.append(result["schema"]["seconds"] + result["load"]["seconds"])
            peak = max(peak, rss)
            cluster.create_database(f"dst_dump_{round_}")
            theirs.append(pg_dump_pipe(cluster, "src", f"dst_dump_{round_}"))
            print(f"  round {round_ + 1}: ours {ours[-1]:.2f} s, pg_dump | psql {theirs[-1]:.2f} s", flush=True)
    finally:
        cluster.stop()
    mine, other = statistics.median(ours), statistics.median(theirs)
    print(f"ours (schema + load, parallel={args.parallel}, chunk_rows={args.chunk_rows}): median {mine:.2f} s, "
          f"{args.rows / mine:,.0f} rows/s, peak RSS {peak:.0f} MiB")
    print(f"pg_dump -t observations src | psql dst: median {other:.2f} s, {args.rows / other:,.0f} rows/s")
    print(f"ratio (their time / our time): {other / mine:.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
