"""Test helpers: build input trees in tmp_path and run the CLI in-process or as a real process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
