"""A large COPY between two PostgreSQL servers with the reading done by `psql`, in C.

COPY TO STDOUT arrives one row per protocol message, and reading it through the driver costs Python work per
row (0.4 s of CPU per million rows of `observations`, measured). `psql` reads the source's COPY in C and hands
us its output through a pipe, which Python reads in 1 MiB blocks and writes into the target's COPY FROM STDIN
on the caller's own connection and transaction: the target side (TRUNCATE or delete, FREEZE, commit, journal)
is unchanged. Used for openings of 500,000 rows or more: psql starts a process and the source a new backend,
which cost more than they save on 100,000-row tables (measured: 20 of them loaded 20-30% slower through psql),
so smaller openings and chunks keep the in-driver pump. The password reaches psql through the environment,
never the command line.
"""

from __future__ import annotations

import subprocess
from typing import Any

from sqlalchemy.engine import Connection

from migrate.databases import pgdump
from migrate.databases.endpoint import Endpoint, first_line
from migrate.errors import EndpointError
from migrate.redact import redact

BLOCK = 1 << 20
MIN_ROWS = 500_000  # below this a new process and a new server backend cost more than the per-row work saved
SESSION = "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=1"  # as the driver's sessions


def literal_select(query: Any, source: Endpoint) -> str | None:
    """The SELECT with its parameters written in (psql takes none), or None when a value cannot be written
    safely (only integers are: key ranges of integer keys)."""
    compiled = query.compile(dialect=source.engine.dialect)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in compiled.params.values()):
        return None
    return str(query.compile(dialect=source.engine.dialect, compile_kwargs={"literal_binds": True}))


def copy_through_psql(source: Endpoint, target: Connection, select_sql: str, copy_in: str, fmt: str) -> int:
    """`COPY (select_sql) TO STDOUT (FORMAT fmt)` run by psql on the source, streamed into `copy_in` (a
    `COPY ... FROM STDIN` statement) on the target connection, inside its open transaction; rows written."""
    env = pgdump.libpq_env(source.url)
    env["PGOPTIONS"] = SESSION
    argv = [pgdump.client("psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
            f"--command=COPY ({select_sql}) TO STDOUT (FORMAT {fmt})"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        raw = target.connection.driver_connection
        with raw.cursor() as cursor:  # type: ignore[union-attr]
            with cursor.copy(copy_in) as cout:
                while block := proc.stdout.read1(BLOCK):  # type: ignore[attr-defined]
                    cout.write(block)
                said = proc.stderr.read().decode("utf-8", "replace")
                if proc.wait() != 0:  # raising here makes the target COPY fail: its transaction rolls back
                    message = next((x for x in said.splitlines() if "ERROR" in x or "error" in x),
                                   said.strip().splitlines()[-1] if said.strip() else f"exit {proc.returncode}")
                    raise EndpointError(f"{source.label} ({source.shown}): read failed: {redact(message.strip())}",
                                        transient="could not connect" in message or "timeout" in message)
            return max(int(cursor.rowcount or 0), 0)
    except OSError as exc:
        raise EndpointError(f"{source.label}: psql failed: {first_line(exc)}") from exc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
