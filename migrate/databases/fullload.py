"""The load stage of a database item: its tables surveyed side by side (key ranges, key on the target, row
estimates), each table opened frozen where it may be (PostgreSQL targets), every chunk and post-load job run on
one pool of `parallel` workers (`scheduler.py`), pg_dump's post-data built table by table (`postdata.py`), then
materialized views refreshed (PostgreSQL -> PostgreSQL) or keys and indexes added (other pairs)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, Table, text

from migrate.databases import load as loading
from migrate.databases import pgdump, postdata
from migrate.databases import scheduler as scheduling
from migrate.databases import sync as syncing
from migrate.databases.keyranges import KeyRange, decode_ranges, encode_ranges
from migrate.databases.schema import build_target, create_post_load, estimate_rows, has_primary_key
from migrate.databases.tables import TablePair
from migrate.stages.engine import StageContext, StageResult

if TYPE_CHECKING:
    from migrate.databases.engine import DatabaseEngine

OWNED = "owned_tables"  # target tables this migration created, adopted empty, or truncated
PG_SECTION = "pg_dump:"  # + section: when that section of the source's pg_dump was replayed on the target


def load_workers(engine: DatabaseEngine, ctx: StageContext) -> int:
    """Jobs the load runs at once (chunk copies, index builds, ANALYZE), each holding at most one connection
    to each side: `parallel`, capped by the throttle's max_connections; one for a SQLite target."""
    return 1 if engine.target.dialect == "sqlite" else engine.throttle(ctx).workers(engine.item.parallel)


def connection_budget(engine: DatabaseEngine, ctx: StageContext) -> str:
    """What `migrate plan` says about the connections a load opens on each side."""
    jobs = load_workers(engine, ctx)
    return (f"connections during the load: at most {jobs + 1} to the source and {jobs + 1} to the target "
            f"({jobs} job(s) at once — chunk copies of any table, index builds, ANALYZE — plus one for "
            "planning, pg_dump and psql)")


class FullLoad:
    """One run of the load stage for one database item."""

    def __init__(self, engine: DatabaseEngine) -> None:
        self.engine = engine

    def run(self, ctx: StageContext) -> StageResult:
        """The load stage of the item: every table's chunks, then its post-load work (see the module)."""
        engine = self.engine
        name, item, source, target = engine.name, engine.item, engine.source, engine.target
        started = time.monotonic()
        pairs = engine._pairs()
        capture = engine.capture()
        if capture is not None:  # before the first row is read: nothing committed during the load is missed
            capture.ensure(ctx.journal, engine._logical(pairs))
        done = ctx.journal.chunks(name, loading.STAGE)
        owned = set(ctx.journal.get(name, OWNED, []))
        throttle = engine.throttle(ctx)
        workers = load_workers(engine, ctx)
        freezable = self._freezable(pairs) if target.dialect == "postgresql" else set()
        post = postdata.NativePostData(source, target, [p.source.info.label for p in pairs]) \
            if engine.native_schema and ctx.journal.get(name, PG_SECTION + "post-data") is None else None
        tables: list[scheduling.TableLoad] = []
        stored = {p.label: ctx.journal.get(name, loading.ranges_key(p.label)) for p in pairs}

        def survey(pair: TablePair) -> tuple[list[KeyRange], bool, int]:
            """A table's key ranges (planned now if its load has not started), whether the target table
            has no key yet, and its estimated rows: in `workers` threads, tables side by side."""
            known = stored[pair.label]
            ranges = decode_ranges(known) if known is not None else loading.new_ranges(pair, item.chunk_rows)
            with target.errors("cannot inspect"), target.engine.connect() as conn:
                keyless = target.dialect != "sqlite" and not has_primary_key(conn, _table(pair))
            with source.errors("cannot count"), source.engine.connect() as conn:
                return ranges, keyless, estimate_rows(source, conn, pair.source.info)

        try:
            for pair in pairs:
                if pair.watermark is not None and ctx.journal.get(name, syncing.watermark_key(pair)) is None:
                    # before the first row moves, so sync later re-reads whatever changes during the load
                    syncing.record_watermark(ctx.journal, name, pair, syncing.source_watermark(pair))
            with ThreadPoolExecutor(max_workers=workers) as pool:
                surveyed = list(pool.map(survey, pairs))
            # new tables' key ranges, journaled together before any chunk starts
            planned = {loading.ranges_key(pair.label): encode_ranges(ranges)
                       for pair, (ranges, _, _) in zip(pairs, surveyed, strict=True) if stored[pair.label] is None}
            estimate = sum(rows for _, _, rows in surveyed)
            for pair, (ranges, keyless, rows) in zip(pairs, surveyed, strict=True):
                pair.rows_estimate = rows
                new = stored[pair.label] is None
                states = [done.get(loading.chunk_id(pair.label, i), ("",))[0] for i in range(len(ranges))]
                # a chunk never started, on a table we own that has no key yet, cannot hold any row: no delete
                may_skip = keyless and pair.label in owned and (any(states) or new)
                chunks = [(index, rng, loading.FRESH if may_skip and states[index] == "" else loading.REPLACE)
                          for index, rng in enumerate(ranges) if states[index] != "done"]
                if chunks and "done" not in states and pair.label in owned and pair.label in freezable:
                    # we own it and none of it is done: its first chunk empties it and copies frozen rows
                    chunks[0] = (chunks[0][0], chunks[0][1], loading.FREEZE)
                tables.append(scheduling.TableLoad(pair, chunks, partial(self._after_table, pair, post, workers)))
            ctx.journal.put_many(name, planned)
            # limits in the plan, or set by `migrate throttle` before the run: openings of one chunk
            throttled = getattr(throttle, "spec", None) is not None or throttle.effective().limited
            scheduling.size_openings(tables, item.chunk_rows, throttled=throttled)
            work = sum(len(t.chunks) for t in tables)
            frozen = sum(1 for t in tables if t.chunks and t.chunks[0][2] == loading.FREEZE)
            already = sum(units for status, units, _ in done.values() if status == "done")
            task = ctx.progress.task(f"{name}: load", total=max(estimate, already) or None, unit="rows")
            task.advance(already)

            def pending(chunks: list[tuple[TablePair, int]]) -> None:
                ctx.journal.mark_chunks(name, loading.STAGE, [
                    (loading.chunk_id(pair.label, index), "pending", 0, None) for pair, index in chunks])

            def mark(chunks: list[tuple[TablePair, int, int]]) -> None:
                ctx.journal.mark_chunks(name, loading.STAGE, [
                    (loading.chunk_id(pair.label, index), "done", rows, None) for pair, index, rows in chunks])
                task.advance(sum(rows for _, _, rows in chunks))

            scheduler = scheduling.LoadScheduler(tables, workers, pending, mark, throttle,
                                              after_ready=post.dumped if post is not None else None)
            try:
                moved = scheduler.run()
            finally:
                task.close()
            notes = scheduler.notes
            if post is not None:
                notes += post.finish()
                ctx.journal.put(name, PG_SECTION + "post-data", datetime.now(UTC).isoformat())
        finally:
            if post is not None:
                post.close()
        post_load = [n for n in notes if not n.startswith("analyzed ")]
        analyzed = len(notes) - len(post_load)
        if engine.native_schema:
            schemas, _ = engine._pg_scope([p.source.info for p in pairs])
            with target.errors("cannot refresh materialized views"), target.engine.connect() as conn:
                post_load += [f"refreshed {view}" for view in pgdump.refresh_materialized_views(conn, schemas)]
                conn.commit()
        else:
            with target.errors("cannot create indexes"), target.engine.connect() as conn:
                target_schema = build_target([p.source.info for p in pairs], source.dialect,
                                             target.dialect)
                for pair in pairs:
                    post_load += create_post_load(conn, target_schema.tables[pair.label], target.dialect)
                    conn.commit()
        if analyzed:  # statistics, so the target plans well from the first query
            post_load.append(f"analyzed {analyzed} table(s)")
        seconds = time.monotonic() - started
        total = already + moved
        return StageResult(name, "load", summary=f"{moved} rows in {work} chunks ({total} in all)",
                           metrics={"rows": total, "rows_this_run": moved, "chunks_this_run": work,
                                    "frozen_tables": frozen, "workers": workers,
                                    "seconds": round(seconds, 3),
                                    "rows_per_second": round(moved / seconds) if seconds else 0,
                                    "post_load": post_load})

    def _after_table(self, pair: TablePair, post: postdata.NativePostData | None, workers: int) -> list[list[Any]]:
        """A loaded table's post-load phases: its own index and constraint builds (PostgreSQL -> PostgreSQL,
        from pg_dump's post-data), then ANALYZE (PostgreSQL targets)."""
        phases: list[list[Any]] = []
        if post is not None:
            phases.append([partial(post.build, build, workers) for build in post.builds_for(pair.target.info)])
        if self.engine.target.dialect == "postgresql":
            phases.append([partial(self._analyze, pair)])
        return phases

    def _analyze(self, pair: TablePair) -> str:
        with self.engine.target.errors("cannot analyze"), self.engine.target.engine.connect() as conn:
            conn.exec_driver_sql(f"ANALYZE {pair.target.ops.qualified(pair.target.clause)}")
            conn.commit()
        return f"analyzed {pair.label}"

    def _freezable(self, pairs: list[TablePair]) -> set[str]:
        """Labels of the target tables a load may TRUNCATE and COPY ... FREEZE: ordinary tables (not partitioned,
        not foreign) that no foreign key references."""
        with self.engine.target.errors("cannot inspect"), self.engine.target.engine.connect() as conn:
            default = str(conn.execute(text("SELECT current_schema()")).scalar_one())
            rows = conn.execute(text(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f' "
                "AND f.confrelid = c.oid) AND n.nspname = ANY(:s)"),
                {"s": sorted({(p.target.info.schema or default) for p in pairs})}).scalars().all()
        plain = set(rows)
        return {p.label for p in pairs if _qualified(p.target.info.label, default) in plain}


def _table(pair: TablePair) -> Table:
    """A bare table object naming the target table (for inspection)."""
    return Table(pair.target.info.name, MetaData(), schema=pair.target.info.schema)


def _qualified(label: str, default_schema: str | None) -> str:
    return label if "." in label or default_schema is None else f"{default_schema}.{label}"
