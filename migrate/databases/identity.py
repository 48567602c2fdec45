"""Who a database is, asked of the database itself: the spelling of its URL cannot fool this.

PostgreSQL: the cluster's system identifier (or, where `pg_control_system()` is not granted, the postmaster's
start time) and the database's oid. SQL Server: the server name and database id. SQLite: the file's device and
inode. Preflight refuses an item whose source and target answer alike.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from migrate.databases.endpoint import Endpoint


def database_identity(endpoint: Endpoint) -> str | None:
    """A name only this database has; None when it does not exist yet (a SQLite file to be created)."""
    if endpoint.dialect == "sqlite":
        path = endpoint.sqlite_path
        if path is None or not path.exists():
            return None
        found = path.stat()
        return f"one SQLite file: device {found.st_dev}, inode {found.st_ino}"
    with endpoint.errors("cannot identify the database"), endpoint.engine.connect() as conn:
        if endpoint.dialect == "postgresql":
            try:
                server = "system identifier " + str(conn.execute(
                    text("SELECT system_identifier FROM pg_control_system()")).scalar_one())
            except DBAPIError:  # not granted to this role
                conn.rollback()
                server = "started " + str(conn.execute(text("SELECT pg_postmaster_start_time()")).scalar_one())
            oid = conn.execute(text("SELECT oid FROM pg_database WHERE datname = current_database()")).scalar_one()
            return f"PostgreSQL server with {server}, database oid {oid}"
        if endpoint.dialect == "mssql":
            server, db_id = conn.execute(text("SELECT CAST(@@SERVERNAME AS nvarchar(256)), DB_ID()")).one()
            return f"SQL Server {server}, database id {db_id}"
    return None
