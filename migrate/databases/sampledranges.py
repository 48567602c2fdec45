"""Key ranges from PostgreSQL's own statistics: for a single integer key, the column's histogram (pg_stats,
kept by ANALYZE) gives chunk boundaries without reading the key index, where walking it costs a scan of every
key (a fifth of a second per million rows). Buckets larger than a chunk are cut evenly by value.

Ranges need not hold exactly `chunk_rows` rows: they only have to cover every key, which `split()` ensures
(the first range is open below, the last open above), so stale statistics make chunks uneven, never wrong.
Without statistics (never analyzed), with stale ones (the table grew or shrank by more than a fifth since), or
for any other key, the caller walks the index as before. Small tables
use their statistics too: a walk costs two index scans per 100,000 rows before the table's first row moves,
and a load of many small tables waited 0.25 s on them (20 tables of 100,000 rows, measured)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from migrate.databases.tables import TablePair


def histogram_bounds(pair: TablePair, conn: Connection, chunk_rows: int) -> list[tuple[int]] | None:
    """Boundaries about `chunk_rows` rows apart for a PostgreSQL source table keyed by one integer column, from
    its statistics; None when they cannot be used."""
    src = pair.source
    if src.dialect != "postgresql" or len(pair.key) != 1 or src.kinds[pair.key[0]].kind != "int":
        return None
    info = src.info
    qualified = f'"{info.schema}"."{info.name}"' if info.schema else f'"{info.name}"'
    row = conn.execute(text(
        "SELECT c.reltuples::bigint, s.histogram_bounds::text, c.relpages, "
        "pg_relation_size(c.oid) / current_setting('block_size')::int FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname AND s.attname = :k "
        "WHERE c.oid = CAST(:t AS regclass)"), {"t": qualified, "k": pair.key[0]}).first()
    if row is None or row[1] is None or row[0] is None or row[0] < 0 or not _fresh(row[2], row[3]):
        return None
    try:
        edges = sorted({int(v) for v in str(row[1]).strip("{}").split(",")})
    except ValueError:
        return None
    if len(edges) < 3:
        return None
    per_bucket = int(row[0]) / (len(edges) - 1)
    bounds: list[int] = []
    carried = 0.0  # rows since the last boundary
    for lo, hi in zip(edges, edges[1:], strict=False):
        cuts = int(per_bucket // chunk_rows)
        if cuts >= 1:  # a bucket of several chunks: cut it evenly by value
            step = (hi - lo) / (cuts + 1)
            bounds += [lo + round(step * i) for i in range(1, cuts + 1)]
        carried += per_bucket - cuts * chunk_rows
        if cuts >= 1 or carried >= chunk_rows:
            bounds.append(hi)
            carried = 0.0
    return [(b,) for b in sorted(set(bounds))]


def _fresh(pages_then: int, pages_now: int) -> bool:
    """Statistics still describe the table: its size has not moved by more than a fifth since they were taken.
    Rows added since would all fall past the histogram's last edge, into one open-ended chunk."""
    return abs(int(pages_now) - int(pages_then)) <= max(1, int(pages_then)) // 5
