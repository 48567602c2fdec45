"""One error root for the whole tool; only the CLI turns these into exit codes."""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_OPERATIONAL = 1
EXIT_INVALID = 2
EXIT_DIFFERENCES = 3
EXIT_CHANGES_PENDING = 4


class MigrateError(Exception):
    """Root of every error the user may see. The message goes straight to the user."""

    exit_code = EXIT_OPERATIONAL

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


@dataclass(frozen=True)
class PlanProblem:
    """One problem found in a plan file, located to a line and column."""

    file: str
    line: int
    column: int
    key_path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}:" if self.line else f"{self.file}:"
        key_path, message = _one_line(self.key_path), _one_line(self.message)
        return f"{where} {key_path}: {message}" if key_path else f"{where} {message}"


def _one_line(text: str) -> str:
    """Text quoted from a plan, shown on one line: a newline, tab or other control character in a key or value
    is written as its escape (`\\n`, `\\x1e`), so one problem stays one line and a terminal is not driven by it."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class PlanError(MigrateError):
    """The plan is invalid; carries every problem found, not just the first."""

    exit_code = EXIT_INVALID

    def __init__(self, problems: list[PlanProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class UsageError(MigrateError):
    exit_code = EXIT_INVALID


class EndpointError(MigrateError):
    """An endpoint cannot be reached or refuses us (named `ConnectionError` in the style guide;
    renamed so it does not shadow the builtin). `transient`: it may pass by itself (the endpoint refused
    connections or timed out), unlike bad credentials or a missing table, which need a person."""

    transient = False

    def __init__(self, message: str, hint: str | None = None, *, transient: bool = False) -> None:
        super().__init__(message, hint)
        self.transient = transient


class LockHeld(MigrateError):
    """Another runner holds the plan's lock."""


class MassDeleteRefused(MigrateError):
    """A sync cycle would delete most of a table or blob set (or all of it from an empty source)."""


class LockLost(MigrateError):
    """This runner's lock was taken over (or its heartbeat failed past expiry): it stops at its next journal write."""


class StateError(MigrateError):
    """The state journal is missing, unreadable or inconsistent."""


class StepFailed(MigrateError):
    """A runbook step exited non-zero."""


@dataclass
class Difference:
    """One difference found by verification."""

    item: str
    kind: str  # missing_on_target | missing_on_source | different
    key: str  # a path for blobs, a table and key for rows
    detail: str = ""


class VerificationFailed(MigrateError):
    exit_code = EXIT_DIFFERENCES

    def __init__(self, message: str, differences: list[Difference]) -> None:
        super().__init__(message)
        self.differences = differences


class GateRefused(MigrateError):
    exit_code = EXIT_DIFFERENCES

    def __init__(self, message: str, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


class RollbackRefused(MigrateError):
    """The target holds changes the source lacks and nothing would bring them home."""

    exit_code = EXIT_DIFFERENCES

    def __init__(self, message: str, differences: list[Difference], hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.differences = differences
