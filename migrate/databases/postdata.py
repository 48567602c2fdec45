"""pg_dump's post-data section, split so that index and constraint builds run in parallel as tables finish.

`split()` reads the plain-text section entry by entry (pg_dump heads each with `-- Name: ...; Type: ...`). A
table's own builds, `CREATE [UNIQUE] INDEX` and `ADD CONSTRAINT ... PRIMARY KEY | UNIQUE | EXCLUDE` on a moved
ordinary table, become `Build`s: each runs in its own transaction on its own session, as soon as that table's
rows are all loaded, beside other tables' copies. Everything else (foreign keys, which need both tables'
keys, triggers, an index on a partitioned parent and its attachments, comments, rules) stays in `rest`,
replayed by psql in one transaction after every table is loaded and built.

Resumable: a build whose index or constraint already exists is skipped (a run killed after it committed),
and `rest_applied()` tells whether the rest committed before a kill.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.engine import Connection

from migrate.databases import pgdump
from migrate.databases.endpoint import Endpoint
from migrate.databases.schema import TableInfo
from migrate.errors import EndpointError

MIB = 1 << 20
MAINTENANCE_FLOOR = 64 * MIB  # PostgreSQL's default: never less
MAINTENANCE_BUDGET = 1024 * MIB  # shared by the sessions building at once

_HEADER = re.compile(r"^--\n-- Name: (?P<name>.*?); Type: (?P<type>.*?); Schema: (?P<schema>.*?); Owner: .*\n--\n",
                     re.MULTILINE)
_IDENT = r'"(?:[^"]|"")+"'
_INDEX = re.compile(rf"^CREATE (?:UNIQUE )?INDEX (?P<name>{_IDENT}) ON (?P<only>ONLY )?(?P<schema>{_IDENT})\."
                    rf"(?P<table>{_IDENT}) ")
_CONSTRAINT = re.compile(rf"^ALTER TABLE (?:ONLY )?(?P<schema>{_IDENT})\.(?P<table>{_IDENT})\s+ADD CONSTRAINT "
                         rf"(?P<name>{_IDENT}) (?P<kind>PRIMARY KEY|UNIQUE|EXCLUDE|FOREIGN KEY|CHECK)\b")
_PLAIN_KEY = re.compile(rf"^ALTER TABLE ONLY (?P<schema>{_IDENT})\.(?P<table>{_IDENT})\s+ADD CONSTRAINT "
                        rf"(?P<name>{_IDENT}) PRIMARY KEY \((?P<columns>{_IDENT}(?:, {_IDENT})*)\);$")
_TRIGGER = re.compile(rf"^CREATE (?:CONSTRAINT )?TRIGGER (?P<name>{_IDENT}) .*? ON (?P<schema>{_IDENT})\."
                      rf"(?P<table>{_IDENT}) ", re.DOTALL)
_SETTING = re.compile(r"^(SET (?P<name>\w+) = .*;|SELECT pg_catalog\.set_config\('(?P<cfg>\w+)', .*\);)$")


@dataclass(frozen=True)
class Build:
    """One index or constraint of one moved table, built on its own session after the table is loaded."""

    table: str  # schema.table, unquoted
    kind: str  # "index" or "constraint"
    name: str  # unquoted
    statement: str  # as pg_dump wrote it
    settings: tuple[str, ...]  # pg_dump's session settings at this entry, as transaction-local SETs

    @property
    def steps(self) -> tuple[str, ...]:
        """What runs, in one transaction. A plain primary key is built as pgcopydb builds it: its unique index
        first (CREATE INDEX takes a SHARE lock, so the table's other indexes build at the same time; ADD
        PRIMARY KEY would hold ACCESS EXCLUSIVE throughout), then the constraint over that index (a moment)."""
        key = _PLAIN_KEY.match(self.statement)
        if key is None:
            return (self.statement,)
        table, name = f"{key.group('schema')}.{key.group('table')}", key.group("name")
        return (f"CREATE UNIQUE INDEX {name} ON {table} USING btree ({key.group('columns')});",
                f"ALTER TABLE ONLY {table} ADD CONSTRAINT {name} PRIMARY KEY USING INDEX {name};")

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name} on {self.table}"


@dataclass
class PostData:
    """The post-data section: per-table `builds` and the `rest` (a psql script, in dump order)."""

    builds: dict[str, list[Build]] = field(default_factory=dict)
    rest: str = ""
    rest_checks: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, schema.table, name)

    @property
    def rest_is_empty(self) -> bool:
        return not re.search(r"^(?!--|SET |SELECT pg_catalog\.set_config|\\)\S", self.rest, re.MULTILINE)


def unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"')


def split(sql: str, moved: set[str]) -> PostData:
    """Split pg_dump's post-data (`--quote-all-identifiers`) into builds of the `moved` ordinary tables
    (`schema.table`) and the rest."""
    heads = list(_HEADER.finditer(sql))
    out = PostData()
    rest = [sql[: heads[0].start()] if heads else sql]
    settings: dict[str, str] = {}
    _settings_of(rest[0], settings)
    for number, head in enumerate(heads):
        end = heads[number + 1].start() if number + 1 < len(heads) else len(sql)
        block = sql[head.start():end]
        body = block[head.end() - head.start():]
        statement = "\n".join(line for line in body.splitlines()
                              if line.strip() and not line.startswith("--") and not _SETTING.match(line)
                              and not line.startswith("\\")).strip()
        build = _build_of(head.group("type"), statement, moved, settings)
        if build is not None:
            out.builds.setdefault(build.table, []).append(build)
            # its trailing session settings (they apply to the entries after it) and psql commands stay
            rest.append("".join(line + "\n" for line in body.splitlines()
                                if _SETTING.match(line) or line.startswith("\\")))
        else:
            rest.append(block)
            check = _check_of(head.group("type"), statement)
            if check is not None:
                out.rest_checks.append(check)
        _settings_of(body, settings)
    out.rest = "".join(rest)
    return out


def _settings_of(chunk: str, settings: dict[str, str]) -> None:
    for line in chunk.splitlines():
        found = _SETTING.match(line)
        if found is None:
            continue
        name = found.group("name") or found.group("cfg")
        if name == "client_encoding":  # the driver's own; UTF8 both ways
            continue
        local = re.sub(r"^SET ", "SET LOCAL ", line) if found.group("name") else line.replace(", false)", ", true)")
        settings[name] = local


def _build_of(kind: str, statement: str, moved: set[str], settings: dict[str, str]) -> Build | None:
    if statement.count(";") != 1 or not statement.endswith(";"):
        return None
    if kind == "INDEX":
        found = _INDEX.match(statement)
        what = "index"
        if found is not None and found.group("only"):  # a partitioned parent's: attached to later, in the rest
            return None
    elif kind == "CONSTRAINT":
        found = _CONSTRAINT.match(statement)
        what = "constraint"
        if found is not None and found.group("kind") not in ("PRIMARY KEY", "UNIQUE", "EXCLUDE"):
            return None
    else:
        return None
    if found is None:
        return None
    table = f"{unquote(found.group('schema'))}.{unquote(found.group('table'))}"
    if table not in moved:
        return None
    return Build(table, what, unquote(found.group("name")), statement, tuple(settings.values()))


def _check_of(kind: str, statement: str) -> tuple[str, str, str] | None:
    """How to tell that a rest entry exists on the target: (kind, schema.table, name), or None."""
    for pattern, what in ((_INDEX, "index"), (_CONSTRAINT, "constraint"), (_TRIGGER, "trigger")):
        found = pattern.match(statement)
        if found is not None and (kind in ("INDEX", "CONSTRAINT", "FK CONSTRAINT", "TRIGGER")):
            return what, f"{unquote(found.group('schema'))}.{unquote(found.group('table'))}", \
                unquote(found.group("name"))
    return None


def exists(conn: Connection, kind: str, table: str, name: str) -> bool:
    """Whether the index / constraint / trigger `name` of `table` (schema.table) is on the target."""
    schema, relname = table.split(".", 1)
    rel = "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s"
    if kind == "index":
        sql = f"SELECT EXISTS ({rel} AND c.relname = :n)"
        return bool(conn.execute(text(sql), {"s": schema, "n": name}).scalar())
    catalog = ("SELECT 1 FROM pg_constraint WHERE conname = :n AND conrelid = ({rel} AND c.relname = :t)"
               if kind == "constraint" else
               "SELECT 1 FROM pg_trigger WHERE tgname = :n AND tgrelid = ({rel} AND c.relname = :t)")
    return bool(conn.execute(text(f"SELECT EXISTS ({catalog.format(rel=rel)})"),
                             {"s": schema, "t": relname, "n": name}).scalar())


def rest_applied(conn: Connection, post: PostData) -> bool | None:
    """Whether the rest (one transaction) committed already: by its first entry that can be looked up;
    None when it has none."""
    if not post.rest_checks:
        return None
    kind, table, name = post.rest_checks[0]
    return exists(conn, kind, table, name)


def maintenance_work_mem(table_bytes: int, sessions: int) -> int:
    """Bytes of `maintenance_work_mem` for one build: the table's size (a sort of its keys fits in that), at
    least PostgreSQL's default 64 MiB, at most an even share of a 1 GiB budget among `sessions` builds at once."""
    share = max(MAINTENANCE_FLOOR, MAINTENANCE_BUDGET // max(1, sessions))
    wanted = max(MAINTENANCE_FLOOR, table_bytes)
    return min(share, -(-wanted // MIB) * MIB)


def run_build(conn: Connection, build: Build, sessions: int) -> str:
    """Build one index or constraint in its own transaction on `conn` (skipped when it exists already: a
    resumed run); return what was done."""
    schema, relname = build.table.split(".", 1)
    with conn.begin():
        if exists(conn, build.kind, build.table, build.name):
            return f"{build.label}: already there"
        size = int(conn.execute(text(
            "SELECT pg_table_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relname = :t"), {"s": schema, "t": relname}).scalar() or 0)
        memory = maintenance_work_mem(size, sessions)
        raw = conn.connection.driver_connection  # no parameters: a `%` in the statement is taken literally
        for setting in build.settings:
            raw.execute(setting)  # type: ignore[union-attr]
        raw.execute(f"SET LOCAL maintenance_work_mem = '{memory // 1024}kB'")  # type: ignore[union-attr]
        for step in build.steps:
            raw.execute(step)  # type: ignore[union-attr]
    return f"{build.label} (maintenance_work_mem {memory // MIB} MiB)"


class NativePostData:
    """One load's post-data, PostgreSQL -> PostgreSQL: dumped by pg_dump in the background while the first
    tables copy (one source connection), split once, built table by table by the load's workers, and the
    rest replayed at the end."""

    def __init__(self, source: Endpoint, target: Endpoint, labels: list[str]) -> None:
        self.target = target
        with source.errors("cannot read"), source.engine.connect() as conn:
            self.default = str(conn.execute(text("SELECT current_schema()")).scalar_one())
            self.schemas, excluded = pgdump.scope(conn, labels)
            version = pgdump.server_version(conn)
        self.moved = {_qualified(label, self.default) for label in labels}
        self._pool = ThreadPoolExecutor(max_workers=1)
        # only pg_dump's own connection meanwhile (the server's version is known already)
        self.dumped: Future[str] = self._pool.submit(pgdump.dump, source, "post-data", self.schemas, excluded,
                                                     version)
        self._split: PostData | None = None

    def parsed(self) -> PostData:
        if self._split is None:
            self._split = split(self.dumped.result(), self.moved)
        return self._split

    def builds_for(self, info: TableInfo) -> list[Build]:
        """A table's builds, its indexes first: a constraint ends holding ACCESS EXCLUSIVE on the table, so it
        starts once the indexes are under way and does not hold a worker waiting for them."""
        builds = self.parsed().builds.get(_qualified(info.label, self.default), [])
        return sorted(builds, key=lambda build: build.kind == "constraint")

    def build(self, build: Build, sessions: int) -> str:
        """One build on a session of its own (in a load worker)."""
        with self.target.errors(f"cannot build {build.label}"), self.target.engine.connect() as conn:
            return run_build(conn, build, sessions)

    def finish(self) -> list[str]:
        """Replay the rest (foreign keys, triggers, ...) in one transaction, unless it committed already."""
        post = self.parsed()
        built = sum(len(b) for b in post.builds.values())
        done = [f"pg_dump post-data of {', '.join(sorted(self.schemas))}: {built} index/constraint builds in "
                "parallel"]
        if post.rest_is_empty:
            return done
        with self.target.errors("cannot read"), self.target.engine.connect() as conn:
            applied = rest_applied(conn, post)
        if applied:
            return done + ["the rest of the post-data was there already"]
        try:
            pgdump.replay(self.target, post.rest, "post-data")
        except EndpointError as exc:
            if applied is None and "already exists" in str(exc):  # nothing to look up: it committed before
                return done + ["the rest of the post-data was there already"]
            raise
        return done + ["the rest of the post-data (foreign keys, triggers, ...) in one transaction"]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _qualified(label: str, default: str) -> str:
    return label if "." in label else f"{default}.{label}"
