"""Benchmark: sync cycles PostgreSQL -> PostgreSQL on a 1M-row table, timed as whole `migrate sync` commands
(start-up, plan, connections, the cycle), side by side with `pg_dump -t observations | psql` of the whole table
in the same run, between the same two throwaway clusters on this machine: one holds the sources, the other the
targets, as a source server and an Azure server would. (One cluster for both would make every replication slot
decode the targets' own load too: a slot reads all of its server's WAL.)

Scenarios (each on a freshly loaded target):
  bulk-stamped   watermark method, the first sync after the load when every row shares one updated_at
  changes-wm     watermark method, 200k changed rows (180k updates that stamp updated_at, 20k deletes)
  changes-log    logical decoding, 220k changes (200k updates that do NOT touch updated_at, 20k deletes)
  small-wm/log   a cycle with 100 changes, both methods
  missed         updates that forget updated_at: the watermark method misses them (verify finds them),
                 logical decoding does not

    .venv/bin/python bench/bench_sync.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from bench_db_load import build_source, load_average, settle  # noqa: E402
from fixtures_postgres import PostgresCluster  # noqa: E402


def timed(*args: str) -> tuple[float, float, dict]:
    """Run `migrate ARGS --json` as a whole command; return (seconds, peak RSS MiB via wait4, the envelope)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "migrate", *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    body = json.loads(out.decode()) if out.strip() else {"error": err.decode()[-2000:]}
    if code not in (0, 3):
        raise SystemExit(f"migrate {' '.join(args)} failed ({code}): {body.get('error')}")
    return seconds, usage.ru_maxrss / 1024, body


def plan(folder: Path, name: str, source: str, target: str, incremental: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: {name}
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - {{name: obs, source: src, target: dst, tables: [observations], incremental: {incremental},
             parallel: 2, chunk_rows: 50000}}
        """), encoding="utf-8")
    return path


def pg_dump_between(source: PostgresCluster, source_db: str, target: PostgresCluster, target_db: str) -> float:
    """`pg_dump -t observations` from one cluster piped into `psql` on the other; seconds."""
    def tool(name: str) -> str:
        return str(source.bin_dir / name) if (source.bin_dir / name).exists() else name

    started = time.perf_counter()
    dump = subprocess.Popen([tool("pg_dump"), "-h", "127.0.0.1", "-p", str(source.port), "-U", source.user,
                             "-t", "observations", source_db], stdout=subprocess.PIPE)
    restore = subprocess.run([tool("psql"), "-h", "127.0.0.1", "-p", str(target.port), "-U", target.user, "-q",
                              "-v", "ON_ERROR_STOP=1", "-d", target_db], stdin=dump.stdout,
                             stdout=subprocess.DEVNULL, check=True)
    assert dump.stdout is not None
    dump.stdout.close()
    if dump.wait() != 0 or restore.returncode != 0:
        raise SystemExit("pg_dump | psql failed")
    return time.perf_counter() - started


def sql(cluster: PostgresCluster, db: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(cluster.dsn(db), autocommit=True) as conn:
        for part in statement.split("; "):
            conn.execute(part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rows = args.rows
    # as an installed package is: byte-compiled (this machine sets PYTHONDONTWRITEBYTECODE, which would make
    # every command compile our modules again)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "migrate")], check=True)
    settings = {"max_wal_size": "4GB", "checkpoint_timeout": "30min"}
    cluster = PostgresCluster(settings=settings).start()
    targets_cluster = PostgresCluster(settings=settings).start()
    results: dict[str, float] = {}
    peak = 0.0
    lines: list[str] = []
    try:
        folder = Path(tempfile.mkdtemp(prefix="bench-sync-"))
        print(f"building {rows:,} rows in a throwaway cluster on port {cluster.port} (targets on port "
              f"{targets_cluster.port}) ...", flush=True)

        def scenario(name: str, incremental: str, prepare: str, change: str) -> tuple[float, dict]:
            nonlocal peak
            source = build_source(cluster, rows, f"src_{name}")
            if prepare:
                sql(cluster, f"src_{name}", prepare)
            target = targets_cluster.create_database(f"dst_{name}")
            path = plan(folder, name.replace("_", "-"), source, target, incremental)
            timed("run", str(path), "--until", "load")
            sql(cluster, f"src_{name}", change)
            settle(cluster)
            settle(targets_cluster)
            seconds, rss, body = timed("sync", str(path))
            peak = max(peak, rss)
            result = body["result"]["results"][0]
            print(f"  {name}: {seconds:.2f} s (created {result['created']:,}, updated {result['updated']:,}, "
                  f"deleted {result['deleted']:,}), peak RSS {rss:.0f} MiB", flush=True)
            return seconds, {"path": path, "result": result}

        build_source(cluster, rows, "src_ref")
        settle(cluster, "src_ref")
        dumps = []
        for attempt in range(3):  # the peer's median of three
            targets_cluster.create_database(f"dump_target_{attempt}")
            settle(targets_cluster)  # no run pays for the previous one's pages and WAL (CHECKPOINT)
            dumps.append(pg_dump_between(cluster, "src_ref", targets_cluster, f"dump_target_{attempt}"))
        dump = sorted(dumps)[1]
        print(f"  pg_dump -t observations | psql (whole table, {rows:,} rows): "
              f"{' / '.join(f'{d:.2f}' for d in dumps)} s, median {dump:.2f} s", flush=True)
        stamp = "UPDATE observations SET updated_at = timestamptz '2026-01-01 00:00:00+00'; VACUUM ANALYZE observations"
        results["bulk-stamped"], _ = scenario("bulk", "{column: updated_at, overlap: 60s}", stamp, "SELECT 1")
        n_upd, n_del = rows * 18 // 100, rows * 2 // 100
        wm_change = (f"UPDATE observations SET value = value + 1, updated_at = now() WHERE id <= {n_upd}; "
                     f"DELETE FROM observations WHERE id > {rows - n_del}")
        results["changes-wm"], _ = scenario("wm", "{column: updated_at, overlap: 60s}", "", wm_change)
        log_change = (f"UPDATE observations SET value = value + 1 WHERE id <= {rows // 5}; "
                      f"DELETE FROM observations WHERE id > {rows - n_del}")
        results["changes-log"], log = scenario("log", "{method: logical}", "", log_change)
        small = "UPDATE observations SET value = value + 1, updated_at = now() WHERE id % 10000 = 7"
        results["small-wm"], _ = scenario("small_wm", "{column: updated_at, overlap: 60s}", "", small)
        results["small-log"], _ = scenario("small_log", "{method: logical}", "", small)
        # updates that forget updated_at, on the two scenarios' sources, then a verify of each
        forgot = "UPDATE observations SET unit = 'forgot updated_at' WHERE id % 5000 = 3"
        for name, method in (("small_wm", "watermark"), ("small_log", "logical")):
            sql(cluster, f"src_{name}", forgot)
            path = folder / f"{name.replace('_', '-')}.yaml"
            _, _, synced = timed("sync", str(path))
            _, _, verified = timed("verify", str(path))
            differences = len(verified["result"]["results"][0]["differences"]) if verified.get("result") else -1
            lines.append(f"  updates without updated_at, {method}: sync updated "
                         f"{synced['result']['results'][0]['updated']}, verify then finds {differences} difference(s)")
        timed("abandon", str(log["path"]), "--yes")
        timed("abandon", str(folder / "small-log.yaml"), "--yes")
    finally:
        cluster.stop()
        targets_cluster.stop()
    print(f"pg_dump -t observations | psql (whole table, median of 3): {dump:.2f} s; load average now "
          f"{load_average()}")
    targets = {"bulk-stamped": 0.7, "changes-wm": 0.5, "changes-log": 0.5}
    for name, seconds in results.items():
        if name in targets:
            print(f"{name}: {seconds:.2f} s = {seconds / dump:.2f}x pg_dump|psql's time (target <= {targets[name]}x)")
        else:
            print(f"{name}: {seconds:.2f} s for 100 changes (target < 1 s)")
    print("\n".join(lines))
    print(f"peak RSS of the sync commands: {peak:.0f} MiB (target <= 300 MiB)")


if __name__ == "__main__":
    main()
