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
PEEK = ("SELECT lsn::text, data FROM pg_logical_slot_peek_binary_changes(:slot, CAST(:upto AS pg_lsn), NULL, "
        "'proto_version', '1', 'publication_names', :publication)")


def names(component: str, item: str) -> str:
    """The slot's and the publication's name: lower-case letters, digits and `_`, at most 63 characters."""
    return ("migrate_" + re.sub(r"[^a-z0-9_]", "_", f"{component}_{item}".lower()))[:63]


def quoted_table(label: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in label.split(".", 1))


# --- the pgoutput protocol (version 1) ---------------------------------------------------------------


@dataclass
class Relation:
    schema: str
    name: str
    columns: list[str]

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class Change:
    """One decoded change: `op` is insert, update, delete or truncate; tuples map column name -> text (None
    for NULL; the key `UNCHANGED` marks TOASTed values the change does not carry)."""

    op: str
    tables: list[str]  # the relation's schema.name (several for a truncate)
    new: dict[str, str | None] | None = None
    old: dict[str, str | None] | None = None
    unchanged: frozenset[str] = frozenset()


@dataclass
class Commit:
    lsn: str  # the commit's end: confirming it acknowledges the whole transaction
    at: datetime


class Decoder:
    """Turns pgoutput messages into `Change`s and `Commit`s, remembering relations as they are announced.
    With `only` (schema.name -> columns), changes to other tables are skipped and only those columns' values
    are decoded (a cycle needs the keys; the rows are read from the source as they are now)."""

    def __init__(self, only: dict[str, set[str]] | None = None) -> None:
        self.relations: dict[int, Relation] = {}
        self.only = only
        self._stops: dict[int, int | None] = {}  # relation -> how many columns of its last section to read

    def decode(self, data: bytes) -> Change | Commit | None:
        kind = data[:1]
        if kind == b"R":
            self._relation(data)
        elif kind == b"C":
            _flags, _commit_lsn, end_lsn, ts = struct.unpack_from("!bqqq", data, 1)
            return Commit(_lsn_text(end_lsn), PG_EPOCH + timedelta(microseconds=ts))
        elif kind in (b"I", b"U", b"D"):
            return self._row_change(kind, data)
        elif kind == b"T":
            count, _options = struct.unpack_from("!ib", data, 1)
            ids = struct.unpack_from(f"!{count}i", data, 6)
            return Change("truncate", [self.relations[i].label for i in ids])
        return None  # Begin, Origin, Type, Message: nothing to apply

    def _relation(self, data: bytes) -> None:
        (relid,) = struct.unpack_from("!i", data, 1)
        pos = 5
        schema, pos = _cstring(data, pos)
        name, pos = _cstring(data, pos)
        pos += 1  # replica identity setting
        (count,) = struct.unpack_from("!h", data, pos)
        pos += 2
        columns = []
        for _ in range(count):
            pos += 1  # flags
            column, pos = _cstring(data, pos)
            pos += 8  # type oid, type modifier
            columns.append(column)
        self.relations[relid] = Relation(schema, name, columns)
        self._stops.pop(relid, None)  # announced again (its columns may have changed)

    def _row_change(self, kind: bytes, data: bytes) -> Change | None:
        (relid,) = struct.unpack_from("!i", data, 1)
        relation = self.relations[relid]
        wanted = None if self.only is None else self.only.get(relation.label)
        if self.only is not None and wanted is None:
            return None
        pos = 5
        old: dict[str, str | None] | None = None
        new: dict[str, str | None] | None = None
        unchanged: set[str] = set()
        # the last section (N, or a delete's K/O) is read only up to the last wanted column
        if relid not in self._stops:
            self._stops[relid] = None if wanted is None else \
                1 + max((i for i, c in enumerate(relation.columns) if c in wanted), default=len(relation.columns))
        stop = self._stops[relid]
        while pos < len(data):
            marker = data[pos:pos + 1]
            last = marker == b"N" or kind == b"D"
            values, pos, missing = _tuple(data, pos + 1, relation.columns, wanted, stop if last else None)
            if marker == b"N":
                new, unchanged = values, missing
            else:  # K (key columns) or O (the whole old row: REPLICA IDENTITY FULL)
                old = values
            if last:
                break
        op = {b"I": "insert", b"U": "update", b"D": "delete"}[kind]
        return Change(op, [relation.label], new=new, old=old, unchanged=frozenset(unchanged))


def _cstring(data: bytes, pos: int) -> tuple[str, int]:
    end = data.index(b"\x00", pos)
    return data[pos:end].decode(), end + 1


_INT16, _INT32 = struct.Struct("!h"), struct.Struct("!i")


def _tuple(data: bytes, pos: int, columns: list[str], wanted: set[str] | None = None,
           stop: int | None = None) -> tuple[dict[str, str | None], int, set[str]]:
    """Column values of one TupleData (only `wanted` ones decoded; reading ends after column `stop`, when
    nothing after it is needed: the returned position is then not the end of the tuple)."""
    (count,) = _INT16.unpack_from(data, pos)
    pos += 2
    values: dict[str, str | None] = {}
    missing: set[str] = set()
    length_of = _INT32.unpack_from
    for index in range(count if stop is None else min(count, stop)):
        kind = data[pos]
        pos += 1
        if kind == 0x6E:  # n: NULL
            values[columns[index]] = None
        elif kind == 0x75:  # u: an unchanged TOASTed value, not sent
            missing.add(columns[index])
        else:  # t (text) or b (binary)
            (length,) = length_of(data, pos)
            pos += 4
            if wanted is None or columns[index] in wanted:
                values[columns[index]] = data[pos:pos + length].decode()
            pos += length
    return values, pos, missing


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
    reduced to the net change per key, without consuming anything from the slot."""
    decoder = Decoder({table: set(columns) for table, (columns, _) in keys.items()})
    batch = Batch()
    result = conn.execution_options(stream_results=True, yield_per=2000).execute(
        text(PEEK), {"slot": slot, "upto": upto, "publication": publication})
    for _lsn, data in result:
        event = decoder.decode(bytes(data))
        if isinstance(event, Commit):
            batch.commits += 1
            batch.last_lsn = event.lsn
            batch.oldest_commit = batch.oldest_commit or event.at
            batch.newest_commit = event.at
        elif isinstance(event, Change):
            batch.changes += 1
            _reduce(batch, event, keys)
    return batch


def _key_of(values: dict[str, str | None] | None, columns: list[str],
            kinds: dict[str, ColumnKind]) -> tuple[Any, ...] | None:
    if values is None:
        return None
    try:
        return tuple(key_value(kinds[c], values[c]) for c in columns)
    except KeyError:  # a key column the change did not carry
        return None


def _reduce(batch: Batch, change: Change, keys: dict[str, tuple[list[str], dict[str, ColumnKind]]]) -> None:
    if change.op == "truncate":
        for table in change.tables:
            if table in keys:
                batch.truncate(table)
        return
    table = change.tables[0]
    if table not in keys:
        return
    columns, kinds = keys[table]
    old = _key_of(change.old, columns, kinds)
    if change.op == "delete":
        if old is None:
            raise MigrateError(f"{table}: a delete arrived without the key columns {', '.join(columns)}",
                               hint=f"ALTER TABLE {quoted_table(table)} REPLICA IDENTITY FULL;")
        batch.delete(table, old)
        return
    new = _key_of(change.new, columns, kinds) or old
    if new is None:
        raise MigrateError(f"{table}: a change arrived without its key columns {', '.join(columns)}")
    if change.op == "update" and old is not None and old != new:  # the key itself changed
        batch.delete(table, old)
    batch.upsert(table, new, change.op)


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
