"""Test helpers: build input trees in tmp_path and run the CLI in-process or as a real process."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from typer.testing import CliRunner

from migrate.cli import app


def build_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    """Write {relative path: text or bytes} under root; dedent text; return root."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content).lstrip("\n"), encoding="utf-8")
            if relative.endswith(".sh"):
                path.chmod(0o755)
    return root


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `migrate ARGS` in-process; return (exit code, stdout, stderr)."""
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def cli_process(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m migrate ARGS` as a real process (for locks, kill -9 and exit codes end to end)."""
    return subprocess.run([sys.executable, "-m", "migrate", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


def start_cli(*args: str) -> subprocess.Popen[str]:
    """Start `python -m migrate ARGS` in the background (to be killed mid-work)."""
    return subprocess.Popen([sys.executable, "-m", "migrate", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)


# --- the demo estate, compared outside the tool ---

TABLES = ("patients", "encounters", "observations")


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def table_rows(db: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(db) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in TABLES}


def assert_identical(workdir: Path) -> None:
    """An oracle independent of migrate: every row and every byte equal on both sides."""
    assert table_rows(workdir / "onprem" / "ppm.db") == table_rows(workdir / "azure" / "ppm.db")
    assert tree_hashes(workdir / "onprem" / "letters") == tree_hashes(workdir / "azure" / "letters")


def loaded_estate(folder: Path, patients: int, letters: int) -> Path:
    """The synthetic demo estate in `folder`, loaded and verified by `migrate run`; returns its plan."""
    from migrate.demo.flow import prepare_estate

    plan, _ = prepare_estate(folder, patients=patients, letters=letters)
    ran = cli_process("run", str(plan))
    assert ran.returncode == 0, ran.stderr
    return plan


def wait_for(predicate: Callable[[], bool], seconds: float = 60) -> None:
    """Poll `predicate` until it holds (fails the test after `seconds`)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)
