"""Benchmark: a full load PostgreSQL -> PostgreSQL timed as whole commands, side by side, in the same run.

Ours is the whole `migrate run PLAN --until load` command as a subprocess (start-up, preflight, schema, load,
index and constraint builds, ANALYZE); the peers are `pg_dump SRC | psql DST` and `pgcopydb clone
--table-jobs 2 --index-jobs 2` (Debian package `pgcopydb`; `make pgcopydb` installs it). Each tool copies
the same source database into a fresh target database of the same throwaway cluster, in turns, round after
round; medians are compared and every ratio (their time / ours) is printed. Scenarios:

  one    a 1M-row table (`observations`) with a primary key and two secondary indexes
  many   a 20-table schema, 2M rows in all (100k rows per table, a primary key and a secondary index each)

Our peak RSS is measured on the child process (wait4). Every target is checked afterwards: row counts and
index counts equal to the source's. Ours runs byte-compiled, as an installed package does. The source is
VACUUM ANALYZEd once built, and a CHECKPOINT precedes every run, so no tool pays for another's writes.

    .venv/bin/python bench/bench_db_load.py [--scenarios one,many] [--rounds 3] [--parallel 2]
        [--chunk-rows 50000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

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


def write_plan(folder: Path, source: str, target: str, parallel: int, chunk_rows: int,
               tables: str = "[observations]",
               incremental: str = "{column: updated_at, overlap: 60s}") -> Path:
    """The bench's plan: by default the observations table with its watermark (verify and sync benches)."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "plan.yaml"
    watermark = f"\n            incremental: {incremental}" if incremental else ""
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
            tables: {tables}{watermark}
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


INDEXES = """
CREATE INDEX ix_observations_patient ON observations (patient_id);
CREATE INDEX ix_observations_code_at ON observations (code, observed_at);
"""

MANY_TABLE = """
CREATE TABLE {name} (id bigint PRIMARY KEY, ref bigint NOT NULL, label text NOT NULL, amount numeric(12,2),
  flag boolean NOT NULL, at timestamptz NOT NULL, note text);
INSERT INTO {name}
SELECT g, 1 + g % 7919, '{name}-' || (g % 1000), round((random() * 10000)::numeric, 2), g % 3 = 0,
       timestamptz '2021-06-01 00:00:00+00' + g * interval '17 second',
       CASE WHEN g % 8 = 0 THEN NULL ELSE repeat('x', g % 40) END
FROM generate_series(1, {rows}) g;
CREATE INDEX ix_{name}_ref ON {name} (ref);
"""


def build_one(cluster: PostgresCluster, rows: int, name: str) -> None:
    """`observations` (`rows` rows) with its primary key and two secondary indexes, in database `name`."""
    import psycopg

    build_source(cluster, rows, name)
    with psycopg.connect(cluster.dsn(name), autocommit=True) as conn:
        conn.execute(INDEXES)


def build_many(cluster: PostgresCluster, tables: int, rows: int, name: str) -> None:
    """`tables` tables of `rows // tables` rows each, a primary key and a secondary index each."""
    import psycopg

    cluster.create_database(name)
    with psycopg.connect(cluster.dsn(name), autocommit=True) as conn:
        for number in range(1, tables + 1):
            conn.execute(MANY_TABLE.format(name=f"t{number:02d}", rows=rows // tables))
        conn.execute("ANALYZE")


def timed_command(argv: list[str], env: dict[str, str] | None = None, stdin: Any = None) -> tuple[float, float]:
    """Run one whole command; (seconds, its peak RSS in MiB via wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, stdin=stdin)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n{out.decode()[-3000:]}\n"
                         f"{err.decode()[-3000:]}")
    return seconds, usage.ru_maxrss / 1024


def ours(plan: Path) -> tuple[float, float]:
    return timed_command([str(Path(sys.executable).parent / "migrate"), "run", str(plan), "--until", "load"])


def client_bin(cluster: PostgresCluster, tool: str) -> str:
    return str(cluster.bin_dir / tool) if (cluster.bin_dir / tool).exists() else tool


def pg_dump_psql(cluster: PostgresCluster, source_db: str, target_db: str) -> float:
    """`pg_dump SRC | psql DST`, the whole database (schema, data, indexes)."""
    common = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", cluster.user]
    started = time.perf_counter()
    dump = subprocess.Popen([client_bin(cluster, "pg_dump"), *common, "--no-owner", "--no-privileges", source_db],
                            stdout=subprocess.PIPE)
    restore = subprocess.run([client_bin(cluster, "psql"), *common, "-q", "-v", "ON_ERROR_STOP=1", "-d", target_db],
                             stdin=dump.stdout, stdout=subprocess.DEVNULL, check=False)
    assert dump.stdout is not None
    dump.stdout.close()
    if dump.wait() != 0 or restore.returncode != 0:
        raise SystemExit("pg_dump | psql failed")
    return time.perf_counter() - started


def pgcopydb_bin() -> str:
    found = shutil.which("pgcopydb")
    if found is None:
        raise SystemExit("pgcopydb not found: `make pgcopydb` (Debian package pgcopydb)")
    return found


def pgcopydb_clone(cluster: PostgresCluster, source_db: str, target_db: str, work: Path) -> float:
    """`pgcopydb clone --table-jobs 2 --index-jobs 2` from SRC into DST (a fresh work folder each time)."""
    argv = [pgcopydb_bin(), "clone", "--source", _uri(cluster, source_db), "--target", _uri(cluster, target_db),
            "--table-jobs", "2", "--index-jobs", "2", "--dir", str(work), "--no-owner", "--no-acl",
            "--skip-extensions"]
    seconds, _ = timed_command(argv)
    return seconds


def _uri(cluster: PostgresCluster, database: str) -> str:
    return f"postgres://{cluster.user}@127.0.0.1:{cluster.port}/{database}"


def shape(cluster: PostgresCluster, database: str) -> dict[str, tuple[int, int]]:
    """Per user table: (rows, indexes): what every tool must have produced."""
    import psycopg

    with psycopg.connect(cluster.dsn(database), autocommit=True) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace")]
        out = {}
        for table in tables:
            rows = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # type: ignore[index]
            indexes = conn.execute("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass",
                                   (f'"{table}"',)).fetchone()[0]  # type: ignore[index]
            out[table] = (rows, indexes)
        return out


def settle(cluster: PostgresCluster, database: str | None = None) -> None:
    """VACUUM ANALYZE a freshly built source (no tool pays for setting its hint bits), then CHECKPOINT (no tool
    pays for writing out the previous one's pages)."""
    import psycopg

    if database is not None:
        with psycopg.connect(cluster.dsn(database), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="one,many")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the one-table scenario")
    parser.add_argument("--many-rows", type=int, default=2_000_000, help="rows in all of the 20-table scenario")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tool, in turns; medians are compared")
    args = parser.parse_args()
    pgcopydb_bin()
    # as an installed package is: byte-compiled (this machine sets PYTHONDONTWRITEBYTECODE, which would make
    # every run of ours compile its modules again)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "migrate")], check=True)
    helps = [timed_command([str(Path(sys.executable).parent / "migrate"), "--help"])[0] for _ in range(5)]
    print(f"start-up: `migrate --help` {min(helps):.3f} s (best of 5)", flush=True)
    cluster = start_cluster()
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    summary: list[str] = []
    peak = 0.0
    try:
        for scenario in scenarios:
            source = f"src_{scenario}"
            print(f"[{scenario}] building the source on port {cluster.port} ...", flush=True)
            if scenario == "one":
                build_one(cluster, args.rows, source)
            elif scenario == "many":
                build_many(cluster, 20, args.many_rows, source)
            else:
                raise SystemExit(f"unknown scenario {scenario!r} (one, many)")
            settle(cluster, source)
            expected = shape(cluster, source)
            times: dict[str, list[float]] = {"ours": [], "pg_dump | psql": [], "pgcopydb": []}
            for round_ in range(args.rounds):
                with tempfile.TemporaryDirectory(prefix="bench-load-") as folder:
                    base = f"{scenario}_{round_}"
                    target = cluster.create_database(f"ours_{base}")
                    plan = write_plan(Path(folder), cluster.url(source), target, args.parallel, args.chunk_rows,
                                      tables='["*"]', incremental="")
                    settle(cluster)
                    seconds, rss = ours(plan)
                    times["ours"].append(seconds)
                    peak = max(peak, rss)
                    cluster.create_database(f"dump_{base}")
                    settle(cluster)
                    times["pg_dump | psql"].append(pg_dump_psql(cluster, source, f"dump_{base}"))
                    cluster.create_database(f"copydb_{base}")
                    settle(cluster)
                    times["pgcopydb"].append(pgcopydb_clone(cluster, source, f"copydb_{base}",
                                                            Path(folder) / "pgcopydb"))
                    for db in (f"ours_{base}", f"dump_{base}", f"copydb_{base}"):
                        got = shape(cluster, db)
                        if got != expected:
                            raise SystemExit(f"{db} differs from {source}: {got} != {expected}")
                print(f"  round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items())
                      + f"; ours peak RSS {rss:.0f} MiB; load average {load_average()}", flush=True)
            mine = statistics.median(times["ours"])
            for peer in ("pg_dump | psql", "pgcopydb"):
                other = statistics.median(times[peer])
                target_ratio = 1.1 if peer == "pg_dump | psql" else 1.0
                line = (f"[{scenario}] ours {mine:.2f} s vs {peer} {other:.2f} s: ratio {other / mine:.2f}x "
                        f"(their time / ours; target >= {target_ratio}x)")
                summary.append(line)
    finally:
        cluster.stop()
    print()
    for line in summary:
        print(line)
    print(f"ours: peak RSS {peak:.0f} MiB (target <= 300 MiB); parallel={args.parallel}, "
          f"chunk_rows={args.chunk_rows}; load average now {load_average()}")


if __name__ == "__main__":
    main()
