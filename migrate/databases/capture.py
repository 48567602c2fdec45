"""Change sources for sync. Two implementations behind one shape, chosen per table by `incremental.method`:

- watermark (`migrate.databases.sync`): rows whose watermark column moved, plus a key-range diff for deletes;
  portable, the default where `column` is given;
- logical (here): PostgreSQL logical decoding of the item's slot (`migrate.databases.logical`): every insert,
  update (also one that forgets `updated_at`), delete and truncate, in commit order.

SQL Server Change Tracking would be a third: like `LogicalCapture`, a `cycle` that turns the source's change
record into keys to upsert and keys to delete, and a `confirm` that moves its position only after the target
committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, text

from migrate.databases import logical
from migrate.databases import sync as syncing
from migrate.databases.endpoint import Endpoint
from migrate.databases.tables import TablePair
from migrate.errors import MigrateError
from migrate.stages.guards import PlannedDeletes, check_deletes
from migrate.state.journal import Journal
from migrate.state.slots import SLOT_KEY


@dataclass
class CycleOutcome:
    created: int = 0
    updated: int = 0
    deleted: int = 0
    truncated: list[str] = field(default_factory=list)
    changes: int = 0  # decoded changes (before reducing to one per key)
    commits: int = 0
    lag_seconds: float = 0.0  # the oldest applied commit's age when its cycle finished (0: nothing pending)
    confirmed: str | None = None


class LogicalCapture:
    """The logical-decoding change source of one database item: its slot, publication and tables."""

    def __init__(self, source: Endpoint, component: str, item: str) -> None:
        if source.dialect != "postgresql":
            raise MigrateError(f"{item}: incremental method logical needs a PostgreSQL source "
                               f"({source.label} is {source.dialect})",
                               hint="use method: watermark with a column every write advances")
        self.source = source
        self.item = item
        self.name = logical.names(component, item)
        self._names: dict[str, str] = {}  # table label -> schema.name as the log spells it (asked once)

    def _qualified(self, labels: list[str]) -> dict[str, str]:
        """Our table label -> schema.name as the log names it."""
        missing = [label for label in labels if label not in self._names]
        if missing:
            with self.source.errors("cannot read"), self.source.engine.connect() as conn:
                for label in missing:
                    self._names[label] = str(conn.execute(text(
                        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
                        "ON n.oid = c.relnamespace WHERE c.oid = CAST(:t AS regclass)"),
                        {"t": logical.quoted_table(label)}).scalar_one())
        return {label: self._names[label] for label in labels}

    def problems(self, tables: list[tuple[str, list[str]]]) -> list[str]:
        """What stops decoding these (label, key) tables: wal_level, a free slot, replica identity; each with the
        SQL that fixes it."""
        names = self._qualified([label for label, _ in tables])
        with self.source.errors("cannot read"), self.source.engine.connect() as conn:
            keyed = {label for label, _ in tables if conn.execute(text(
                "SELECT count(*) FROM pg_index WHERE indisprimary AND indrelid = CAST(:t AS regclass)"),
                {"t": logical.quoted_table(names[label])}).scalar_one()}
            return logical.problems(conn, self.name, [(names[label], key, label in keyed) for label, key in tables])

    def ensure(self, journal: Journal, pairs: list[TablePair]) -> list[str]:
        """Publication and slot, before the load reads its first row; returns what was created."""
        names = self._qualified([p.label for p in pairs])
        with self.source.errors("cannot create the replication slot"), self.source.engine.connect() as conn:
            made = logical.ensure(conn, self.name, [names[p.label] for p in pairs])
        if made:
            journal.put(self.item, SLOT_KEY, {"slot": self.name, "source": self.source.label,
                                              "created": datetime.now(UTC).isoformat()})
            journal.event("logical", f"created {', '.join(made)} on {self.source.label} (logical decoding: WAL "
                          "is kept until sync applies it; `migrate finish` or `migrate abandon` drops them)",
                          item=self.item)
        return made

    def state(self) -> logical.SlotState:
        with self.source.errors("cannot read the replication slot"), self.source.engine.connect() as conn:
            return logical.slot_state(conn, self.name)

    def cycle(self, journal: Journal, pairs: list[TablePair], allow_mass_delete: bool,
              workers: int = 1) -> CycleOutcome:
        """Read what committed up to now, apply it to the target (truncates, then upserts parents first, up to
        `workers` merges at once within a table, then deletes children first), and only then confirm it to the
        slot."""
        outcome = CycleOutcome()
        names = self._qualified([p.label for p in pairs])
        by_name = {names[p.label]: p for p in pairs}
        with self.source.errors("cannot read the replication slot"), self.source.engine.connect() as conn:
            upto = logical.current_lsn(conn)
            batch = logical.read(conn, self.name, self.name, upto,
                                 {names[p.label]: (p.key, p.source.kinds) for p in pairs})
            conn.rollback()
        outcome.changes, outcome.commits = batch.changes, batch.commits
        truncated = [by_name[t] for t in batch.truncated]
        deletes: list[tuple[TablePair, list[Any]]] = []
        for table, gone in batch.deletes.items():
            pair = by_name[table]
            deletes.append((pair, [pair.key_on(pair.target, key, pair.source) for key in gone]))
        check_deletes([_planned_truncate(pair) for pair in truncated]
                      + [syncing.planned_deletes(pair, keys) for pair, keys in deletes], allow_mass_delete)
        for pair in reversed([p for p in pairs if p in truncated]):  # children first
            outcome.deleted += _empty(pair)
            outcome.truncated.append(pair.label)
        for pair in pairs:  # parents first
            found = batch.upserts.get(names[pair.label], {})
            syncing.copy_rows(pair, list(found), workers)
            outcome.created += sum(1 for op in found.values() if op == "insert")
            outcome.updated += sum(1 for op in found.values() if op != "insert")
        order = {p.label: i for i, p in enumerate(pairs)}
        for pair, keys in sorted(deletes, key=lambda d: -order[d[0].label]):  # children first
            outcome.deleted += syncing.delete_rows(pair, keys)
        with self.source.errors("cannot confirm to the replication slot"), self.source.engine.connect() as conn:
            if batch.last_lsn is not None:  # only now: everything up to it is committed on the target
                logical.confirm(conn, self.name, batch.last_lsn)
                outcome.confirmed = batch.last_lsn
            state = logical.slot_state(conn, self.name)
        if batch.oldest_commit is not None:
            outcome.lag_seconds = max(0.0, (datetime.now(UTC) - batch.oldest_commit).total_seconds())
        journal.put(self.item, SLOT_KEY, {
            "slot": self.name, "source": self.source.label, "retained_bytes": state.retained_bytes,
            "confirmed_lsn": state.confirmed_lsn, "read_at": datetime.now(UTC).isoformat(),
            "newest_commit": batch.newest_commit.isoformat() if batch.newest_commit else None})
        return outcome

    def drop(self) -> list[str]:
        with self.source.errors("cannot drop the replication slot"), self.source.engine.connect() as conn:
            return logical.drop(conn, self.name)


def _planned_truncate(pair: TablePair) -> PlannedDeletes:
    tgt = pair.target
    with tgt.endpoint.errors("count failed"), tgt.endpoint.engine.connect() as conn:
        held = int(conn.execute(select(func.count()).select_from(tgt.clause)).scalar_one())
    return PlannedDeletes(f"table {pair.label} (truncated on the source)", held, held, source_empty=True)


def _empty(pair: TablePair) -> int:
    tgt = pair.target
    with tgt.endpoint.errors(f"cannot empty {pair.label}"), tgt.endpoint.engine.begin() as conn:
        return int(conn.execute(delete(tgt.clause)).rowcount or 0)
