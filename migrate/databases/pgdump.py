"""PostgreSQL -> PostgreSQL schema by PostgreSQL's own tools (as pgcopydb does): `pg_dump --schema-only`
split into its pre-data section (types, domains, enums, sequences, tables, partitions, views, materialized
views, functions) replayed before the load, and its post-data section (primary keys, indexes, foreign keys
with their actions, triggers) replayed after it; materialized views are refreshed last.

The client binaries come from the `postgresql-client` package; the password reaches them through the
environment (`PGPASSWORD`), never the command line, and their messages are redacted."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.engine import URL, Connection

from migrate.databases.endpoint import Endpoint
from migrate.databases.schema import pg_qualified
from migrate.errors import EndpointError, MigrateError
from migrate.redact import redact

PACKAGE = "postgresql-client"
SECTIONS = ("pre-data", "post-data")
TIMEOUT = 3600.0


def client(tool: str) -> str:
    """Path of a PostgreSQL client binary, or a clear error naming the package that provides it."""
    found = shutil.which(tool)
    if found is None:
        raise MigrateError(f"{tool} not found on PATH: PostgreSQL -> PostgreSQL schema needs the PostgreSQL "
                           f"client binaries (install the {PACKAGE} package, e.g. apt-get install {PACKAGE})")
    return found


@functools.lru_cache(maxsize=8)
def client_major(pg_dump: str) -> int:
    """The major version of a pg_dump binary (`pg_dump (PostgreSQL) 15.18 ...` -> 15)."""
    out = subprocess.run([pg_dump, "--version"], capture_output=True, text=True, timeout=30, check=False)
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out.stdout)
    if match is None:
        raise MigrateError(f"cannot read the version of {pg_dump}: {out.stdout.strip() or out.stderr.strip()}")
    return int(match.group(1))


def check_version(client_version: int, server_version_num: int, tool: str = "pg_dump") -> None:
    """pg_dump refuses a server newer than itself: say so before the schema stage, naming both versions."""
    server_major = server_version_num // 10000
    if client_version < server_major:
        raise MigrateError(f"{tool} {client_version} cannot dump a PostgreSQL {server_major} server: install "
                           f"{PACKAGE} {server_major} or newer")


def libpq_env(url: URL) -> dict[str, str]:
    """libpq environment for a SQLAlchemy URL: the password stays out of argv (and so out of `ps`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    for var, value in (("PGHOST", url.host), ("PGPORT", url.port), ("PGUSER", url.username),
                       ("PGPASSWORD", url.password), ("PGDATABASE", url.database)):
        if value is not None:
            env[var] = str(value)
    for key, option in url.query.items():  # host for a socket folder, sslmode, ...
        if key in {"host", "sslmode", "sslrootcert", "sslcert", "sslkey"} and isinstance(option, str):
            env["PGHOST" if key == "host" else "PG" + key.upper()] = option
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


def _run(endpoint: Endpoint, argv: list[str], what: str, stdin: str | None = None) -> str:
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                              env=libpq_env(endpoint.url))
    except subprocess.TimeoutExpired as exc:
        raise EndpointError(f"{endpoint.label}: {what} timed out after {TIMEOUT:.0f}s") from exc
    if done.returncode != 0:
        message = next((line for line in done.stderr.splitlines() if "ERROR" in line or "error" in line),
                       done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        raise EndpointError(f"{endpoint.label} ({endpoint.shown}): {what} failed: {redact(message.strip())}")
    return done.stdout


def server_version(conn: Connection) -> int:
    return int(conn.execute(text("SHOW server_version_num")).scalar_one())


def dump(source: Endpoint, section: str, schemas: Iterable[str], excluded: Iterable[str] = (),
         version: int | None = None) -> str:
    """The SQL of one section of `pg_dump --schema-only` for `schemas`, without `excluded` tables; no owners
    and no grants (roles are not moved: the inventory says so). `version`: the source's server_version_num
    when the caller read it already."""
    pg_dump = client("pg_dump")
    if version is None:
        with source.errors("cannot connect"), source.engine.connect() as conn:
            version = server_version(conn)
    check_version(client_major(pg_dump), version)
    argv = [pg_dump, "--schema-only", f"--section={section}", "--no-owner", "--no-privileges",
            "--no-publications", "--no-subscriptions", "--quote-all-identifiers"]
    # a quoted name is an exact pattern: case and pattern characters are taken literally
    argv += [f"--schema={pg_qualified(s)}" for s in sorted(schemas)]
    argv += [f"--exclude-table={pg_qualified(t)}" for t in sorted(excluded)]
    return _run(source, argv, f"pg_dump --section={section}")


def replay(target: Endpoint, sql: str, section: str) -> None:
    """Run a dump section on the target in one transaction: all of it arrives or none."""
    psql = client("psql")
    _run(target, [psql, "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1",
                  "--file=-"], f"replaying the {section} schema", stdin=_idempotent_schemas(sql))


def refresh_materialized_views(conn: Connection, schemas: Iterable[str]) -> list[str]:
    """REFRESH every materialized view of `schemas` (in creation order, so one built on another comes
    after it); return their names."""
    rows = conn.execute(text(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'm' AND n.nspname = ANY(:s) ORDER BY c.oid"), {"s": sorted(schemas)}).all()
    names = []
    for schema, name in rows:
        conn.exec_driver_sql(f'REFRESH MATERIALIZED VIEW "{_ident(schema)}"."{_ident(name)}"')
        names.append(f"{schema}.{name}")
    return names


def _idempotent_schemas(sql: str) -> str:
    """`CREATE SCHEMA x;` as `CREATE SCHEMA IF NOT EXISTS x;`: the target may have the schema already."""
    return re.sub(r"^CREATE SCHEMA (?!IF NOT EXISTS)", "CREATE SCHEMA IF NOT EXISTS ", sql, flags=re.MULTILINE)


def _ident(name: str) -> str:
    return name.replace('"', '""')



def scope(conn: Connection, labels: Iterable[str]) -> tuple[set[str], set[str]]:
    """The schemas to dump for the moved tables (`schema.table` or a bare name in the default schema), and
    the ordinary tables of those schemas that are not moved (excluded from the dump)."""
    default = str(conn.execute(text("SELECT current_schema()")).scalar_one())
    moved = {label if "." in label else f"{default}.{label}" for label in labels}
    schemas = {label.split(".", 1)[0] for label in moved}
    rows = conn.execute(text(
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname = ANY(:s)"), {"s": sorted(schemas)}).scalars().all()
    return schemas, {str(r) for r in rows} - moved


def extensions_sql(source: Connection, target: Connection) -> str:
    """CREATE EXTENSION for the source's extensions the target can install (pg_dump leaves them out of a
    per-schema dump); the inventory names those it cannot."""
    available = set(target.execute(text("SELECT name FROM pg_available_extensions")).scalars())
    rows = source.execute(text("SELECT x.extname, n.nspname FROM pg_extension x JOIN pg_namespace n "
                               "ON n.oid = x.extnamespace WHERE x.extname <> 'plpgsql' ORDER BY x.oid")).all()
    return "".join(f'CREATE SCHEMA IF NOT EXISTS "{_ident(schema)}";\n'
                   f'CREATE EXTENSION IF NOT EXISTS "{_ident(name)}" WITH SCHEMA "{_ident(schema)}";\n'
                   for name, schema in rows if name in available)
