"""PostgreSQL logical decoding as a change source: the built-in `pgoutput` plugin, read through the SQL interface.

Why the SQL interface (`pg_logical_slot_peek_binary_changes` + `pg_replication_slot_advance`) and not the
streaming replication protocol: a sync cycle is a batch (read what committed up to now, apply it, confirm), so
a stream's one advantage, push latency, buys nothing; the SQL interface needs no replication connection (no
`replication` line in pg_hba.conf, works through PgBouncer and Azure's gateways), and it separates reading
from confirming by construction: `peek` consumes nothing, and the slot moves only when `confirm` is called
after the target's transaction committed. A runner killed anywhere between the two replays the same changes
next time, and replaying converges because every change is applied by key (upsert of the row as the source
holds it now, delete by key). Measured in bench/bench_sync.py.

A slot and a publication per database item (`migrate_<component>_<item>`), created before the load reads its
first row, so nothing committed during the load is missed.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import text
from sqlalchemy.engine import Connection

from migrate.databases.values import ColumnKind
from migrate.errors import MigrateError

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
PEEK = ("SELECT data FROM pg_logical_slot_peek_binary_changes(%(slot)s, %(upto)s::pg_lsn, NULL, "
        "'proto_version', '1', 'publication_names', %(publication)s)")
FETCH_ROWS = 20_000  # messages per round trip
DECODING_MEMORY = "256MB"  # the server's reorder buffer for this read, before it spills a transaction to disk


def names(component: str, item: str) -> str:
    """The slot's and the publication's name: lower-case letters, digits and `_`, at most 63 characters."""
    return ("migrate_" + re.sub(r"[^a-z0-9_]", "_", f"{component}_{item}".lower()))[:63]


def quoted_table(label: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in label.split(".", 1))


# --- the pgoutput protocol (version 1) ---------------------------------------------------------------


@dataclass
class Relation:
    """A table as the log announced it, and where the plan's key columns sit among its columns."""

    label: str  # schema.name
    columns: list[str]
    positions: list[int] | None = None  # the key columns' positions, in key order; None: a table we do not move
    kinds: list[ColumnKind] = field(default_factory=list)
    stop: int = 0  # columns to read of a tuple to have every key column


class Decoder:
    """Reads pgoutput messages straight into a `Batch`: relations as they are announced, each row change reduced
    to its key (only the key columns' text is decoded: a cycle reads the rows from the source as they are now),
    commits as the positions to confirm."""

    def __init__(self, keys: dict[str, tuple[list[str], dict[str, ColumnKind]]]) -> None:
        self.keys = keys  # schema.name -> key columns and their kinds
        self.relations: dict[int, Relation] = {}

    def feed(self, data: bytes, batch: Batch) -> None:
        kind = data[0]
        if kind in _ROW:
            relation = self.relations[_INT32.unpack_from(data, 1)[0]]
            if relation.positions is not None:
                batch.changes += 1
                self._row_change(kind, data, relation, batch)
        elif kind == 0x43:  # C: commit
            _flags, _commit_lsn, end_lsn, ts = _COMMIT.unpack_from(data, 1)
            batch.commit(_lsn_text(end_lsn), PG_EPOCH + timedelta(microseconds=ts))
        elif kind == 0x52:  # R: relation
            self._relation(data)
        elif kind == 0x54:  # T: truncate
            count, _options = struct.unpack_from("!ib", data, 1)
            ids = struct.unpack_from(f"!{count}i", data, 6)
            labels = [self.relations[i].label for i in ids]
            batch.changes += 1
            for label in labels:
                if label in self.keys:
                    batch.truncate(label)
        # Begin, Origin, Type, Message: nothing to apply

    def _relation(self, data: bytes) -> None:
        (relid,) = _INT32.unpack_from(data, 1)
        pos = 5
        schema, pos = _cstring(data, pos)
        name, pos = _cstring(data, pos)
        pos += 1  # replica identity setting
        (count,) = _INT16.unpack_from(data, pos)
        pos += 2
        columns = []
        for _ in range(count):
            pos += 1  # flags
            column, pos = _cstring(data, pos)
            pos += 8  # type oid, type modifier
            columns.append(column)
        relation = Relation(f"{schema}.{name}", columns)
        if relation.label in self.keys:
            key, kinds = self.keys[relation.label]
            if all(c in columns for c in key):
                relation.positions = [columns.index(c) for c in key]
                relation.kinds = [kinds[c] for c in key]
                relation.stop = 1 + max(relation.positions)
            else:
                relation.positions = []  # a key column is not in the table any more: every change lacks its key
        self.relations[relid] = relation  # announced again when its columns change

    def _row_change(self, kind: int, data: bytes, relation: Relation, batch: Batch) -> None:
        old = None
        if kind == 0x55 and data[5] != 0x4E:  # U with K (key columns) or O (old row) before N
            old, pos = _key(data, 6, relation, whole=True)
            new, _ = _key(data, pos + 1, relation)
            if new is None:
                new = old
        elif kind == 0x44:  # D: K or O only
            old, _ = _key(data, 6, relation)
            if old is None:
                raise MigrateError(f"{relation.label}: a delete arrived without its key columns",
                                   hint=f"ALTER TABLE {quoted_table(relation.label)} REPLICA IDENTITY FULL;")
            batch.delete(relation.label, old)
            return
        else:  # I, or U with N only
            new, _ = _key(data, 6, relation)
        if new is None:
            raise MigrateError(f"{relation.label}: a change arrived without its key columns")
        if old is not None and old != new:  # the key itself changed
            batch.delete(relation.label, old)
        batch.upsert(relation.label, new, "insert" if kind == 0x49 else "update")


_ROW = frozenset(b"IUD")
_INT16, _INT32, _COMMIT = struct.Struct("!h"), struct.Struct("!i"), struct.Struct("!bqqq")


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1


def _key(data: bytes, pos: int, relation: Relation, whole: bool = False) -> tuple[tuple[Any, ...] | None, int]:
    """The key of one TupleData starting at `pos`, or None when a key column is not in it (an unchanged
    TOASTed value, or a table that lost a key column); and where reading stopped (the tuple's end with `whole`,
    else just after the last key column)."""
    (count,) = _INT16.unpack_from(data, pos)
    pos += 2
    if relation.stop == 1 and not whole and count and data[pos] == 0x74:  # the common case: one key
        (length,) = _INT32.unpack_from(data, pos + 1)  # column, first, with a value
        value = data[pos + 5:pos + 5 + length]
        first = relation.kinds[0]
        return (int(value) if first.kind == "int" else key_value(first, value.decode()),), pos + 5 + length
    wanted = relation.positions or []
    texts: dict[int, str | None] = {}
    length_of = _INT32.unpack_from
    for index in range(count if whole else min(count, relation.stop)):
        kind = data[pos]
        pos += 1
        if kind == 0x6E:  # n: NULL
            texts[index] = None
        elif kind != 0x75:  # t (text) or b (binary); u: an unchanged TOASTed value, not sent
            (length,) = length_of(data, pos)
            pos += 4
            if index in wanted:
                texts[index] = data[pos:pos + length].decode()
            pos += length
    if not wanted or any(p not in texts for p in wanted):
        return None, pos
    return tuple(key_value(k, texts[p]) for p, k in zip(wanted, relation.kinds, strict=True)), pos


def _lsn_text(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def lsn_number(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def key_value(kind: ColumnKind, value: str | None) -> Any:
    """A key column's text as pgoutput sends it, as the Python value a query compares it with."""
    if value is None:
        return None
    if kind.kind == "int":
        return int(value)
    if kind.kind == "decimal":
        return Decimal(value)
    if kind.kind == "float":
        return float(value)
    if kind.kind == "bool":
        return value == "t"
    if kind.kind == "uuid":
        return UUID(value)
    if kind.kind == "binary":
        return bytes.fromhex(value[2:]) if value.startswith("\\x") else value.encode()
    if kind.kind == "date":
        from datetime import date

        return date.fromisoformat(value)
    if kind.kind == "timestamp":
        return datetime.fromisoformat(value + (":00" if re.search(r"[+-]\d\d$", value) else ""))
    return value


# --- reading and confirming -------------------------------------------------------------------------


@dataclass
class Batch:
    """What one read of the slot found: per table, the net change of each key in commit order."""

    upserts: dict[str, dict[tuple[Any, ...], str]] = field(default_factory=dict)  # table -> key -> insert|update
    deletes: dict[str, dict[tuple[Any, ...], None]] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)  # tables truncated (before any change listed after)
    changes: int = 0
    commits: int = 0
    last_lsn: str | None = None  # the end of the last whole transaction read: what to confirm
    oldest_commit: datetime | None = None
    newest_commit: datetime | None = None

    def commit(self, lsn: str, at: datetime) -> None:
        self.commits += 1
        self.last_lsn = lsn
        self.oldest_commit = self.oldest_commit or at
        self.newest_commit = at

    def upsert(self, table: str, key: tuple[Any, ...], op: str) -> None:
        """Insert or update; a key deleted earlier in the batch and written again was there before: update."""
        was_deleted = self.deletes.get(table, {}).pop(key, "") is None
        self.upserts.setdefault(table, {}).setdefault(key, "update" if was_deleted else op)

    def delete(self, table: str, key: tuple[Any, ...]) -> None:
        self.upserts.get(table, {}).pop(key, None)
        self.deletes.setdefault(table, {})[key] = None

    def truncate(self, table: str) -> None:
        self.upserts.pop(table, None)
        self.deletes.pop(table, None)
        if table not in self.truncated:
            self.truncated.append(table)


def read(conn: Connection, slot: str, publication: str, upto: str,
         keys: dict[str, tuple[list[str], dict[str, ColumnKind]]]) -> Batch:
    """Every change committed up to `upto` (an LSN) on the tables in `keys` (label -> key columns and kinds),
    reduced to the net change per key, without consuming anything from the slot. Read through a server-side
    cursor in binary (the messages arrive as bytes, a batch at a time: memory holds the keys, not the log)."""
    decoder = Decoder(keys)
    batch = Batch()
    raw = conn.connection.driver_connection
    conn.exec_driver_sql(f"SET LOCAL logical_decoding_work_mem = '{DECODING_MEMORY}'")
    with raw.cursor(name="migrate_peek", binary=True) as cursor:  # type: ignore[union-attr]
        cursor.itersize = FETCH_ROWS
        cursor.execute(PEEK, {"slot": slot, "upto": upto, "publication": publication})
        for (data,) in cursor:
            decoder.feed(data, batch)
    return batch


def confirm(conn: Connection, slot: str, lsn: str) -> None:
    """Tell the slot that everything up to `lsn` is applied (called after the target committed it)."""
    conn.execute(text("SELECT pg_replication_slot_advance(:slot, CAST(:lsn AS pg_lsn))"), {"slot": slot, "lsn": lsn})
    conn.commit()


def current_lsn(conn: Connection) -> str:
    return str(conn.execute(text("SELECT pg_current_wal_lsn()::text")).scalar_one())


# --- the slot and the publication -------------------------------------------------------------------


@dataclass
class SlotState:
    slot: str
    exists: bool
    retained_bytes: int = 0  # WAL the server keeps for this slot
    confirmed_lsn: str | None = None
    active: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"slot": self.slot, "exists": self.exists, "retained_bytes": self.retained_bytes,
                "confirmed_lsn": self.confirmed_lsn}


def slot_state(conn: Connection, slot: str) -> SlotState:
    row = conn.execute(text(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, confirmed_flush_lsn::text, active "
        "FROM pg_replication_slots WHERE slot_name = :slot"), {"slot": slot}).first()
    if row is None:
        return SlotState(slot, False)
    return SlotState(slot, True, int(row[0] or 0), row[1], bool(row[2]))


def problems(conn: Connection, slot: str, tables: Sequence[tuple[str, list[str], bool]]) -> list[str]:
    """What stops logical decoding on this source, each with the SQL that fixes it. `tables`: (label, plan key
    columns, whether the table has a primary key)."""
    found = []
    level = conn.execute(text("SHOW wal_level")).scalar_one()
    if level != "logical":
        found.append(f"wal_level is {level}, logical decoding needs logical: ALTER SYSTEM SET wal_level = logical; "
                     "then restart PostgreSQL (on Azure Database for PostgreSQL: set the server parameter "
                     "wal_level to LOGICAL)")
    has_slot = conn.execute(text("SELECT count(*) FROM pg_replication_slots WHERE slot_name = :s"),
                            {"s": slot}).scalar_one()
    if not has_slot:
        used, limit = conn.execute(text(
            "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::int"
        )).one()
        if used >= limit:
            found.append(f"no free replication slot ({used} of max_replication_slots = {limit} in use): "
                         f"ALTER SYSTEM SET max_replication_slots = {limit + 2}; then restart PostgreSQL, or drop "
                         "an unused slot with SELECT pg_drop_replication_slot('name');")
    for label, key, has_primary_key in tables:
        identity, identity_columns = _replica_identity(conn, label)
        covered = identity == "f" or (identity in ("d", "i") and set(key) <= set(identity_columns))
        if not covered:
            why = "has no primary key" if not has_primary_key else f"its replica identity does not hold {key}"
            found.append(f"{label} {why}, so its deletes would arrive without a key: "
                         f"ALTER TABLE {quoted_table(label)} REPLICA IDENTITY FULL;")
    return found


def _replica_identity(conn: Connection, label: str) -> tuple[str, list[str]]:
    row = conn.execute(text(
        "SELECT c.relreplident, coalesce(array_agg(a.attname::text) FILTER (WHERE a.attname IS NOT NULL), '{}') "
        "FROM pg_class c "
        "LEFT JOIN pg_index i ON i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) "
        "  OR (c.relreplident = 'i' AND i.indisreplident)) "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
        "WHERE c.oid = CAST(:t AS regclass) GROUP BY c.relreplident"), {"t": quoted_table(label)}).one()
    return str(row[0]), list(row[1])


def ensure(conn: Connection, name: str, tables: Sequence[str]) -> list[str]:
    """The publication (for exactly these tables; missing ones added) and the slot; returns what was made.
    Call before the load reads a row: the slot's start is where nothing can be missed from."""
    made = []
    exists = conn.execute(text("SELECT count(*) FROM pg_publication WHERE pubname = :n"), {"n": name}).scalar_one()
    wanted = ", ".join(quoted_table(t) for t in tables)
    if not exists:
        conn.execute(text(f'CREATE PUBLICATION "{name}" FOR TABLE {wanted}'))
        made.append(f"publication {name}")
    else:
        have = {f"{s}.{t}" for s, t in conn.execute(text(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = :n"), {"n": name})}
        missing = [t for t in tables if t not in have]
        if missing:
            conn.execute(text(f'ALTER PUBLICATION "{name}" ADD TABLE ' + ", ".join(map(quoted_table, missing))))
            made.append(f"publication {name} + {', '.join(missing)}")
    conn.commit()
    if not slot_state(conn, name).exists:
        conn.execute(text("SELECT pg_create_logical_replication_slot(:n, 'pgoutput')"), {"n": name})
        conn.commit()
        made.append(f"replication slot {name}")
    return made


def drop(conn: Connection, name: str) -> list[str]:
    """Drop the slot and the publication (whichever exist); returns what was dropped."""
    dropped = []
    if slot_state(conn, name).exists:
        conn.execute(text("SELECT pg_drop_replication_slot(:n)"), {"n": name})
        dropped.append(f"replication slot {name}")
    if conn.execute(text("SELECT count(*) FROM pg_publication WHERE pubname = :n"), {"n": name}).scalar_one():
        conn.execute(text(f'DROP PUBLICATION "{name}"'))
        dropped.append(f"publication {name}")
    conn.commit()
    return dropped
