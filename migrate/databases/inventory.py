"""The inventory of a database item: every source object and its fate, so nothing is left behind unseen.

Fates: `moved` (rows copied), `recreated` (made on the target from the source's definition: pg_dump on
PostgreSQL -> PostgreSQL), `mapped` (a column whose type changes across dialects; detail = target type) and
`not moved` (with the reason). `plan` shows it, the journal keeps it (`INVENTORY`), the report lists what is
not moved, and the report is never READY while an object is not moved that the plan's `not_migrated_ok`
does not acknowledge."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from migrate.state.journal import Journal

INVENTORY = "inventory"  # journal key (per item): the entries as dicts
MOVED, RECREATED, MAPPED, NOT_MOVED = "moved", "recreated", "mapped", "not moved"


@dataclass(frozen=True)
class Entry:
    kind: str  # table | partitioned table | view | materialized view | function | trigger | type | sequence | ...
    name: str  # schema.name (SQLite: name)
    fate: str
    detail: str = ""

    @property
    def ref(self) -> str:
        """How `not_migrated_ok` names it: `view:public.film_list`."""
        return f"{self.kind.replace(' ', '_')}:{self.name}"


PG_OBJECTS = """
SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' WHEN 'v' THEN 'view'
  WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' WHEN 'f' THEN 'foreign table' END,
  n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname = ANY(:s)
UNION ALL SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
  n.nspname || '.' || p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE n.nspname = ANY(:s) AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
UNION ALL SELECT 'trigger', n.nspname || '.' || c.relname || '.' || t.tgname FROM pg_trigger t
  JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND n.nspname = ANY(:s)
UNION ALL SELECT CASE t.typtype WHEN 'e' THEN 'enum' WHEN 'd' THEN 'domain' ELSE 'type' END,
  n.nspname || '.' || t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
  WHERE t.typtype IN ('e', 'd', 'r', 'm') AND n.nspname = ANY(:s)
     OR (t.typtype = 'c' AND n.nspname = ANY(:s)
         AND (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
UNION ALL SELECT 'extension', x.extname FROM pg_extension x WHERE x.extname <> 'plpgsql'
UNION ALL SELECT DISTINCT 'role', g.grantee FROM information_schema.role_table_grants g
  WHERE g.table_schema = ANY(:s) AND g.grantee <> g.grantor AND g.grantee <> 'PUBLIC'
ORDER BY 1, 2
"""


def source_objects(conn: Connection, dialect: str, schemas: Iterable[str]) -> list[tuple[str, str]]:
    """(kind, name) of every object of the moved schemas on the source (PostgreSQL, SQLite)."""
    if dialect == "postgresql":
        rows = conn.execute(text(PG_OBJECTS), {"s": sorted(schemas)}).all()
        return [(str(r[0]), str(r[1])) for r in rows]
    if dialect == "sqlite":
        rows = conn.exec_driver_sql(
            "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view', 'trigger') "
            "AND name NOT LIKE 'sqlite_%' ORDER BY 1, 2").all()
        return [(str(r[0]), str(r[1])) for r in rows]
    return []  # SQL Server: tables only (the plan's), listed by the caller


def classify(objects: list[tuple[str, str]], moved: set[str], native: bool, cross: bool,
             target_extensions: set[str] | None = None) -> list[Entry]:
    """The fate of each source object. `moved`: qualified names of the tables whose rows move; `native`:
    PostgreSQL -> PostgreSQL (pg_dump recreates the schema's objects); `cross`: the dialects differ;
    `target_extensions`: what the target can install."""
    where = "across dialects" if cross else "(only PostgreSQL -> PostgreSQL recreates it)"
    out = []
    for kind, name in objects:
        if kind == "table":
            out.append(Entry(kind, name, MOVED) if name in moved
                       else Entry(kind, name, NOT_MOVED, "not in the plan's tables"))
        elif kind == "role":
            out.append(Entry(kind, name, NOT_MOVED, "a role/grant: roles and grants are not moved; create them "
                                                    "on the target"))
        elif kind == "extension":
            if native and target_extensions is not None and name in target_extensions:
                out.append(Entry(kind, name, RECREATED))
            else:
                out.append(Entry(kind, name, NOT_MOVED, "an extension missing on the target" if native
                                 else f"an extension {where}"))
        elif native:
            detail = "its rows move through its partitions" if kind == "partitioned table" else ""
            out.append(Entry(kind, name, RECREATED, detail))
        elif kind == "partitioned table":
            out.append(Entry(kind, name, NOT_MOVED, f"a partitioned table {where}: its partitions move as "
                                                    "tables"))
        else:
            out.append(Entry(kind, name, NOT_MOVED, f"a {kind} {where}"))
    return out


def not_moved(entries: Iterable[Entry], acknowledged: list[str]) -> list[Entry]:
    """Entries not moved that the plan's `not_migrated_ok` (names or globs of `kind:schema.name`) does not
    acknowledge."""
    return [e for e in entries if e.fate == NOT_MOVED
            and not any(fnmatchcase(e.ref, pattern) for pattern in acknowledged)]


def record(journal: Journal, item: str, entries: list[Entry]) -> None:
    journal.put(item, INVENTORY, [asdict(e) for e in entries])


def recorded(journal: Journal, item: str) -> list[Entry] | None:
    stored: Any = journal.get(item, INVENTORY)
    return None if stored is None else [Entry(**e) for e in stored]
