"""The light URL reader that validate uses agrees with SQLAlchemy's make_url, and validate imports no SQLAlchemy."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from migrate.plan.urls import parse

URLS = [
    "postgresql+psycopg://app:secret@127.0.0.1:5432/ppm",
    "postgresql://app@db.example/ppm?sslmode=require&application_name=migrate",
    "postgresql+psycopg://app:Tr1cky%40Pass%23word%2F%3Fx@[::1]:6543/ppm",
    "mssql+mssqlpython://sql-epr.database.windows.net:1433/ppm?Encrypt=yes",
    "mssql://user:pw@host/db",
    "sqlite:///onprem/ppm.db",
    "sqlite:////abs/path.db",
    "sqlite://",
    "postgresql+psycopg://app:p:w@h:1/d",
    "postgresql+psycopg://h/d?x=1&x=2",
    "postgresql+psycopg://app@h:notaport/d",
    "not a url",
    "postgresql+psycopg://app@h:/d",
]


@pytest.mark.parametrize("url", URLS)
def test_parts_agree_with_sqlalchemy(url: str) -> None:
    try:
        theirs = make_url(url)
        port = theirs.port
    except (ArgumentError, ValueError):
        with pytest.raises(ValueError):
            parse(url)
        return
    ours = parse(url)
    assert (ours.drivername, ours.username, ours.password, ours.host, ours.port, ours.database) == \
        (theirs.drivername, theirs.username, theirs.password, theirs.host, port, theirs.database)
    assert ours.backend == theirs.get_backend_name()
    assert {k: v for k, v in ours.query.items()} == {k: (v if isinstance(v, str) else v[-1])
                                                      for k, v in theirs.query.items()}


def test_help_and_validate_start_without_sqlalchemy_or_the_sdks(tmp_path) -> None:  # noqa: ANN001
    """Measured in the closing note; asserted here only as what is imported, which does not vary with load."""
    from pathlib import Path

    plans = Path(__file__).resolve().parent.parent / "plans"
    probe = ("import sys; from migrate.cli import main; sys.argv = ['migrate'] + sys.argv[1:]\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "heavy = sorted(m for m in ('sqlalchemy', 'azure', 'psycopg', 'mssql_python') if m in sys.modules)\n"
             "print('HEAVY', heavy)")
    for args in (["--help"], ["validate", "--skip-env", str(plans)]):
        done = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, check=False)
        assert "HEAVY []" in done.stdout, (args, done.stdout[-500:], done.stderr[-2000:])
