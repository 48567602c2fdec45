"""`DatabaseEngine`: the stages of one `databases:` item of a plan (preflight, schema, load, verify, sync)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import partial
from typing import Any

from sqlalchemy import delete, false, func, insert, inspect, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.schema import CreateSchema

from migrate.databases import inventory, pgdump
from migrate.databases import load as loading
from migrate.databases import sequences as seqs
from migrate.databases import sync as syncing
from migrate.databases.capture import LogicalCapture
from migrate.databases.checksum import KeyRangeChecksum, RowDifference
from migrate.databases.dialects import ops_for, raw_sql
from migrate.databases.endpoint import Endpoint
from migrate.databases.fullload import OWNED, PG_SECTION, FullLoad, connection_budget
from migrate.databases.health import source_health
from migrate.databases.identity import database_identity
from migrate.databases.keyranges import KeyRange, decode_key, decode_ranges, encode_key, encode_ranges, split
from migrate.databases.schema import (
    NoPrimaryKey,
    TableInfo,
    build_target,
    create_table,
    dependency_order,
    estimate_rows,
    list_tables,
    partitions_also_named,
    reflect_table,
)
from migrate.databases.tables import TablePair, make_pair
from migrate.databases.values import canonical_text
from migrate.errors import Difference, EndpointError, MigrateError, UsageError
from migrate.plan.loader import LoadedPlan
from migrate.plan.model import DatabaseItem, Incremental, TableSpec
from migrate.redact import redact
from migrate.stages import parts
from migrate.stages.engine import ItemEngine, Preview, StageContext, StageResult, SyncResult, VerifyResult
from migrate.stages.guards import check_deletes
from migrate.state.claims import Journaled, Split
from migrate.state.journal import Journal
from migrate.state.slots import slot_summary
from migrate.units import human_bytes

RANGES_TASK = "ranges"  # the spec of a worker's task planning one table's key ranges


class DatabaseEngine(ItemEngine):
    """Moves the tables of one database item, chunked, journaled, verified by checksums, kept in sync."""

    kind = "database"
    stages = ("preflight", "schema", "load", "verify", "sync")

    def __init__(self, item: DatabaseItem, loaded: LoadedPlan, reverse: bool = False) -> None:
        super().__init__(item, loaded, reverse)
        self.item: DatabaseItem = item
        connections = loaded.plan.connections
        pool = item.parallel * 2 + 2
        # reverse replication (after cutover) reads the plan's target and writes its source
        source, target = (item.target, item.source) if reverse else (item.source, item.target)
        self.source = Endpoint.of(source, connections.get(source), loaded.base_dir, role="source", pool_size=pool)
        self.target = Endpoint.of(target, connections.get(target), loaded.base_dir, role="target", pool_size=pool)
        self.target.replica_role = self.native_schema
        self._sources: list[tuple[TableInfo, Incremental | None]] | None = None
        self._globbed: set[str] = set()  # tables a glob of `tables` matched (not named one by one)
        self.skipped: list[str] = []  # tables left out under skip_without_key, said in preflight
        self._wm_columns: dict[str, str] = {}
        self._capture: LogicalCapture | None = None
        self.reverse_refusal: list[str] = []  # why the target's log cannot feed reverse replication
        self._loaded_pairs: list[TablePair] | None = None  # the tables a worker's chunks read (looked up once)
        self._task_ranges: dict[str, list[KeyRange]] = {}  # their journaled key ranges (read and decoded once)

    @property
    def native_schema(self) -> bool:
        """PostgreSQL -> PostgreSQL: the schema comes from pg_dump (pre-data before the load, post-data
        after it) and the copying sessions run as replication (`session_replication_role = replica`)."""
        return self.source.dialect == self.target.dialect == "postgresql"

    def object_inventory(self, infos: list[TableInfo]) -> list[inventory.Entry]:
        """Every source object of the moved schemas and its fate (moved, recreated, mapped, not moved)."""
        with self.source.errors("cannot read"), self.source.engine.connect() as conn:
            default = str(conn.execute(text("SELECT current_schema()")).scalar_one()) \
                if self.source.dialect == "postgresql" else None
            moved = {_qualified(info.label, default) for info in infos}
            schemas = {name.split(".", 1)[0] for name in moved} if default else set()
            objects = inventory.source_objects(conn, self.source.dialect, schemas) or \
                [("table", name) for name in sorted(moved)]
        extensions = None
        if self.native_schema:
            with self.target.errors("cannot connect"), self.target.engine.connect() as conn:
                extensions = set(conn.execute(text("SELECT name FROM pg_available_extensions")).scalars())
        entries = inventory.classify(objects, moved, self.native_schema,
                                     self.source.dialect != self.target.dialect, extensions)
        if not self.native_schema:
            target = build_target(infos, self.source.dialect, self.target.dialect)
            dialect = self.target.url.get_dialect()()  # no engine: `plan` must not create a SQLite target
            for info in infos:
                for col in target.tables[info.label].columns:
                    declared = info.column(col.name).declared or ""
                    mapped = col.type.compile(dialect=dialect)
                    if mapped.lower() != declared.lower():
                        entries.append(inventory.Entry("column", f"{_qualified(info.label, default)}.{col.name}",
                                                       inventory.MAPPED, f"{declared or '?'} -> {mapped}"))
        return entries

    # -- tables --

    def _specs(self, conn: Connection) -> list[TableSpec]:
        """The plan's tables: every source table for `*` (with any per-table options), then the named ones.

        `*` is always resolved on the plan's source, also in reverse, so that reverse replication covers the
        tables the migration moved and not whatever else the application created on the target."""
        named = {s.name: s for s in self.item.tables if not _is_glob(s.name)}
        globs = [s.name for s in self.item.tables if _is_glob(s.name)]
        names: list[str] = []
        if globs:
            if self.reverse:
                with self.target.errors("cannot connect"), self.target.engine.connect() as origin:
                    listing = list_tables(self.target, origin)
            else:
                listing = list_tables(self.source, conn)
            names = [n for n in listing if n not in named and any(fnmatchcase(n, g) for g in globs)
                     and not any(fnmatchcase(n, x) for x in self.item.exclude)]
            self._globbed = set(names)
        return list(named.values()) + [TableSpec(name=n) for n in names]

    def _reflect_sources(self, engine: Engine | None = None) -> list[tuple[TableInfo, Incremental | None]]:
        """Every source table to move (parents first) with its watermark."""
        if self._sources is not None and engine is None:
            return self._sources
        engine = engine or self.source.engine
        out: list[tuple[TableInfo, Incremental | None]] = []
        with self.source.errors("cannot connect"), engine.connect() as conn:
            for spec in self._specs(conn):
                try:
                    info = reflect_table(self.source, conn, spec.name, key=spec.key, columns=spec.columns)
                except NoPrimaryKey:
                    if not (self.item.skip_without_key and spec.name in self._globbed):
                        raise
                    self.skipped.append(f"{spec.name}: no primary key, skipped (skip_without_key)")
                    continue
                assert info is not None
                out.append((info, self._watermark(spec, info)))
            if self.source.dialect == "postgresql":
                both = partitions_also_named(conn, [info.label for info, _ in out])
                if both:
                    raise MigrateError(f"{self.name}: {', '.join(f'{p} and its partition {c}' for p, c in both)} "
                                       "are both in tables: their rows would be stored twice; name the "
                                       "partitioned table or its partitions, not both")
        if not out:
            raise MigrateError(f"{self.name}: no tables to move on {self.source.label}")
        order = dependency_order([info for info, _ in out])
        marks = {info.label: wm for info, wm in out}
        result = [(info, marks[info.label]) for info in order]
        if engine is self.source._engine:
            self._sources = result
        return result

    def _watermark(self, spec: TableSpec, info: TableInfo) -> Incremental | None:
        """The table's change source: its own `incremental`, else the item's (a watermark column only where the
        table has it); None: sync compares every row."""
        if spec.incremental is not None:
            if spec.incremental.column is not None and spec.incremental.column not in info.names:
                raise MigrateError(f"{self.name}: table {info.label!r} has no column "
                                   f"{spec.incremental.column!r} (its incremental.column)")
            return spec.incremental
        wanted = self.item.incremental
        if wanted is not None and (wanted.method == "logical" or wanted.column in info.names):
            return wanted
        return None

    def capture(self) -> LogicalCapture | None:
        """The item's logical-decoding change source, when any table uses it. In reverse (after cutover) it
        decodes the plan's target where that server can (PostgreSQL, wal_level logical, a free slot, every
        table's key in its replica identity); elsewhere reverse cycles compare those tables in full and
        `reverse_refusal` says why."""
        if not self.item.uses_logical or self.reverse and (self.source.dialect != "postgresql"
                                                           or self.reverse_refusal):
            return None
        if self._capture is None:
            capture = LogicalCapture(self.source, self.loaded.plan.component, self.name)
            if self.reverse:
                self.reverse_refusal = capture.problems([(info.label, info.key) for info, wm
                                                         in self._reflect_sources() if wm and wm.method == "logical"])
                if self.reverse_refusal:
                    return None
            self._capture = capture
        return self._capture

    def _logical(self, pairs: list[TablePair]) -> list[TablePair]:
        if self.reverse and self.capture() is None:
            return []
        marks = {info.label: wm for info, wm in self._reflect_sources()}
        return [p for p in pairs if (wm := marks.get(p.label)) is not None and wm.method == "logical"]

    def _pairs(self) -> list[TablePair]:
        pairs = []
        with self.target.errors("cannot connect"), self.target.engine.connect() as conn:
            for info, wm in self._reflect_sources():
                target = reflect_table(self.target, conn, info.label, key=info.key, columns=info.names,
                                       required=False, constraints=False)
                if target is None:
                    raise MigrateError(f"{self.name}: target table {info.label!r} does not exist on "
                                       f"{self.target.label}; run the schema stage first (migrate run)")
                watermark = wm if wm is not None and wm.method == "watermark" else None
                pairs.append(make_pair(self.source, self.target, info, target, watermark,
                                       self.item.float_tolerance))
        return pairs

    def _lossy_check(self, infos: list[TableInfo]) -> tuple[list[str], list[str]]:
        schema = build_target(infos, self.source.dialect, self.target.dialect)
        if schema.lossy and not self.item.accept_lossy:
            raise MigrateError(f"{self.name}: refusing lossy type mappings (set accept_lossy: true to allow): "
                               + "; ".join(schema.lossy))
        return schema.lossy, schema.notes

    # -- stages --

    def preflight(self, ctx: StageContext) -> StageResult:
        sources = self._reflect_sources()
        infos = [info for info, _ in sources]
        with self.source.errors("cannot read"), self.source.engine.connect() as conn:
            rows = 0
            for info in infos:  # proves SELECT permission on each table, cheaply
                clause = info.clause()
                conn.execute(select(*[clause.c[k] for k in info.key]).limit(1)).all()
                rows += estimate_rows(self.source, conn, info)
        lossy, notes = self._lossy_check(infos)
        capture = self.capture()
        if capture is not None:
            found = capture.problems([(info.label, info.key) for info, wm in sources
                                      if wm is not None and wm.method == "logical"])
            if found:
                raise MigrateError(f"{self.name}: logical decoding cannot start: " + "; ".join(found))
        warnings = [f"lossy (accepted): {x}" for x in lossy] + notes + self.skipped
        entries = self.object_inventory(infos)
        inventory.record(ctx.journal, self.name, entries)
        warnings += [f"not migrated: {e.ref} ({e.detail})"
                     for e in inventory.not_moved(entries, self.item.not_migrated_ok)]
        if self.target.exists():
            with self.target.errors("cannot connect"), self.target.engine.connect() as conn:
                conn.execute(select(1)).all()
            where = "target reachable"
            same = database_identity(self.source)
            if same is not None and same == database_identity(self.target):
                raise EndpointError(f"{self.name}: source and target are the same database ({same}); nothing "
                                    "was written", hint="point the target connection at the Azure database")
        else:
            path = self.target.sqlite_path
            assert path is not None
            parent = next((p for p in path.parents if p.exists()), None)
            if parent is None or not _writable(parent):
                raise EndpointError(f"{self.target.label}: cannot create {path}: folder not writable")
            where = "target database will be created"
        return StageResult(self.name, "preflight", summary=f"{len(infos)} tables, ~{rows} rows; {where}",
                           metrics={"tables": len(infos), "rows_estimate": rows}, warnings=warnings)

    def schema(self, ctx: StageContext) -> StageResult:
        sources = [info for info, _ in self._reflect_sources()]
        self._lossy_check(sources)
        target_schema = build_target(sources, self.source.dialect, self.target.dialect)
        owned = set(ctx.journal.get(self.name, OWNED, []))
        created, adopted, truncated = [], [], []
        if self.native_schema:
            created = self._replay_pre_data(ctx, sources)
            owned.update(created)
            ctx.journal.put(self.name, OWNED, sorted(owned))
        with self.target.errors("schema failed"), self.target.engine.connect() as conn:
            inspector = inspect(conn)
            if self.target.dialect != "sqlite":
                known = set(inspector.get_schema_names())
                for schema_name in sorted({i.schema for i in sources if i.schema and i.schema not in known}):
                    conn.execute(CreateSchema(schema_name))
                conn.commit()
            there = _existing(inspector, sources)
            for info in sources:
                table = target_schema.tables[info.label]
                if (info.schema, info.name) in there:
                    if info.label not in owned:
                        rows = conn.execute(select(func.count()).select_from(table)).scalar() or 0
                        if rows and self.item.existing_target == "truncate":
                            conn.execute(delete(table))
                            truncated.append(info.label)
                            ctx.journal.event("truncate", f"emptied target table {info.label} ({rows} rows)",
                                              item=self.name)
                        elif rows:
                            raise MigrateError(
                                f"{self.name}: target table {info.label!r} on {self.target.label} already holds "
                                f"{rows} rows that this migration did not load; refusing to touch it "
                                f"(set existing_target: truncate to replace them)")
                        else:
                            adopted.append(info.label)
                else:
                    create_table(conn, table, self.target.dialect)
                    created.append(info.label)
                conn.commit()
                if info.label not in owned:  # journaled as soon as made ours (one write per new table)
                    owned.add(info.label)
                    ctx.journal.put(self.name, OWNED, sorted(owned))
        parts = [f"created {len(created)}"] + ([f"adopted {len(adopted)} empty"] if adopted else []) + \
            ([f"truncated {len(truncated)}"] if truncated else [])
        return StageResult(self.name, "schema", summary=", ".join(parts) + " tables",
                           metrics={"created": created, "adopted": adopted, "truncated": truncated},
                           warnings=target_schema.notes)

    def pending(self, ctx: StageContext) -> list[str]:
        """Source tables in scope that the schema stage has not made or adopted on the target yet."""
        owned = set(ctx.journal.get(self.name, OWNED, []))
        return [info.label for info, _ in self._reflect_sources() if info.label not in owned]

    def _pg_scope(self, infos: list[TableInfo]) -> tuple[set[str], set[str]]:
        with self.source.errors("cannot read"), self.source.engine.connect() as conn:
            return pgdump.scope(conn, [info.label for info in infos])

    def _replay_pre_data(self, ctx: StageContext, sources: list[TableInfo]) -> list[str]:
        """pg_dump's pre-data on a target that has none of the moved tables yet; return the tables it made.
        A target that already has some keeps today's rules (adopt empty, truncate, refuse)."""
        if ctx.journal.get(self.name, PG_SECTION + "pre-data") is not None:
            return []
        with self.target.errors("schema failed"), self.target.engine.connect() as conn, \
                self.source.errors("cannot read"), self.source.engine.connect() as sconn:
            if _existing(inspect(conn), sources):
                return []
            extensions = pgdump.extensions_sql(sconn, conn)
        schemas, excluded = self._pg_scope(sources)
        pgdump.replay(self.target, extensions + pgdump.dump(self.source, "pre-data", schemas, excluded),
                      "pre-data")
        ctx.journal.put(self.name, PG_SECTION + "pre-data", datetime.now(UTC).isoformat())
        ctx.journal.event("schema", f"pg_dump pre-data of {', '.join(sorted(schemas))} replayed on the target",
                          item=self.name)
        return [info.label for info in sources]

    def load(self, ctx: StageContext) -> StageResult:
        return FullLoad(self).run(ctx)

    # -- the load as claimable tasks (`migrate worker`, see migrate.stages.worker) --

    def load_tasks(self, ctx: StageContext) -> list[str | tuple[str, str | None]]:
        """Once, before any chunk: the slot (logical decoding) and the pre-load watermarks; returns the tasks:
        the chunks not done yet of tables whose key ranges are journaled (task names), and one planning task
        per table whose ranges are not (`table#ranges`, spec `ranges`: claimed like a chunk, so tables are
        planned side by side, see `load_task`)."""
        if self.target.dialect not in ("postgresql", "mssql"):
            raise UsageError(f"{self.name}: workers load PostgreSQL and SQL Server targets only ("
                             f"{self.target.label} is {self.target.dialect}): each chunk takes a lock on the "
                             "target first", hint="use `migrate run PLAN` for this item")
        pairs = self._pairs()
        capture = self.capture()
        if capture is not None:
            capture.ensure(ctx.journal, self._logical(pairs))
        done = ctx.journal.chunks(self.name, loading.STAGE)
        tasks: list[str | tuple[str, str | None]] = []
        for pair in pairs:
            if pair.watermark is not None and ctx.journal.get(self.name, syncing.watermark_key(pair)) is None:
                syncing.record_watermark(ctx.journal, self.name, pair, syncing.source_watermark(pair))
            if ctx.journal.get(self.name, loading.ranges_key(pair.label)) is None:
                tasks.append((f"{pair.label}#{RANGES_TASK}", RANGES_TASK))
            else:
                tasks += self._chunks_left(pair, len(self._load_ranges(ctx, pair)), done)
        return tasks

    def _chunks_left(self, pair: TablePair, count: int, done: dict[str, Any]) -> list[str | tuple[str, str | None]]:
        return [chunk for i in range(count) if done.get(chunk := loading.chunk_id(pair.label, i), ("",))[0] != "done"]

    def load_task(self, ctx: StageContext, task: str, spec: str | None = None) -> int | Split:
        """Copy one chunk (`table#index`: its name says it all, no `spec`) under its target lock and journal it
        done; returns its rows. A planning task (spec `ranges`) plans its table's key ranges and journals them
        unless a runner did first (that runner's are kept), and is replaced by the table's chunks."""
        label, index = task.rsplit("#", 1)
        pair = next(p for p in self._task_pairs() if p.label == label)
        ranges = self._load_ranges(ctx, pair)
        if spec == RANGES_TASK:
            left = self._chunks_left(pair, len(ranges), ctx.journal.chunks(self.name, loading.STAGE))
            return Split([(t, None) if isinstance(t, str) else t for t in left])
        rows = loading.copy_range(pair, ranges[int(index)], fence=loading.chunk_lock(label, int(index)))
        ctx.journal.mark_chunk(self.name, loading.STAGE, task, "done", rows)
        self.throttle(ctx).rows(rows)
        return rows

    def _load_ranges(self, ctx: StageContext, pair: TablePair) -> list[KeyRange]:
        """A table's load key ranges: as journaled, else planned now and journaled before any chunk starts.
        Journaled ranges never change, so a worker reads and decodes them once per table, not once per task."""
        if pair.label not in self._task_ranges:
            stored = ctx.journal.get(self.name, loading.ranges_key(pair.label))
            if stored is None:
                # of runners planning one table at once (one frozen past its lease, say), the first to journal wins
                stored = ctx.journal.put_once(self.name, loading.ranges_key(pair.label),
                                              encode_ranges(loading.new_ranges(pair, self.item.chunk_rows)))
            self._task_ranges[pair.label] = decode_ranges(stored)
        return self._task_ranges[pair.label]

    def _task_pairs(self) -> list[TablePair]:
        if self._loaded_pairs is None:
            self._loaded_pairs = self._pairs()
        return self._loaded_pairs

    def load_finish(self, ctx: StageContext) -> StageResult:
        """Once, after the last chunk: the load stage itself, which finds every chunk done in the journal and
        does what follows them (indexes, constraints, statistics), with the load's totals."""
        return self.load(ctx)

    def advance_sequences(self, ctx: StageContext) -> list[str]:
        """`migrate:sequences`: every target sequence/identity at least the source's value and the highest
        id on either side (never lowered); return what was set."""
        pairs = self._pairs()
        done: list[str] = []
        handled: set[str] = set()  # sequences already set through a moved column
        src_d, tgt_d = self.source.dialect, self.target.dialect
        with self.source.errors("cannot read sequences"), self.source.engine.connect() as sconn, \
                self.target.errors("cannot set sequences"), self.target.engine.connect() as tconn:
            for pair in pairs:
                on_source = {c.column: c for c in seqs.column_counters(sconn, src_d, pair.source.info)}
                for counter in seqs.column_counters(tconn, tgt_d, pair.target.info):
                    assert counter.column is not None
                    own = seqs.current_value(tconn, tgt_d, counter)
                    found = [own, pair.source.max_of(sconn, counter.column), pair.target.max_of(tconn, counter.column)]
                    if counter.column in on_source:
                        found.append(seqs.current_value(sconn, src_d, on_source[counter.column]))
                    done += self._advance(tconn, counter, own, found)
                    handled.add(counter.name)
            if src_d == tgt_d and src_d in ("postgresql", "mssql"):
                schemas = sorted({(info.schema or ("public" if src_d == "postgresql" else "dbo"))
                                  for info in [p.source.info for p in pairs]})
                on_target = {c.name for c in seqs.schema_sequences(tconn, tgt_d, schemas)}
                for counter in seqs.schema_sequences(sconn, src_d, schemas):
                    if counter.name in on_target and counter.name not in handled:
                        own = seqs.current_value(tconn, tgt_d, counter)
                        done += self._advance(tconn, counter, own, [
                            own, seqs.current_value(sconn, src_d, counter), seqs.owner_max(tconn, counter)])
            tconn.commit()
        ctx.journal.event("sequences", f"{len(done)} sequence(s) advanced", item=self.name, data={"set": done})
        return done

    def _advance(self, tconn: Connection, counter: seqs.Counter, own: int | None, found: list[Any]) -> list[str]:
        value = max((int(v) for v in found if isinstance(v, int) and not isinstance(v, bool)), default=None)
        if value is None or value < 1 or value == own:
            return []
        seqs.advance(tconn, self.target.dialect, counter, value)
        return [f"{counter.label} -> {value}"]

    def throttle(self, ctx: StageContext) -> Any:
        """This item's limiter; a probe reads this source's health (see `migrate.throttle`)."""
        from migrate.throttle.control import spec_of

        spec = spec_of(self.loaded, self.item)
        probe = spec.probe if spec is not None else None
        return ctx.throttle(self.item, None if probe is None or self.reverse else partial(source_health,
                                                                                         self.source, probe))

    def _ranges(self, ctx: StageContext, pair: TablePair) -> list[KeyRange]:
        stored = ctx.journal.get(self.name, loading.ranges_key(pair.label))
        if stored is not None:
            return decode_ranges(stored)
        src = pair.source
        with src.endpoint.errors("cannot plan ranges"), src.endpoint.engine.connect() as conn:
            return split(src.order.boundaries(conn, self.item.chunk_rows))

    def verify(self, ctx: StageContext, deep: bool = False) -> VerifyResult:
        started = time.monotonic()
        result = VerifyResult(self.name)
        tables: dict[str, Any] = {}
        pairs = self._pairs()
        task = ctx.progress.task(f"{self.name}: verify", total=len(pairs), unit="tables")
        throttle = self.throttle(ctx)
        gentle = throttle.effective().verify_rows_per_second is not None
        try:
            for pair in pairs:
                checker = KeyRangeChecksum(pair, workers=self.item.parallel * 2,
                                           leaf_rows=200 if deep else 2000)
                ranges = self._ranges(ctx, pair)
                if gentle:  # range by range, each counted against verify_rows_per_second before the next
                    found = []
                    for rng in ranges:
                        before = checker.stats.source_rows
                        found += [self._difference(d) for d in checker.compare([rng], top=True)]
                        throttle.verify_rows(checker.stats.source_rows - before)
                else:
                    found = [self._difference(d) for d in checker.compare(ranges)]
                result.differences.extend(found)
                result.checked += checker.stats.source_rows
                tables[pair.label] = {"rows": checker.stats.source_rows, "target_rows": checker.stats.target_rows,
                                      "differences": len(found),
                                      "ranges": checker.stats.ranges, "bisected": checker.stats.bisected}
                task.advance(1)
        finally:
            task.close()
        result.metrics = {"tables": tables, "seconds": round(time.monotonic() - started, 3)}
        return result

    # -- verify as claimable tasks (`migrate worker --until verify`) --

    def verify_tasks(self, ctx: StageContext, loaded: list[tuple[str, str | None]]) -> list[str]:
        """A verification's parts: one per load key range of each table (`table#index`), as journaled."""
        return [loading.chunk_id(pair.label, index) for pair in self._task_pairs()
                for index in range(len(self._load_ranges(ctx, pair)))]

    def verify_task(self, ctx: StageContext, verification: str, task: str, spec: str | None = None) -> Journaled:
        """Compare one part (one key range of one table: both sides' checksums, descending where they differ):
        the source rows checked, and the record of what it found under `verification`, journaled with the task's
        done-mark."""
        started = datetime.now(UTC)
        label, index = task.rsplit("#", 1)
        pair = next(p for p in self._task_pairs() if p.label == label)
        checker = KeyRangeChecksum(pair, workers=2, leaf_rows=2000)
        found = [self._difference(d) for d in checker.compare([self._load_ranges(ctx, pair)[int(index)]])]
        stats = checker.stats
        self.throttle(ctx).verify_rows(stats.source_rows)
        return parts.record(self.name, verification, task, started, stats.source_rows, found, group=label,
                            rows=stats.source_rows, target_rows=stats.target_rows, bisected=stats.bisected)

    def verify_parts(self, ctx: StageContext, verification: str) -> VerifyResult:
        return parts.add_up(ctx.journal, self.name, verification, by="tables")

    # -- a sync cycle as claimable tasks (`migrate worker --sync`) --

    def sync_tasks(self, ctx: StageContext, loaded: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
        """A cycle's parts: one per load key range of each table brought in line by a full comparison (no
        watermark column, no logical decoding) from PostgreSQL to PostgreSQL; the rest of the cycle (watermarks,
        the log, every delete decision) is the closing task's (`sync_parts`)."""
        pairs = self._task_pairs()
        logical = {p.label for p in self._logical(pairs)}
        return [(loading.chunk_id(pair.label, index), "sync") for pair in pairs
                if pair.watermark is None and pair.label not in logical and syncing.same_postgres(pair)
                for index in range(len(self._load_ranges(ctx, pair)))]

    def sync_task(self, ctx: StageContext, cycle: str, task: str, spec: str | None = None) -> Journaled:
        """One part: one key range of one table compared by checksums on both sides (descending where they
        differ), the rows that differ or are missing copied, the target's keys the source lacks proposed for
        deletion, not deleted; returns the source rows compared and the part's record (journaled with the
        done-mark)."""
        label, index = task.rsplit("#", 1)
        pair = next(p for p in self._task_pairs() if p.label == label)
        pair.throttle = self.throttle(ctx)
        checker = KeyRangeChecksum(pair, workers=2)
        diffs = list(checker.compare([self._load_ranges(ctx, pair)[int(index)]]))
        syncing.copy_rows(pair, [d.source_key for d in diffs if d.kind != "missing_on_source" and d.source_key],
                          self.item.parallel)
        gone = [encode_key(d.target_key) for d in diffs if d.kind == "missing_on_source"] if self.item.delete else []
        rows = checker.stats.source_rows
        return parts.journaled(self.name, parts.SYNC_PART, cycle, task, rows, {
            "table": label, "created": sum(1 for d in diffs if d.kind == "missing_on_target"),
            "updated": sum(1 for d in diffs if d.kind == "different"), "deletes": gone})

    def sync_parts(self, ctx: StageContext, cycle: str, opened_ns: int) -> SyncResult:
        """The closing task: the cycle for everything its parts did not cover, their copies counted and their
        proposed deletes decided with the rest (the mass-delete guard on each table's totals), children first."""
        found: dict[str, tuple[int, int, list[Any]]] = {}
        for part in parts.of_round(ctx.journal, self.name, parts.SYNC_PART, cycle):
            created, updated, keys = found.get(part["table"], (0, 0, []))
            found[part["table"]] = (created + part["created"], updated + part["updated"],
                                    keys + [decode_key(k) for k in part["deletes"]])
        return self.sync(ctx, in_parts=found)

    def _difference(self, diff: RowDifference) -> Difference:
        detail = f"columns: {','.join(diff.columns)}" if diff.columns else ""
        return Difference(self.name, diff.kind, diff.key_text, detail)

    def sync(self, ctx: StageContext, in_parts: dict[str, tuple[int, int, list[Any]]] | None = None) -> SyncResult:
        """One cycle. `in_parts`: per table its workers compared in parts (`sync_task`), what they copied and the
        deletes they propose; those tables are not compared again."""
        started = time.monotonic()
        in_parts = in_parts or {}
        pairs = self._pairs()
        throttle = self.throttle(ctx)
        for pair in pairs:
            pair.throttle = throttle
        if self.reverse:
            self._seed_reverse_watermarks(ctx, pairs)
        result = SyncResult(self.name)
        workers = self.item.parallel * 2
        task = ctx.progress.task(f"{self.name}: sync", total=len(pairs) * 2, unit="tables")
        deletes: list[tuple[TablePair, list[Any]]] = []
        read: dict[str, syncing.Changed] = {}
        now = datetime.now(UTC)
        logical_pairs = self._logical(pairs)
        capture = self.capture() if logical_pairs else None
        if self.reverse_refusal:
            result.metrics["reverse_capture"] = "full comparison; " + "; ".join(self.reverse_refusal)
        lags = ThreadPoolExecutor(max_workers=2)
        try:
            for pair in pairs:  # parents first
                if pair.watermark is not None:
                    changed = read[pair.label] = syncing.upsert_changed(
                        pair, ctx.journal, self.name, self._ranges(ctx, pair), workers, keys=self.item.delete)
                    result.created += changed.created
                    result.updated += changed.updated
                task.advance(1)
            logical_lag: float | None = None
            rescan = False
            if capture is not None and not capture.state().exists:
                # dropped (abandon, or by hand): a new slot first, so nothing from now on is missed, then one full
                # comparison of its tables catches whatever changed while there was none
                capture.ensure(ctx.journal, logical_pairs)
                ctx.journal.event("logical", f"replication slot {capture.name} was missing: recreated; this cycle "
                                  "compares its tables in full", item=self.name, outcome="warning")
                rescan = True
            elif capture is not None:
                outcome = capture.cycle(ctx.journal, logical_pairs, ctx.allow_mass_delete, self.item.parallel)
                result.created += outcome.created
                result.updated += outcome.updated
                result.deleted += outcome.deleted
                logical_lag = outcome.lag_seconds
                result.metrics["logical"] = {"changes": outcome.changes, "commits": outcome.commits,
                                             "truncated": outcome.truncated, "confirmed_lsn": outcome.confirmed}
            phase = {"changed_rows_seconds": round(time.monotonic() - started, 3)}
            # the lag is read while the key diff runs: rows it may still copy are older than the watermark
            lag_of = {p.label: lags.submit(syncing.table_lag, p, now, read.get(p.label)) for p in pairs}
            for pair in pairs:
                if pair in logical_pairs and not rescan or pair.watermark is not None and not self.item.delete:
                    task.advance(1)
                    continue
                if pair.label in in_parts:
                    created, updated, gone = in_parts[pair.label]
                    result.created += created
                    result.updated += updated
                    if self.item.delete:
                        deletes.append((pair, gone))
                    task.advance(1)
                    continue
                known = read[pair.label].keys if pair.label in read else None
                diffs = syncing.find_differences(pair, self._ranges(ctx, pair), key_only=pair.watermark is not None,
                                                 workers=workers, totals=known)
                copy = [d.source_key for d in diffs if d.kind != "missing_on_source" and d.source_key]
                syncing.copy_rows(pair, copy, self.item.parallel)  # type: ignore[arg-type]
                result.created += sum(1 for d in diffs if d.kind == "missing_on_target")
                result.updated += sum(1 for d in diffs if d.kind == "different")
                if self.item.delete:
                    deletes.append((pair, [d.target_key for d in diffs if d.kind == "missing_on_source"]))
                task.advance(1)
            check_deletes([syncing.planned_deletes(pair, keys) for pair, keys in deletes if keys],
                          ctx.allow_mass_delete)
            for pair, keys in reversed(deletes):  # children first
                result.deleted += syncing.delete_rows(pair, keys)
            lag_seconds = {label: future.result() for label, future in lag_of.items()}
        finally:
            lags.shutdown(wait=True, cancel_futures=True)
            task.close()
        worst = 0.0
        for pair in pairs:
            lag = logical_lag if pair in logical_pairs else lag_seconds[pair.label]
            ctx.journal.put(self.name, f"sync_clean:{pair.label}", now.isoformat())
            result.lag_detail[pair.label] = {"lag_seconds": lag, "since_clean_seconds": 0.0,
                                             "watermark": pair.watermark.column if pair.watermark else
                                             "logical decoding" if pair in logical_pairs else None}
            worst = max(worst, lag or 0.0)
        result.lag_seconds = worst
        result.metrics.update({"seconds": round(time.monotonic() - started, 3), "tables": len(pairs), **phase,
                               "rows_read": sum(p.rows_read for p in pairs)})
        return result

    def _seed_reverse_watermarks(self, ctx: StageContext, pairs: list[TablePair]) -> None:
        """Reverse replication starts where forward sync stopped: after the cutover's final sync both sides
        held the same rows, so the forward watermark is where the target's own changes begin (the overlap
        still re-reads the window before it)."""
        for pair in pairs:
            key = syncing.watermark_key(pair)
            if pair.watermark is not None and ctx.journal.get(self.name, key) is None:
                forward = ctx.journal.get(self.item.name, key)
                if forward is not None:
                    ctx.journal.put(self.name, key, forward)

    def reverse_ready(self, ctx: StageContext) -> tuple[bool, str]:
        """Proves, before any cutover step, that reverse replication would work: every moved table on the
        source accepts INSERT, UPDATE and DELETE from this runner (checked in a transaction that is rolled
        back: nothing is written), and the target can supply changes (by watermark column, else full diff)."""
        pairs = self._pairs()
        refused: list[str] = []
        with self.source.errors("cannot connect"), self.source.engine.connect() as conn:
            for pair in pairs:
                table = pair.source.clause
                cols = [table.c[n] for n in pair.columns]
                probes = [("DELETE", delete(table).where(false())),
                          ("UPDATE", update(table).where(false()).values({cols[0].name: cols[0]})),
                          ("INSERT", insert(table).from_select([c.name for c in cols], select(*cols).where(false())))]
                for verb, statement in probes:
                    try:
                        with conn.begin() as tx:
                            conn.execute(statement)
                            tx.rollback()
                    except SQLAlchemyError as exc:
                        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                        refused.append(f"{pair.label}: {verb} refused ({redact(reason)})")
                        break
        by_watermark = [f"{p.label} by {p.watermark.column}" for p in pairs if p.watermark is not None]
        by_log = self._reverse_logical(pairs)
        by_diff = [p.label for p in pairs if p.watermark is None and p.label not in by_log]
        supply = "; ".join(
            ([f"changes {', '.join(by_watermark)}"] if by_watermark else [])
            + ([f"its log (logical decoding) for {', '.join(by_log)}"] if by_log else [])
            + ([f"full checksum diff for {', '.join(by_diff)}"] if by_diff else []))
        if refused:
            return False, f"{self.source.label} not writable: " + "; ".join(refused)
        return True, f"{self.source.label} writable ({len(pairs)} tables: INSERT, UPDATE, DELETE checked); " \
                     f"target supplies {supply}"

    def _reverse_logical(self, pairs: list[TablePair]) -> list[str]:
        """The tables whose changes reverse replication would decode from the target's log."""
        if not self.item.uses_logical or self.reverse:
            return []
        back = DatabaseEngine(self.item, self.loaded, reverse=True)
        try:
            if back.capture() is None:
                return []
            logical = {info.label for info, wm in back._reflect_sources() if wm and wm.method == "logical"}
            return [p.label for p in pairs if p.label in logical]
        finally:
            back.close()

    def lag(self, ctx: StageContext) -> dict[str, Any]:
        """Per table: watermark lag now and seconds since the last clean sync cycle (reads only)."""
        now = datetime.now(UTC)
        out: dict[str, Any] = {}
        for pair in self._pairs():
            clean = ctx.journal.get(self.name, f"sync_clean:{pair.label}")
            since = (now - datetime.fromisoformat(clean)).total_seconds() if clean else None
            out[pair.label] = {"lag_seconds": syncing.table_lag(pair, now), "since_clean_seconds": since}
        return out

    def preview(self, ctx: StageContext) -> Preview:
        preview = Preview(self.name, self.kind, units="rows")
        source_engine = self.source.read_only_engine()
        try:
            sources = self._reflect_sources(source_engine)
            infos = [info for info, _ in sources]
            schema = build_target(infos, self.source.dialect, self.target.dialect)
            if schema.lossy:
                prefix = "lossy (accepted)" if self.item.accept_lossy else "lossy (refused: set accept_lossy)"
                preview.warnings += [f"{prefix}: {x}" for x in schema.lossy]
            target_engine = self.target.read_only_engine() if self.target.exists() else None
            if target_engine is None:
                preview.details.append(f"would create the database {self.target.sqlite_path}")
            done = ctx.journal.chunks(self.name, loading.STAGE)
            owned = set(ctx.journal.get(self.name, OWNED, []))
            entries = self.object_inventory(infos)
            preview.inventory = [asdict(e) for e in entries]
            preview.warnings += [f"not migrated: {e.ref} ({e.detail})"
                                 for e in inventory.not_moved(entries, self.item.not_migrated_ok)]
            with self.source.errors("cannot read"), source_engine.connect() as sconn:
                for info, wm in sources:
                    rows = estimate_rows(self.source, sconn, info)
                    self._preview_table(ctx, preview, info, wm, rows, target_engine, done, owned, sconn)
            if target_engine is not None and target_engine is not self.target._engine:
                target_engine.dispose()
            self._preview_slot(preview)
            preview.details.append(connection_budget(self, ctx))
        finally:
            if source_engine is not self.source._engine:
                source_engine.dispose()
        preview.estimate_seconds = round(preview.create / 200_000 + preview.update / 20_000, 1)
        return preview

    def _preview_table(self, ctx: StageContext, preview: Preview, info: TableInfo, wm: Incremental | None,
                       rows: int, target_engine: Engine | None, done: dict[str, Any], owned: set[str],
                       sconn: Any) -> None:
        exists = False
        if target_engine is not None:
            with self.target.errors("cannot read"), target_engine.connect() as tconn:
                exists = inspect(tconn).has_table(info.name, schema=info.schema)
                there = tconn.execute(select(func.count()).select_from(info.clause())).scalar() if exists else 0
                if exists and there and info.label not in owned:
                    action = "truncate" if self.item.existing_target == "truncate" else "refuse"
                    preview.warnings.append(f"target table {info.label} already holds {there} rows "
                                            f"(existing_target: {action})")
        stored = ctx.journal.get(self.name, loading.ranges_key(info.label))
        ranges = len(stored) if stored else 0
        loaded = [units for chunk, (status, units, _) in done.items()
                  if chunk.startswith(f"{info.label}#") and status == "done"]
        if not exists:
            preview.details.append(f"create table {info.label} ({len(info.columns)} columns, key "
                                   f"{', '.join(info.key)}) and load ~{rows} rows")
            preview.create += rows
        elif not ranges or len(loaded) < ranges:
            remaining = max(0, rows - sum(loaded))
            preview.details.append(f"load {info.label}: ~{remaining} of ~{rows} rows to go")
            preview.create += remaining
        elif wm is not None and wm.method == "logical":
            preview.details.append(f"sync {info.label}: the changes logical decoding recorded since the last cycle")
            preview.unchanged += rows
        elif wm is not None and wm.column is not None:
            self._wm_columns[info.label] = wm.column
            changed = self._changed_since(ctx, info, sconn)
            preview.details.append(f"sync {info.label}: ~{changed} rows changed since the watermark")
            preview.update += changed
            preview.unchanged += max(0, rows - changed)
        else:
            preview.details.append(f"sync {info.label}: full checksum diff (no watermark column)")
            preview.unchanged += rows

    def _preview_slot(self, preview: Preview) -> None:
        """The replication slot's WAL retention: a liability on the source, warned above max_retained_wal."""
        capture = self.capture()
        if capture is None:
            return
        state = capture.state()
        if not state.exists:
            preview.details.append(f"would create replication slot and publication {capture.name} before the load")
            return
        held = human_bytes(state.retained_bytes)
        preview.details.append(f"replication slot {capture.name}: {held} of WAL retained on {self.source.label}")
        if state.retained_bytes > self.item.max_retained_wal:
            preview.warnings.append(
                f"replication slot {capture.name} retains {held} of WAL on {self.source.label}, over "
                f"max_retained_wal ({human_bytes(self.item.max_retained_wal)}): run `migrate sync` (it confirms "
                "what it applies), or `migrate abandon` to drop the slot")

    def _changed_since(self, ctx: StageContext, info: TableInfo, sconn: Any) -> int:
        """Source rows stamped after the last watermark (rows inside the overlap are re-read by sync but are
        normally unchanged, so they are not counted as changes)."""
        stored = ctx.journal.get(self.name, f"wm:{info.label}")
        value = (decode_key(stored) or (None,))[0] if stored else None
        column = self._wm_columns.get(info.label)
        clause = info.clause()
        query = select(func.count()).select_from(clause)
        if column is None:
            return 0
        if value is not None:
            kind = info.column(column).kind
            if self.source.dialect == "sqlite" and kind.kind == "timestamp":
                ops = ops_for("sqlite", sconn.dialect)
                norm = raw_sql(ops.norm_sql(ops.quote(column), kind))
                query = query.where(norm > canonical_text(kind, value))
            else:
                query = query.where(clause.c[column] > value)
        return int(sconn.execute(query).scalar() or 0)

    def recorded_capture(self, journal: Journal) -> LogicalCapture | None:
        """The capture whose slot the journal says this engine made (none asked of the server)."""
        if slot_summary(journal, self.name) is None:
            return None
        return LogicalCapture(self.source, self.loaded.plan.component, self.name)

    def release(self, journal: Journal) -> list[str]:
        capture = self.recorded_capture(journal)
        return [f"{what} on {self.source.label}" for what in capture.drop()] if capture is not None else []

    def close(self) -> None:
        self.source.dispose()
        self.target.dispose()


def _existing(inspector: Any, infos: list[TableInfo]) -> set[tuple[str | None, str]]:
    """(schema, name) of the `infos` tables that exist on the inspected side: one catalog query per schema
    (tables and views, as `has_table` sees them) instead of one per table."""
    found: set[tuple[str | None, str]] = set()
    for schema in {info.schema for info in infos}:
        names = set(inspector.get_table_names(schema=schema)) | set(inspector.get_view_names(schema=schema))
        found |= {(info.schema, info.name) for info in infos if info.schema == schema and info.name in names}
    return found


def _qualified(label: str, default_schema: str | None) -> str:
    """A table's name with its schema (PostgreSQL's default schema for a bare name)."""
    return label if "." in label or default_schema is None else f"{default_schema}.{label}"


def _writable(path: Any) -> bool:
    return os.access(path, os.W_OK)


def _is_glob(name: str) -> bool:
    """`*`, `billing.*`, `obs_?`: a pattern over every user schema's tables, not one table's name."""
    return any(c in name for c in "*?[")
