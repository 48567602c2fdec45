"""PostgreSQL fixtures: one throwaway cluster per test session, a fresh database per test.

The cluster is made with the machine's `initdb`/`pg_ctl` (from PATH, /usr/local/bin or
/usr/lib/postgresql/*/bin) in a temporary folder, listens on a free loopback port with `trust` auth, and
is stopped at the end of the session. PostgreSQL refuses to run as root, so as root the tools run as the
`postgres` user through `runuser`. Without `initdb` the tests that need it are skipped with the reason.

`PostgresCluster` is importable on its own (the benchmarks in bench/ reuse it).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def find_pg_bin() -> Path | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    candidates: list[str] = []
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).resolve().parent))
    candidates.append("/usr/local/bin")
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True))
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """A throwaway PostgreSQL cluster on 127.0.0.1; `url(db)` gives a psycopg 3 SQLAlchemy URL."""

    def __init__(self, root: Path | None = None, settings: dict[str, str] | None = None) -> None:
        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise FileNotFoundError("no initdb/pg_ctl found (install the postgresql package)")
        self.bin_dir = bin_dir
        self.root = Path(root or tempfile.mkdtemp(prefix="migrate-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user = "postgres"
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                         "max_connections": "200", "shared_buffers": "128MB", "wal_level": "logical",
                         "max_replication_slots": "40", "max_wal_senders": "40", **(settings or {})}
        self._as_postgres = os.geteuid() == 0

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        # the superuser connects without a password; any other role must give its password (so tests can
        # check how bad credentials are reported)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {self.user} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n", encoding="utf-8")
        if self._as_postgres:
            shutil.chown(self.data / "pg_hba.conf", "postgres", "postgres")
        self.resume()
        return self

    def pause(self) -> None:
        """Stop the server but keep its data (`resume` starts it again on the same port)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server (on `start`, and again after `pause`)."""
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        options += f" -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} -p {self.port}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                  "-o", options, "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE and return its SQLAlchemy URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """The session's PostgreSQL cluster (skips when PostgreSQL is not installed)."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL is not installed: no initdb/pg_ctl on PATH, in /usr/local/bin or "
                    "/usr/lib/postgresql/*/bin (apt-get install postgresql)")
    cluster = PostgresCluster()
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        cluster.stop()
        pytest.fail(f"cannot start PostgreSQL: {exc.stderr or exc.stdout}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> str:
    """A fresh, empty database on the session cluster."""
    return pg_cluster.create_database()


@pytest.fixture
def pg_url2(pg_cluster: PostgresCluster) -> str:
    """A second fresh database (a target beside `pg_url`)."""
    return pg_cluster.create_database()
