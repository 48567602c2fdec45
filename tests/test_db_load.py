"""The PostgreSQL load at speed: COPY FREEZE where a table is opened (and kill -9 around it), index builds on
their own sessions beside other tables' copies, one bounded budget of connections per side, and the post-data
split. Checked outside the tool: pg_catalog, pg_visibility, pg_stat_activity and md5 of sorted COPY output."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest
from test_db_postgres import dsn, pg
from test_db_sqlite import Harness
from test_pg_schema import PAGILA_LIKE, copy_md5

from helpers import cli_process
from migrate.databases import load as loading
from migrate.databases import pgdump, postdata, sampledranges, scheduler
from migrate.databases.endpoint import Endpoint
from migrate.databases.keyranges import decode_ranges

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[1]


def readings(url: str, name: str, rows: int) -> None:
    """A table `name` of `rows` rows with a primary key and a secondary index."""
    pg(url, f"""CREATE TABLE {name} (id bigint PRIMARY KEY, ward int NOT NULL, value numeric(8,2), note text);
        INSERT INTO {name} SELECT g, g % 37, g / 7.0, CASE WHEN g % 5 = 0 THEN NULL ELSE 'r' || g END
        FROM generate_series(1, {rows}) g;
        CREATE INDEX ix_{name}_ward ON {name} (ward); ANALYZE {name};""")


def write_plan(folder: Path, source: str, target: str, tables: str = '["*"]', parallel: int = 2,
               chunk_rows: int = 1000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "plan.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        component: speed
        connections:
          src: {{url: "{source}"}}
          dst: {{url: "{target}"}}
        databases:
          - name: db
            source: src
            target: dst
            tables: {tables}
            parallel: {parallel}
            chunk_rows: {chunk_rows}
        """), encoding="utf-8")
    return path


def frozen_pages(url: str, table: str) -> tuple[int, int]:
    """(all-frozen pages, pages) of a table, from its visibility map."""
    pg(url, "CREATE EXTENSION IF NOT EXISTS pg_visibility")
    frozen = pg(url, f"SELECT all_frozen FROM pg_visibility_map_summary('{table}')")[0][0]
    pages = pg(url, f"SELECT pg_relation_size('{table}') / current_setting('block_size')::int")[0][0]
    return int(frozen), int(pages)


def same(source: str, target: str, tables: list[str]) -> None:
    for table in tables:
        assert copy_md5(source, f"SELECT * FROM {table}") == copy_md5(target, f"SELECT * FROM {table}"), table


def test_a_fresh_load_copies_every_table_frozen_and_builds_its_indexes(
        pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from migrate.databases import copypipe

    names = [f"r{n}" for n in range(4)]
    for number, name in enumerate(names):
        readings(pg_url, name, 3000 + 1000 * number)
    # the two larger tables' openings read through psql (500,000 rows in earnest), the others in the driver
    monkeypatch.setattr(copypipe, "MIN_ROWS", 4500)
    piped: list[str] = []
    real = copypipe.copy_through_psql

    def through_psql(source, target, select_sql, copy_in, fmt):  # type: ignore[no-untyped-def]
        piped.append(copy_in.split(" ")[1])
        return real(source, target, select_sql, copy_in, fmt)

    monkeypatch.setattr(copypipe, "copy_through_psql", through_psql)
    h = Harness(write_plan(tmp_path, pg_url, pg_url2))
    h.engine.preflight(h.ctx)
    h.engine.schema(h.ctx)
    result = h.engine.load(h.ctx)
    h.close()
    assert sorted(piped) == ["r2", "r3"]
    assert result.metrics["frozen_tables"] == 4  # each opened whole, frozen
    same(pg_url, pg_url2, names)
    for name in names:
        frozen, pages = frozen_pages(pg_url2, name)
        assert pages > 0 and frozen == pages, (name, frozen, pages)
    indexes = "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass ORDER BY 1"
    for name in names:
        assert pg(pg_url2, indexes, (name,)) == pg(pg_url, indexes, (name,)) == [(f"ix_{name}_ward",),
                                                                                   (f"{name}_pkey",)]
    constraints = "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s::regclass"
    for name in names:  # the key built as pgcopydb does (unique index, then the constraint over it): the same
        assert pg(pg_url2, constraints, (name,)) == pg(pg_url, constraints, (name,)) == [
            (f"{name}_pkey", "p", "PRIMARY KEY (id)")]
    notes = result.metrics["post_load"]
    assert any("8 index/constraint builds in parallel" in n for n in notes), notes
    assert "analyzed 4 table(s)" in notes
    # statistics exist: ANALYZE ran after the load
    assert pg(pg_url2, "SELECT count(DISTINCT tablename) FROM pg_stats WHERE schemaname = 'public'") == [(4,)]


def test_a_table_larger_than_an_opening_is_frozen_in_its_first_part_and_the_rest_copied_in_parallel(
        pg_url: str, pg_url2: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "OPENING_MAX_ROWS", 11_000)  # 1,000,000 in earnest: a smaller table here
    readings(pg_url, "big", 30_000)
    h = Harness(write_plan(tmp_path, pg_url, pg_url2, parallel=3))
    h.engine.preflight(h.ctx)
    h.engine.schema(h.ctx)
    result = h.engine.load(h.ctx)
    ranges = decode_ranges(h.ctx.journal.get("db", "ranges:big"))
    h.close()
    frozen, pages = frozen_pages(pg_url2, "big")
    # ranges of about 1,000 rows (from the table's statistics): the opening copies the first 11, frozen; the
    # others follow, 3 at a time
    assert 25 <= len(ranges) <= 35
    assert 0.25 * pages < frozen < 0.5 * pages, (frozen, pages)
    assert result.metrics["frozen_tables"] == 1 and result.metrics["chunks_this_run"] == len(ranges)
    same(pg_url, pg_url2, ["big"])


KILLABLE = """
import sys, time
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from pathlib import Path
from migrate.databases import load as loading
from migrate.databases import scheduler
from test_db_sqlite import Harness

scheduler.OPENING_MAX_ROWS = 11_000  # openings of 11 chunks of 1,000 rows (1,000,000 rows in earnest)
real = loading.copy_range
seen = {{"freeze": 0, "fresh": 0, "replace": 0}}
def paced(pair, rng, mode="replace"):
    rows = real(pair, rng, mode)
    seen[mode] += 1
    if seen[{moment!r}] == {count}:  # committed, not journaled yet: the worst moment to die
        Path({marker!r}).write_text("now")
        time.sleep(60)
    return rows
loading.copy_range = paced
h = Harness({plan!r})
h.run()
print("finished")
"""


@pytest.mark.parametrize("moment,count,frozen_after", [("freeze", 1, 1), ("fresh", 4, 0)])
def test_kill_9_around_a_frozen_opening_resumes_without_loss_or_duplicates(
        pg_url: str, pg_url2: str, tmp_path: Path, moment: str, count: int, frozen_after: int) -> None:
    """Killed after the opening TRUNCATE + COPY FREEZE committed (not journaled): the rerun opens the table
    again (nothing of it is done). Killed after chunks that followed it committed: the rerun replaces the
    ranges not journaled (delete + copy) and opens nothing with TRUNCATE, keeping what is done."""
    readings(pg_url, "big", 30_000)
    plan_path = write_plan(tmp_path, pg_url, pg_url2, parallel=3)
    marker = tmp_path / "marker"
    script = tmp_path / "load.py"
    script.write_text(KILLABLE.format(repo=str(REPO), tests=str(REPO / "tests"), plan=str(plan_path),
                                      moment=moment, count=count, marker=str(marker)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    there = pg(pg_url2, "SELECT count(*) FROM big")[0][0]
    assert 0 < there < 30_000
    journal = sqlite3.connect(tmp_path / ".migrate" / "speed.db")
    done = journal.execute("SELECT count(*) FROM chunks WHERE status = 'done'").fetchone()[0]
    journal.close()
    if moment == "freeze":
        assert done == 0
    else:  # the opening (11 chunks) and some that followed it are journaled, not all
        assert 11 <= done < 31
    h = Harness(plan_path)
    result = h.engine.load(h.ctx)
    assert result.metrics["frozen_tables"] == frozen_after
    assert result.metrics["rows"] == 30_000
    assert pg(pg_url2, "SELECT count(*), count(DISTINCT id) FROM big") == [(30_000, 30_000)]
    same(pg_url, pg_url2, ["big"])
    assert h.engine.verify(h.ctx).clean
    h.close()


def test_index_builds_run_beside_other_tables_copies_within_parallel(pg_url: str, pg_url2: str,
                                                                     tmp_path: Path) -> None:
    readings(pg_url, "small", 2000)
    readings(pg_url, "large", 300_000)
    spans: list[tuple[str, str, float, float]] = []
    lock = threading.Lock()
    real_copy, real_build = loading.copy_range, postdata.run_build

    def copy(pair, rng, mode=loading.REPLACE):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        rows = real_copy(pair, rng, mode)
        with lock:
            spans.append(("copy", pair.label, started, time.monotonic()))
        return rows

    def build(conn, what, sessions):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        said = real_build(conn, what, sessions)
        with lock:
            spans.append(("build", what.table, started, time.monotonic()))
        return said

    loading.copy_range, postdata.run_build = copy, build
    try:
        h = Harness(write_plan(tmp_path, pg_url, pg_url2, chunk_rows=5000))
        h.run()
        h.close()
    finally:
        loading.copy_range, postdata.run_build = real_copy, real_build
    large_copy_end = max(end for kind, table, _, end in spans if kind == "copy" and table == "large")
    small_builds = [start for kind, table, start, _ in spans if kind == "build" and table == "public.small"]
    assert len(small_builds) == 2 and min(small_builds) < large_copy_end, spans
    moments = sorted({t for _, _, start, end in spans for t in (start, end)})
    for moment in moments:  # never more than `parallel` jobs at once
        assert sum(1 for _, _, start, end in spans if start <= moment < end) <= 2
    same(pg_url, pg_url2, ["small", "large"])


def test_the_load_holds_its_connection_budget_on_each_side_and_plan_says_it(
        pg_cluster, pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    for number in range(5):
        readings(pg_url, f"t{number}", 20_000)
    plan_path = write_plan(tmp_path, pg_url, pg_url2, chunk_rows=2000)
    said = cli_process("plan", str(plan_path))
    assert "connections during the load: at most 3 to the source and 3 to the target" in said.stdout + said.stderr
    source_db, target_db = pg_url.rsplit("/", 1)[1], pg_url2.rsplit("/", 1)[1]
    peak = {source_db: 0, target_db: 0}
    seen: dict[str, str] = {}  # who held the connections at each side's peak (for the message)
    stop = threading.Event()

    def sample() -> None:
        with psycopg.connect(pg_cluster.dsn("postgres"), autocommit=True) as conn:
            while not stop.is_set():
                for db, count, who in conn.execute(
                        "SELECT datname, count(*), string_agg(application_name || ':' || coalesce(state, '') || ':'"
                        " || left(query, 30), ' | ') FROM pg_stat_activity WHERE datname = ANY(%s) GROUP BY 1",
                        ([source_db, target_db],)):
                    if count > peak[db]:
                        peak[db], seen[db] = count, who
                time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        ran = cli_process("run", str(plan_path), "--until", "load")
    finally:
        stop.set()
        sampler.join()
    assert ran.returncode == 0, ran.stderr
    assert 2 <= peak[source_db] <= 3 and 2 <= peak[target_db] <= 3, (peak, seen)
    same(pg_url, pg_url2, [f"t{n}" for n in range(5)])


def test_a_table_a_foreign_key_references_is_loaded_without_truncate(pg_url: str, pg_url2: str,
                                                                     tmp_path: Path) -> None:
    ddl = """CREATE TABLE ward (id bigint PRIMARY KEY, name text NOT NULL);
        CREATE TABLE bed (id bigint PRIMARY KEY, ward_id bigint NOT NULL REFERENCES ward(id), label text);"""
    pg(pg_url, ddl + """INSERT INTO ward SELECT g, 'ward ' || g FROM generate_series(1, 3000) g;
        INSERT INTO bed SELECT g, 1 + g % 3000, 'bed ' || g FROM generate_series(1, 9000) g;""")
    pg(pg_url2, ddl)  # empty tables on the target already, the key between them in place: adopted
    h = Harness(write_plan(tmp_path, pg_url, pg_url2))
    h.run()
    h.close()
    assert frozen_pages(pg_url2, "ward")[0] == 0  # TRUNCATE would refuse (and cascade is never used)
    frozen, pages = frozen_pages(pg_url2, "bed")
    assert frozen == pages > 0
    same(pg_url, pg_url2, ["ward", "bed"])


def test_post_data_splits_into_each_tables_builds_and_the_rest(pg_url: str, tmp_path: Path) -> None:
    pg(pg_url, PAGILA_LIKE)
    source = Endpoint("src", pg_url, tmp_path)
    sql = pgdump.dump(source, "post-data", {"public"})
    source.dispose()
    moved = {"public.language", "public.film", "public.payment_p2022_01", "public.payment_p2022_02"}
    post = postdata.split(sql, moved)
    built = {table: sorted(b.name for b in builds) for table, builds in post.builds.items()}
    assert built == {"public.language": ["language_pkey"],
                     "public.film": ["film_fulltext_idx", "film_pkey", "film_title_trgm_idx", "idx_title"],
                     "public.payment_p2022_01": ["payment_p2022_01_pkey"],
                     "public.payment_p2022_02": ["payment_p2022_02_pkey"]}
    film = {b.name: b for b in post.builds["public.film"]}
    assert film["film_pkey"].steps == (
        'CREATE UNIQUE INDEX "film_pkey" ON "public"."film" USING btree ("film_id");',
        'ALTER TABLE ONLY "public"."film" ADD CONSTRAINT "film_pkey" PRIMARY KEY USING INDEX "film_pkey";')
    assert film["idx_title"].steps == (film["idx_title"].statement,)
    for builds in post.builds.values():
        for build in builds:
            assert build.statement not in post.rest
            assert "SELECT pg_catalog.set_config('search_path', '', true);" in build.settings
    # the rest: the partitioned parent's key (ON ONLY) and its attachments, foreign keys, triggers, the
    # materialized view's index (not a moved table)
    for fragment in ('ALTER TABLE ONLY "public"."payment"', "ATTACH PARTITION", "FOREIGN KEY",
                     "CREATE TRIGGER", '"rental_by_film_idx"'):
        assert fragment in post.rest, fragment
    assert post.rest_checks and post.rest_checks[0][0] in ("index", "constraint", "trigger")


def test_each_build_session_gets_maintenance_work_mem_fit_for_its_table(pg_url: str, tmp_path: Path) -> None:
    assert postdata.maintenance_work_mem(10 << 20, 2) == 64 << 20  # never below PostgreSQL's default
    assert postdata.maintenance_work_mem(300 << 20, 2) == 300 << 20  # the table's size
    assert postdata.maintenance_work_mem(5 << 30, 2) == 512 << 20  # at most a share of 1 GiB
    assert postdata.maintenance_work_mem(5 << 30, 8) == 128 << 20
    readings(pg_url, "sized", 200_000)
    size = pg(pg_url, "SELECT pg_table_size('sized')")[0][0]
    # a build whose statement records the session's setting, run as any build is
    probe = postdata.Build("public.sized", "index", "no_such_index",
                           "CREATE TABLE seen AS SELECT current_setting('maintenance_work_mem') AS v;",
                           ("SET LOCAL statement_timeout = 0;",))
    target = Endpoint("dst", pg_url, tmp_path, role="target")
    with target.engine.connect() as conn:
        said = postdata.run_build(conn, probe, 2)
    target.dispose()
    expected = postdata.maintenance_work_mem(size, 2)
    assert pg(pg_url, "SELECT v FROM seen") == [(f"{expected // (1 << 20)}MB",)]
    assert f"maintenance_work_mem {expected // (1 << 20)} MiB" in said
    # outside the build's transaction the session is back to its own setting
    with psycopg.connect(dsn(pg_url)) as conn:
        assert conn.execute("SHOW maintenance_work_mem").fetchone() == ("64MB",)


def test_key_ranges_from_statistics_cover_every_key_in_chunks_near_chunk_rows(pg_url: str, pg_url2: str,
                                                                             tmp_path: Path) -> None:
    # 300,000 keys, skewed: dense at first, then sparse with growing gaps
    pg(pg_url, """CREATE TABLE skewed (id bigint PRIMARY KEY, v text);
        INSERT INTO skewed SELECT CASE WHEN g <= 200000 THEN g ELSE 200000 + (g - 200000)::bigint * (g - 200000)
        END, 'v' || g FROM generate_series(1, 300000) g; ANALYZE skewed;""")
    h = Harness(write_plan(tmp_path, pg_url, pg_url2, tables="[skewed]", chunk_rows=20_000))
    h.engine.preflight(h.ctx)
    h.engine.schema(h.ctx)
    pair = h.engine._pairs()[0]
    with h.engine.source.engine.connect() as conn:
        bounds = sampledranges.histogram_bounds(pair, conn, 20_000)
    assert bounds is not None and bounds == sorted(set(bounds))
    ranges = loading.new_ranges(pair, 20_000)
    assert [r.hi for r in ranges[:-1]] == bounds and ranges[0].lo is None and ranges[-1].hi is None
    sizes = []
    for rng in ranges:  # counted outside the tool, from the stored boundaries
        lo = -1 if rng.lo is None else rng.lo[0]
        hi = 2**62 if rng.hi is None else rng.hi[0]
        sizes.append(pg(pg_url, "SELECT count(*) FROM skewed WHERE id > %s AND id <= %s", (lo, hi))[0][0])
    assert sum(sizes) == 300_000
    assert 10 <= len(ranges) <= 25 and max(sizes) <= 40_000, sizes
    h.engine.load(h.ctx)
    h.close()
    same(pg_url, pg_url2, ["skewed"])


def test_statistics_serve_a_small_table_but_not_once_it_has_grown_past_them(pg_url: str, pg_url2: str,
                                                                          tmp_path: Path) -> None:
    """Fresh statistics give a 100,000-row table its ranges without walking its key index; once the table has
    grown well past them (rows the histogram never saw would all land in its last, open-ended range) the
    ranges come from the walk again, each near `chunk_rows`."""
    pg(pg_url, "CREATE TABLE grows (id bigint PRIMARY KEY, v text); "
               "INSERT INTO grows SELECT g, 'v' || g FROM generate_series(1, 100000) g; ANALYZE grows;")
    h = Harness(write_plan(tmp_path, pg_url, pg_url2, tables="[grows]", chunk_rows=20_000))
    h.engine.preflight(h.ctx)
    h.engine.schema(h.ctx)
    pair = h.engine._pairs()[0]
    with h.engine.source.engine.connect() as conn:
        assert sampledranges.histogram_bounds(pair, conn, 20_000) is not None
    pg(pg_url, "INSERT INTO grows SELECT g, 'v' || g FROM generate_series(100001, 250000) g")
    with h.engine.source.engine.connect() as conn:
        assert sampledranges.histogram_bounds(pair, conn, 20_000) is None
    ranges = loading.new_ranges(pair, 20_000)
    sizes = []
    for rng in ranges:  # counted outside the tool
        lo = -1 if rng.lo is None else rng.lo[0]
        hi = 2**62 if rng.hi is None else rng.hi[0]
        sizes.append(pg(pg_url, "SELECT count(*) FROM grows WHERE id > %s AND id <= %s", (lo, hi))[0][0])
    assert sum(sizes) == 250_000 and max(sizes) <= 20_000, sizes
    h.close()


def test_a_source_error_in_a_psql_read_fails_the_copy_and_writes_nothing(pg_url: str, pg_url2: str,
                                                                         tmp_path: Path) -> None:
    """The big openings read through psql (copypipe.py): its failure is the chunk's failure, one line naming
    the connection, and the target transaction rolls back."""
    from migrate.databases import copypipe
    from migrate.errors import EndpointError

    pg(pg_url2, "CREATE TABLE sink (id bigint, v int)")
    source = Endpoint("src", pg_url, tmp_path)
    target = Endpoint("dst", pg_url2, tmp_path, role="target")
    with target.engine.connect() as conn:
        conn.begin()
        conn.exec_driver_sql("TRUNCATE sink")
        with pytest.raises(EndpointError) as caught:
            copypipe.copy_through_psql(source, conn, "SELECT g::bigint, 1 / (g - 500) FROM generate_series(1, 1000) g",
                                       "COPY sink (id, v) FROM STDIN (FORMAT BINARY, FREEZE)", "BINARY")
        conn.rollback()
    message = str(caught.value)
    assert "\n" not in message and "source connection 'src'" in message and "division by zero" in message
    assert pg(pg_url2, "SELECT count(*) FROM sink") == [(0,)]
    with target.engine.connect() as conn:  # and the same call copies when the source reads well
        conn.begin()
        conn.exec_driver_sql("TRUNCATE sink")
        assert copypipe.copy_through_psql(source, conn, "SELECT g::bigint, g % 7 FROM generate_series(1, 1000) g",
                                          "COPY sink (id, v) FROM STDIN (FORMAT BINARY, FREEZE)", "BINARY") == 1000
        conn.commit()
    assert pg(pg_url2, "SELECT count(*), sum(v) FROM sink") == [(1000, sum(g % 7 for g in range(1, 1001)))]
    source.dispose()
    target.dispose()


def test_an_item_with_throttle_limits_opens_with_one_chunk(pg_url: str, pg_url2: str, tmp_path: Path) -> None:
    """Rates and pauses act between chunks: under limits an opening is one chunk, not a million rows."""
    readings(pg_url, "big", 30_000)
    plan_path = write_plan(tmp_path, pg_url, pg_url2)
    plan_path.write_text(plan_path.read_text() + "    throttle: {rows_per_second: 10000000}\n", encoding="utf-8")
    ran = cli_process("run", str(plan_path), "--until", "load")
    assert ran.returncode == 0, ran.stderr
    frozen, pages = frozen_pages(pg_url2, "big")
    assert 0 < frozen < 0.1 * pages, (frozen, pages)  # 1 of 31 chunks
    same(pg_url, pg_url2, ["big"])
