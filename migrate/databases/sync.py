"""Incremental catch-up while both systems run.

Per table: rows whose watermark column is at or after (last watermark - overlap) are read from the source
and upserted where they differ on the target (the overlap catches rows that committed late with an older
watermark). Between two PostgreSQL servers the two parts are told apart: rows after the last watermark are
new since the last read and go straight into a staged merge; rows inside the overlap were read before, so
they are compared by key-range checksums computed in each database, narrowed to the overlap, and only the
ranges that differ are read (a table whose rows all share one `updated_at`, common after a batch job, is
compared, not copied again); the overlap's sums, the key sums below and the lag's maxima come from one scan
per side. Deletes are mirrored by comparing per-range key-only checksums and descending
only into ranges that differ, so a cycle costs little when little changed. A table without a watermark
column is brought in line by a full checksum diff instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

from sqlalchemy import and_, column, func, inspect, literal, select, table, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection
from sqlalchemy.sql import sqltypes

from migrate.databases.checksum import KeyRangeChecksum, RangeSums, RowDifference, first_pass
from migrate.databases.dialects import raw_sql
from migrate.databases.keyranges import Key, KeyRange, decode_key, encode_key
from migrate.databases.tables import Side, TablePair
from migrate.databases.values import as_datetime, canonical_text, same_value
from migrate.errors import EndpointError, MigrateError
from migrate.stages.guards import PlannedDeletes
from migrate.state.journal import Journal

BATCH = 1000


def watermark_key(pair: TablePair) -> str:
    return f"wm:{pair.label}"


def as_watermark(value: Any, kind: str) -> Any:
    """A watermark value as we store and compare it: timestamps become aware UTC datetimes."""
    if value is None or kind != "timestamp":
        return value
    moment = as_datetime(value)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def read_watermark(journal: Journal, item: str, pair: TablePair) -> Any:
    stored = journal.get(item, watermark_key(pair))
    key = decode_key(stored) if stored else None
    return key[0] if key else None


def record_watermark(journal: Journal, item: str, pair: TablePair, value: Any) -> None:
    journal.put(item, watermark_key(pair), encode_key((value,)))


def source_watermark(pair: TablePair) -> Any:
    """The source's current maximum watermark (None for an empty table or no watermark column)."""
    if pair.watermark is None:
        return None
    src = pair.source
    column = pair.watermark.column
    with src.endpoint.errors("cannot read the watermark"), src.endpoint.engine.connect() as conn:
        return as_watermark(src.max_of(conn, column), src.kinds[column].kind)


def _since(pair: TablePair, watermark: Any) -> Any:
    assert pair.watermark is not None
    if watermark is None:
        return None
    if isinstance(watermark, datetime):
        return watermark - timedelta(seconds=pair.watermark.overlap)
    if isinstance(watermark, str):
        return _text_since(pair, watermark)
    return watermark - pair.watermark.overlap


def _text_since(pair: TablePair, watermark: str) -> str:
    """A timestamp kept as text (SQLite's `datetime('now')`, ISO 8601): the overlap is taken off and the result
    written in the watermark's own style, so that text comparison in the database orders it rightly. Text that
    is not a timestamp cannot be a watermark (as text, '9' sorts after '10')."""
    assert pair.watermark is not None
    try:
        moment = datetime.fromisoformat(watermark.strip()) - timedelta(seconds=pair.watermark.overlap)
    except ValueError:
        raise MigrateError(
            f"{pair.label}: watermark column {pair.watermark.column!r} holds text that is not a timestamp "
            f"(the newest value is not ISO 8601)", hint="use a timestamp or integer column as `incremental.column`, "
            "or drop `incremental` for this table (sync then compares every row)") from None
    return moment.isoformat(sep="T" if "T" in watermark else " ",
                            timespec="microseconds" if "." in watermark else "seconds")


@dataclass
class Changed:
    """What one table's watermark read did: rows created and updated, the newest watermark read (None when it
    read no row), and what its first pass read besides (PostgreSQL to PostgreSQL): the whole table's key sums
    per side (`keys`, for the key comparison that finds deletes) and both sides' maximum watermark (`maxima`,
    for the lag)."""

    created: int = 0
    updated: int = 0
    newest: Any = None
    keys: tuple[RangeSums, RangeSums] | None = None
    maxima: tuple[Any, Any] | None = None


def upsert_changed(pair: TablePair, journal: Journal, item: str, ranges: list[KeyRange] | None = None,
                   workers: int = 2, keys: bool = False) -> Changed:
    """Upsert source rows changed since the watermark and advance the watermark.

    `newest` is the source's maximum watermark when this read saw any row (every row at or after the read's
    start was read, so the maximum is among them). `ranges`: the table's key ranges, for the overlap's checksum
    comparison (PostgreSQL to PostgreSQL); `keys`: the key comparison will follow (deletes are mirrored), so
    the overlap's scan reads the key sums too.
    """
    assert pair.watermark is not None
    src = pair.source
    column = pair.watermark.column
    kind = src.kinds[column]
    old = read_watermark(journal, item, pair)
    since = _since(pair, old)
    if same_postgres(pair):
        return _merge_changed(pair, journal, item, old, since, ranges or [KeyRange(None, None)], workers, keys)
    # no ORDER BY: through a cursor it would walk the whole key index instead of scanning for the watermark
    query = select(*pair.sync_columns(src))
    if since is not None:
        if src.dialect == "sqlite" and kind.kind == "timestamp":  # stored as text in any of several formats
            query = query.where(raw_sql(src.norm(column)) >= canonical_text(kind, since))
        else:
            query = query.where(src.col(column) >= since)
    wm_pos = pair.columns.index(column)
    newest = old
    changed = Changed()
    with src.endpoint.errors(f"sync read of {pair.label} failed"), src.endpoint.engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(query)
        iterator = iter(result)
        while batch := [tuple(r) for r in islice(iterator, BATCH)]:
            for row in batch:
                value = as_watermark(row[wm_pos], kind.kind)
                if value is not None and (newest is None or value > newest):
                    newest = value
                if value is not None and (changed.newest is None or value > changed.newest):
                    changed.newest = value
            _hold(pair)
            new, updated = _apply_batch(pair, batch)
            _moved(pair, len(batch))
            changed.created += new
            changed.updated += updated
    if newest is not None and newest != old:
        record_watermark(journal, item, pair, newest)
    return changed


def _merge_changed(pair: TablePair, journal: Journal, item: str, old: Any, since: Any, ranges: list[KeyRange],
                   workers: int, keys: bool) -> Changed:
    """PostgreSQL to PostgreSQL: rows after the last watermark in one staged merge; then one scan per side
    (`first_pass`) sums the rows inside the overlap (at or after `since`, at or before `old`), the keys of
    the whole table when `keys`, and reads the maximum watermark. Overlap ranges whose sums differ are
    compared further and merged."""
    src = pair.source
    column = pair.watermark.column  # type: ignore[union-attr]
    kind = src.kinds[column]
    query = select(*pair.source_columns())
    if old is not None:
        query = query.where(src.col(column) > old)
    created, updated, seen = merge_postgres(pair, query, column)
    changed = Changed(created, updated, as_watermark(seen, kind.kind))
    overlap = None
    if old is not None and since is not None:
        def narrowed(side: Side) -> Any:
            return and_(side.col(column) >= since, side.col(column) <= old)

        overlap = KeyRangeChecksum(pair, workers=workers, where=narrowed)
    key_sums = KeyRangeChecksum(pair, key_only=True, workers=workers) if keys else None
    checkers = [c for c in (overlap, key_sums) if c is not None]
    first = first_pass(pair, checkers, column)
    totals: dict[int, tuple[RangeSums, RangeSums]] = {}
    if first is not None:
        totals = dict(zip(map(id, checkers), first.totals, strict=True))
        changed.keys = totals.get(id(key_sums))
        changed.maxima = tuple(as_watermark(m, kind.kind) for m in first.maxima)  # type: ignore[assignment]
    if overlap is not None:
        late = [d.source_key for d in overlap.compare(ranges, totals=totals.get(id(overlap)))
                if d.kind != "missing_on_source" and d.source_key]
        more, rewritten = copy_rows(pair, late, workers)  # type: ignore[arg-type]
        changed.created += more
        changed.updated += rewritten
    # only now: a cycle interrupted before this point reads from the old watermark again, overlap included
    if changed.newest is not None and (old is None or changed.newest > old):
        record_watermark(journal, item, pair, changed.newest)
    return changed


def _apply_batch(pair: TablePair, rows: Sequence[tuple[Any, ...]]) -> tuple[int, int]:
    """Upsert the rows that are new or differ on the target; return (created, updated)."""
    src, tgt = pair.source, pair.target
    key_pos = [pair.columns.index(k) for k in pair.key]
    keys = [tuple(row[i] for i in key_pos) for row in rows]
    target_keys = [pair.key_on(tgt, k, src) for k in keys]
    current: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    with tgt.endpoint.errors(f"sync read of {pair.label} failed"), tgt.endpoint.engine.connect() as conn:
        query = select(*pair.sync_columns(tgt)).where(
            tgt.ops.key_in([tgt.col(k) for k in pair.key], target_keys))  # type: ignore[arg-type]
        for found in conn.execute(query):
            current[_canonical_key(pair, tuple(found[i] for i in key_pos))] = tuple(found)
    kinds = src.kinds
    todo: list[tuple[Any, ...]] = []
    created = updated = 0
    for row, key in zip(rows, keys, strict=True):
        there = current.get(_canonical_key(pair, key))
        if there is None:
            created += 1
        elif all(same_value(kinds[n], canonical_text(kinds[n], a), canonical_text(kinds[n], b), pair.tolerance)
                 for n, a, b in zip(pair.columns, row, there, strict=True)):
            continue
        else:
            updated += 1
        todo.append(pair.convert_row(row))
    upsert(pair, todo)
    return created, updated


def _canonical_key(pair: TablePair, key: Key) -> tuple[str | None, ...]:
    return tuple(canonical_text(pair.source.kinds[k], v) for k, v in zip(pair.key, key, strict=True))


def find_differences(pair: TablePair, ranges: list[KeyRange], *, key_only: bool, workers: int,
                     totals: tuple[RangeSums, RangeSums] | None = None) -> list[RowDifference]:
    """Differences in `ranges`: which keys exist (key_only) or which rows differ. `totals`: the whole table's
    sums of that comparison when already read (`Changed.keys`)."""
    checker = KeyRangeChecksum(pair, key_only=key_only, workers=workers)
    return list(checker.compare(ranges, totals=totals))


def copy_rows(pair: TablePair, source_keys: Sequence[Key], workers: int = 1) -> tuple[int, int]:
    """Upsert the source rows with these keys onto the target; return (created, updated) where the merge
    counts them (PostgreSQL to PostgreSQL, up to `workers` merges of disjoint keys at once, each its own
    transaction: the target's sessions run as replication, so a row's foreign keys do not wait for a part
    another merge writes), else (0, 0)."""
    src = pair.source
    if same_postgres(pair):
        def merge(part: list[Key]) -> tuple[int, int, Any]:
            return merge_postgres(pair, select(*pair.source_columns()).where(
                src.ops.key_in([src.col(k) for k in pair.key], part)))

        step = max(MIN_MERGE_KEYS, min(MERGE_KEYS, -(-len(source_keys) // max(1, workers))))
        parts = [list(source_keys[start:start + step]) for start in range(0, len(source_keys), step)]
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(parts)))) as pool:
            counts = list(pool.map(merge, parts))
        return sum(c[0] for c in counts), sum(c[1] for c in counts)
    for start in range(0, len(source_keys), BATCH):
        part = list(source_keys[start:start + BATCH])
        query = select(*pair.sync_columns(src)).where(
            src.ops.key_in([src.col(k) for k in pair.key], part))
        with src.endpoint.errors(f"sync read of {pair.label} failed"), src.endpoint.engine.connect() as conn:
            rows = [pair.convert_row(r) for r in conn.execute(query)]
        _hold(pair)
        upsert(pair, rows)
        _moved(pair, len(rows))
    return 0, 0


MERGE_KEYS = 50_000  # at most this many keys per staged merge when copying rows by key
MIN_MERGE_KEYS = 5_000  # fewer are not worth a merge of their own
STAGE = "migrate_stage"  # the staging table of a merge: temporary, dropped at commit


def same_postgres(pair: TablePair) -> bool:
    return pair.source.dialect == pair.target.dialect == "postgresql"


def merge_postgres(pair: TablePair, query: Any, watermark: str | None = None) -> tuple[int, int, Any]:
    """PostgreSQL -> PostgreSQL: stream the rows `query` selects on the source (COPY, binary where the majors
    match) into a temporary staging table on the target, then merge them in one statement, writing only rows
    that are new or differ (`IS DISTINCT FROM`). Returns (created, updated, the staged rows' newest
    `watermark` value). One target transaction: a failure leaves the target as it was."""
    src, tgt = pair.source, pair.target
    quote = tgt.ops.quote
    cols = ", ".join(quote(c) for c in pair.columns)
    target = tgt.ops.qualified(tgt.clause)
    stage = table(STAGE, *[column(c) for c in pair.columns])
    _hold(pair)
    with tgt.endpoint.errors(f"merge into {pair.label} failed"), tgt.endpoint.engine.connect() as tconn, \
            src.endpoint.errors(f"sync read of {pair.label} failed"), src.endpoint.engine.connect() as sconn:
        tconn.begin()
        tconn.exec_driver_sql(f"CREATE TEMP TABLE {STAGE} ON COMMIT DROP AS SELECT {cols} FROM {target} "
                              "WITH NO DATA")
        compiled = query.compile(dialect=sconn.dialect, compile_kwargs={"render_postcompile": True})
        staged = tgt.ops.copy_between(sconn, tconn, str(compiled), compiled.params,  # type: ignore[attr-defined]
                                      stage, pair.columns)
        sconn.rollback()
        newest = tconn.exec_driver_sql(f"SELECT max({quote(watermark)}) FROM {STAGE}").scalar() \
            if watermark else None
        keys = ", ".join(quote(k) for k in pair.key)
        others = [c for c in pair.columns if c not in pair.key]
        if _unique_on_target(pair, tconn):
            action = "DO NOTHING" if not others else (
                "DO UPDATE SET " + ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in others)
                + f" WHERE ({', '.join(_comparable(pair, 't', c) for c in others)}) IS DISTINCT FROM "
                + f"({', '.join(_comparable(pair, 'EXCLUDED', c) for c in others)})")
            counts = tconn.exec_driver_sql(
                f"WITH written AS (INSERT INTO {target} AS t ({cols}) SELECT {cols} FROM {STAGE} "
                f"ON CONFLICT ({keys}) {action} RETURNING (xmax = 0) AS created) "
                "SELECT count(*) FILTER (WHERE created), count(*) FILTER (WHERE NOT created) FROM written").one()
        else:  # the target does not enforce the key: replace the staged keys' rows
            match = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in pair.key)
            gone = tconn.exec_driver_sql(f"DELETE FROM {target} AS t USING {STAGE} AS s WHERE {match}").rowcount
            added = tconn.exec_driver_sql(f"INSERT INTO {target} ({cols}) SELECT {cols} FROM {STAGE}").rowcount
            counts = (max(0, added - gone), min(added, gone))  # type: ignore[assignment]
        tconn.commit()
    _moved(pair, staged)
    return int(counts[0]), int(counts[1]), newest


def _hold(pair: TablePair) -> None:
    """Before writing: wait while the item is paused (`migrate throttle --pause`) or over its rate."""
    if pair.throttle is not None:
        pair.throttle.hold()


def _moved(pair: TablePair, rows: int) -> None:
    """Count rows read from the source, also against the item's limits (waits while over them, or paused)."""
    pair.rows_read += rows
    if pair.throttle is not None:
        pair.throttle.rows(rows)


def _comparable(pair: TablePair, alias: str, name: str) -> str:
    """`alias.name` for a row comparison; as text for types PostgreSQL has no equality for (json, xml, geometry,
    and types SQLAlchemy does not know)."""
    quoted = f"{alias}.{pair.target.ops.quote(name)}"
    kind = pair.target.info.column(name).type
    no_equality = (isinstance(kind, sqltypes.JSON) and not isinstance(kind, postgresql.JSONB)) \
        or isinstance(kind, sqltypes.NullType) \
        or (pair.target.info.column(name).declared or "").lower() in ("xml", "point", "line", "lseg", "box", "path",
                                                                      "polygon", "circle")
    return f"{quoted}::text" if no_equality else quoted


def upsert(pair: TablePair, rows: Sequence[tuple[Any, ...]]) -> None:
    """Write these rows (target values) to the target in one transaction. When the batch fails for a reason
    that is not transient, the rows are tried one by one so the error names the key at fault."""
    tgt = pair.target
    if not rows:
        return
    try:
        with tgt.endpoint.errors(f"upsert into {pair.label} failed"), tgt.endpoint.engine.begin() as conn:
            _write(pair, conn, rows)
    except EndpointError as exc:
        if exc.transient or len(rows) == 1:
            raise
        key_pos = [pair.columns.index(k) for k in pair.key]
        for row in rows:
            where = ", ".join(f"{k}={row[i]}" for k, i in zip(pair.key, key_pos, strict=True))
            with tgt.endpoint.errors(f"upsert into {pair.label} failed at key {where}"), \
                    tgt.endpoint.engine.begin() as conn:
                _write(pair, conn, [row])
        raise


def _write(pair: TablePair, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> None:
    """Upsert by key; on a target table that does not enforce the key (a table without a primary key, moved
    with `key:` from the plan), delete those keys and insert the rows, in the caller's transaction."""
    tgt = pair.target
    if tgt.dialect == "mssql" or _unique_on_target(pair, conn):  # MERGE needs no constraint
        tgt.ops.upsert_rows(conn, tgt.clause, pair.columns, pair.key, rows)
        return
    key_pos = [pair.columns.index(k) for k in pair.key]
    tgt.ops.delete_keys(conn, tgt.clause, pair.key, [tuple(row[i] for i in key_pos) for row in rows])
    tgt.ops.write_rows(conn, tgt.clause, pair.columns, rows)


def _unique_on_target(pair: TablePair, conn: Connection) -> bool:
    """The target enforces the key, so an upsert can use it: a unique index on exactly the key's columns (on
    PostgreSQL one catalog query, and only an index ON CONFLICT can use: valid, not deferred, not partial;
    INCLUDE columns aside). Asked once per table."""
    if pair.unique_on_target is None:
        info, key = pair.target.info, set(pair.key)
        if pair.target.dialect == "postgresql":
            pair.unique_on_target = bool(conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = CAST(:t AS regclass) AND i.indisunique "
                "AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL "
                "AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a "
                "WHERE a.attrelid = i.indrelid AND a.attnum = ANY((i.indkey::int2[])[0:i.indnkeyatts - 1])) "
                "= CAST(:key AS text[]))"),
                {"t": pair.target.ops.qualified(pair.target.clause), "key": sorted(key)}).scalar())
            return pair.unique_on_target
        found = inspect(conn)
        keys: list[list[Any]] = [found.get_pk_constraint(info.name, schema=info.schema).get("constrained_columns")
                                 or []]
        keys += [list(u["column_names"]) for u in found.get_unique_constraints(info.name, schema=info.schema)]
        keys += [list(i["column_names"]) for i in found.get_indexes(info.name, schema=info.schema)
                 if i.get("unique")]
        pair.unique_on_target = any(set(k) == key for k in keys)
    return pair.unique_on_target


def planned_deletes(pair: TablePair, target_keys: Sequence[Key]) -> PlannedDeletes:
    """What deleting these keys would take from the target table, for the mass-delete guard (two counts)."""
    src, tgt = pair.source, pair.target
    with src.endpoint.errors("count failed"), src.endpoint.engine.connect() as conn:
        source_empty = conn.execute(select(literal(1)).select_from(src.clause).limit(1)).first() is None
    with tgt.endpoint.errors("count failed"), tgt.endpoint.engine.connect() as conn:
        held = conn.execute(select(func.count()).select_from(tgt.clause)).scalar_one()
    return PlannedDeletes(f"table {pair.label}", len(target_keys), int(held), source_empty)


def delete_rows(pair: TablePair, target_keys: Sequence[Key]) -> int:
    """Delete these keys (target values) on the target."""
    tgt = pair.target
    if not target_keys:
        return 0
    with tgt.endpoint.errors(f"delete from {pair.label} failed"), tgt.endpoint.engine.begin() as conn:
        tgt.ops.delete_keys(conn, tgt.clause, pair.key, list(target_keys))
    return len(target_keys)


def table_lag(pair: TablePair, now: datetime | None = None, read: Changed | None = None) -> float | None:
    """Source max watermark minus target max watermark, in seconds (None without a timestamp watermark).

    `read`: what this cycle's watermark read found: both maxima when its first pass read them (no query at
    all), else the source's newest watermark where it read rows (saves a scan); else both are read at once.
    """
    if pair.watermark is None:
        return None
    column = pair.watermark.column
    kind = pair.source.kinds[column].kind
    tgt = pair.target

    def target_max() -> Any:
        with tgt.endpoint.errors("cannot read the watermark"), tgt.endpoint.engine.connect() as conn:
            return as_watermark(tgt.max_of(conn, column), kind)

    if read is not None and read.maxima is not None:
        src_max, tgt_max = read.maxima
    else:
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = pool.submit(target_max)
            known = read.newest if read is not None else None
            src_max = known if known is not None else source_watermark(pair)
            tgt_max = pending.result()
    if src_max is None:
        return 0.0
    if not isinstance(src_max, datetime):
        return 0.0 if tgt_max == src_max else None
    if tgt_max is None:
        return max(0.0, ((now or datetime.now(UTC)) - src_max).total_seconds())
    return max(0.0, (src_max - tgt_max).total_seconds())
