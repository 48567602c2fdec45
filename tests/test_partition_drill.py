"""The scale-out acceptance drill (`make drill`, not part of `make test`): one plan of three items over four
`migrate worker` processes sharing a throwaway PostgreSQL journal: a 2,000,000-row PostgreSQL table into
PostgreSQL, 20,000 nested files (a flat folder of 5,000 among them) into a folder, and 2,000 files into Azurite.
One worker is killed with kill -9 while it holds a table chunk whose target writes are not committed. Every
outcome is checked outside the tool: md5 of both tables' COPY output and no duplicate key, sha256 of every file
on both sides, the chunks tiling their key and path spaces, each task done once by its latest claim, the
reclaim in the journal, `migrate verify` clean; the whole load under 120 seconds. Then the workers verify in parts
and run one sync cycle (late files, deletes, updated rows), checked outside the tool the same way."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fixtures_azurite import Azurite, env_with
from test_db_postgres import dsn, pg
from test_direction import table_md5
from test_worker import held_in_flight, stop_holding
from test_worker_blobs import make_files, tree_sha

from migrate.blobs.partition import Task
from migrate.databases.keyranges import decode_ranges

pytestmark = [pytest.mark.drill, pytest.mark.postgres, pytest.mark.azurite]

ROWS = 2_000_000


def test_four_workers_three_items_one_killed_holding_uncommitted_rows(pg_cluster, azurite: Azurite,
                                                                      blob_container: str, tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    source, target, journal = (pg_cluster.create_database() for _ in range(3))
    pg(source, "CREATE TABLE observations (id bigint PRIMARY KEY, patient int NOT NULL, code text, "
               "value numeric, note text)")
    pg(source, f"INSERT INTO observations SELECT g, g % 997, 'LOINC-' || g % 400, g / 7.0, 'note ' || g % 37 "
               f"FROM generate_series(1, {ROWS}) g")
    letters = make_files(tmp_path / "letters", nested=15_000, flat=5_000)
    scans = make_files(tmp_path / "scans", nested=1_500, flat=500)
    plan = tmp_path / "plan.yaml"
    plan.write_text(textwrap.dedent(f"""\
        version: 1
        component: drill
        state: "{journal}"
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
          letters_nas: {{path: "{tmp_path / 'letters'}"}}
          letters_new: {{path: "{tmp_path / 'letters-copy'}"}}
          scans_nas: {{path: "{tmp_path / 'scans'}"}}
          scans_azure: {{connection_string: "${{AZ_CS}}", container: {blob_container}}}
        databases:
          - {{name: obs, source: src, target: dst, tables: [observations], chunk_rows: 100000, parallel: 2}}
        blobs:
          - {{name: letters, source: letters_nas, target: letters_new, chunk_files: 2000, concurrency: 8,
             delete: true}}
          - {{name: scans, source: scans_nas, target: scans_azure, chunk_files: 500, concurrency: 8}}
        """), encoding="utf-8")
    env = env_with(AZ_CS=azurite.connection_string)
    journal_before = journal_activity(journal)
    started = time.monotonic()
    workers = [subprocess.Popen([sys.executable, "-m", "migrate", "worker", str(plan), "--shard", f"{i}/4",
                                 "--lease", "3s", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for i in range(4)]
    pid, task = stop_holding(journal, lambda: held_in_flight(journal, target))
    os.kill(pid, signal.SIGKILL)  # its chunk's rows are written on the target, not committed
    outs = [w.communicate(timeout=300) for w in workers]
    seconds = time.monotonic() - started
    codes = sorted(w.returncode for w in workers)
    assert codes == [-signal.SIGKILL, 0, 0, 0], outs
    time.sleep(1)  # the workers' last statistics reach pg_stat_database
    commits, written = (after - before for after, before in zip(journal_activity(journal), journal_before,
                                                                strict=True))

    # the table: every row once, equal to the source outside the tool
    assert table_md5(dsn(source), "observations") == table_md5(dsn(target), "observations")
    assert pg(target, "SELECT count(*), count(DISTINCT id) FROM observations") == [(ROWS, ROWS)]
    ranges = decode_ranges(json.loads(pg(journal, "SELECT value FROM item_state WHERE item = 'obs' "
                                                  "AND key = 'ranges:observations'")[0][0]))
    assert ranges[0].lo is None and ranges[-1].hi is None
    assert all(a.hi == b.lo for a, b in zip(ranges, ranges[1:], strict=False))
    # the files: each on its target once, same bytes
    assert tree_sha(tmp_path / "letters-copy") == letters
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        blob_container)
    names = [b.name for b in container.list_blobs()]
    assert sorted(names) == sorted(scans)
    assert all(hashlib.sha256(container.download_blob(n).readall()).hexdigest() == scans[n] for n in names)
    # the blob chunks tile each path space, every file in exactly one
    for item, files in (("letters", letters), ("scans", scans)):
        specs = [s for (s,) in pg(journal, "SELECT spec FROM tasks WHERE item = %s AND stage = 'load'", (item,))]
        leaves = sorted((t.range for t in map(Task.of, specs) if t.kind == "copy"), key=lambda r: r.lo)
        assert leaves[0].lo == "" and leaves[-1].hi is None
        assert all(a.hi == b.lo for a, b in zip(leaves, leaves[1:], strict=False))
        assert all(sum(1 for r in leaves if p in r) == 1 for p in files)
    # every task done once, by its latest claim; the killed worker's chunk claimed again, and said
    assert pg(journal, "SELECT count(*) FROM tasks WHERE status <> 'done'") == [(0,)]
    fence = pg(journal, "SELECT fence, owner FROM tasks WHERE item = 'obs' AND task = %s", (task,))[0]
    assert fence[0] >= 2 and not fence[1].endswith(f":{pid}")
    events = pg(journal, "SELECT message FROM events WHERE kind = 'worker' AND message LIKE %s", (f"{task}:%",))
    assert events and "claimed again (fence" in events[0][0]
    tasks, claims = pg(journal, "SELECT count(*), sum(fence) FROM tasks")[0]
    [(record_bytes, records)] = pg(journal, "SELECT pg_total_relation_size('chunks'), count(*) FROM chunks")
    rates = {item: units / seconds for item, units, seconds in pg(journal, (
        "SELECT s.item, max(c.units), extract(epoch FROM max(s.at) FILTER (WHERE s.status = 'done') - "
        "min(s.at) FILTER (WHERE s.status = 'running')) FROM stage_log s JOIN (SELECT item, sum(units) AS units "
        "FROM tasks WHERE stage = 'load' GROUP BY item) c ON c.item = s.item WHERE s.stage = 'load' "
        "GROUP BY s.item"))}
    # verify: by the four workers in parts, then by one runner (`migrate verify`), both clean
    begun = time.monotonic()
    verifiers = [subprocess.Popen([sys.executable, "-m", "migrate", "worker", str(plan), "--shard", f"{i}/4",
                                   "--until", "verify", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for i in range(4)]
    outs = [w.communicate(timeout=300) for w in verifiers]
    in_parts = time.monotonic() - begun
    assert [w.returncode for w in verifiers] == [0, 0, 0, 0], outs
    found = pg(journal, "SELECT item, clean, checked, detail FROM verifications ORDER BY item")
    assert [(item, clean, checked) for item, clean, checked, _ in found] == [
        ("letters", True, len(letters)), ("obs", True, ROWS), ("scans", True, len(scans))]
    assert all(json.loads(detail)["parts"] > 1 for *_, detail in found)
    begun = time.monotonic()
    verify = subprocess.run([sys.executable, "-m", "migrate", "verify", str(plan), "--json"], capture_output=True,
                            text=True, env=env)
    alone = time.monotonic() - begun
    assert verify.returncode == 0, verify.stdout[-3000:]
    # a sync cycle by the four workers, every item in parts: the load's key ranges and path ranges
    def change(round_: int) -> None:  # 200 rows updated; 300 late letters and 50 gone; 50 late scans
        pg(source, f"UPDATE observations SET value = value + 1 WHERE id % 10000 = {round_}")
        for i in range(300):
            path = tmp_path / "letters" / f"ward-{i % 13}" / f"late-{round_}" / f"letter-{i}.txt"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(f"a late letter {i}\n".encode())
        for gone in sorted(letters)[round_::400]:
            (tmp_path / "letters" / gone).unlink()
        for i in range(50):
            (tmp_path / "scans" / "flat" / f"late-{round_}-{i}.txt").write_bytes(f"a late scan {i}\n".encode())

    def same() -> None:  # outside the tool
        assert table_md5(dsn(source), "observations") == table_md5(dsn(target), "observations")
        assert tree_sha(tmp_path / "letters-copy") == tree_sha(tmp_path / "letters")
        assert sorted(b.name for b in container.list_blobs()) == sorted(tree_sha(tmp_path / "scans"))

    change(0)
    begun = time.monotonic()
    syncers = [subprocess.Popen([sys.executable, "-m", "migrate", "worker", str(plan), "--shard", f"{i}/4",
                                 "--sync", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env) for i in range(4)]
    outs = [w.communicate(timeout=300) for w in syncers]
    synced = time.monotonic() - begun
    assert [w.returncode for w in syncers] == [0, 0, 0, 0], outs
    same()
    parts = dict(pg(journal, "SELECT item, count(*) FROM tasks WHERE stage = 'sync' GROUP BY item"))
    cycle = dict(pg(journal, "SELECT item, round(extract(epoch FROM max(at) FILTER (WHERE status = 'done') - min(at) "
                             "FILTER (WHERE status = 'running'))::numeric, 1) FROM stage_log WHERE stage = 'sync' "
                             "GROUP BY item"))
    change(1)  # the same again, synced by one runner (`migrate sync`), for comparison
    begun = time.monotonic()
    single = subprocess.run([sys.executable, "-m", "migrate", "sync", str(plan), "--json"], capture_output=True,
                            text=True, env=env)
    by_one = time.monotonic() - begun
    assert single.returncode == 0, single.stdout[-3000:] + single.stderr[-3000:]
    same()
    print(f"\ndrill: {ROWS:,} rows + {len(letters):,} files to a folder + {len(scans):,} files to Azurite by 4 "
          f"workers (one killed) in {seconds:.1f} s: {ROWS / seconds:,.0f} rows/s and "
          f"{(len(letters) + len(scans)) / seconds:,.0f} files/s overall; per item: obs {rates['obs']:,.0f} rows/s, "
          f"letters {rates['letters']:,.0f} files/s, scans {rates['scans']:,.0f} files/s; {tasks} tasks, {claims} "
          f"claims; the journal took {commits:,} commits ({commits / seconds:,.0f}/s) and {written:,} row writes "
          f"({written / seconds:,.0f}/s), {records:,} records of {record_bytes / records:,.0f} bytes each "
          f"(table and indexes); verified in parts by 4 workers in {in_parts:.1f} s, by one `migrate "
          f"verify` in {alone:.1f} s; one sync cycle by 4 workers ({parts.get('obs', 0)} table parts, "
          f"{parts.get('letters', 0)} + {parts.get('scans', 0)} blob parts) in {synced:.1f} s (obs {cycle['obs']} s, "
          f"letters {cycle['letters']} s, scans {cycle['scans']} s), the same changes by one `migrate sync` in "
          f"{by_one:.1f} s")
    assert seconds < 120


def journal_activity(journal: str) -> tuple[int, int]:
    """(commits, rows inserted + updated + deleted) of the journal database so far."""
    [(commits, rows)] = pg(journal, "SELECT xact_commit, tup_inserted + tup_updated + tup_deleted FROM "
                                    "pg_stat_database WHERE datname = current_database()")
    return int(commits), int(rows)
