"""Progress for people: rich bars on a terminal, a plain line every few seconds otherwise (CI logs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from migrate.stages.engine import NullProgress, ProgressTask

PLAIN_EVERY = 5.0  # seconds between plain progress lines


class _RichTask:
    def __init__(self, owner: ConsoleProgress, task_id: Any) -> None:
        self.owner, self.task_id = owner, task_id

    def advance(self, amount: float = 1) -> None:
        self.owner.bars.advance(self.task_id, amount)

    def close(self) -> None:
        self.owner.bars.update(self.task_id, visible=False)
        self.owner.bars.stop_task(self.task_id)


class _PlainTask:
    def __init__(self, console: Console, description: str, total: float | None, unit: str) -> None:
        self.console, self.description, self.total, self.unit = console, description, total, unit
        self.done = 0.0
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def _fmt(self, value: float) -> str:
        if self.unit == "B":
            for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
                if value < 1024 or suffix == "TiB":
                    return f"{value:.1f} {suffix}" if suffix != "B" else f"{value:.0f} B"
                value /= 1024
        return f"{value:,.0f}{(' ' + self.unit) if self.unit else ''}"

    def advance(self, amount: float = 1) -> None:
        with self.lock:
            self.done += amount
            if time.monotonic() - self.last < PLAIN_EVERY:
                return
            self.last = time.monotonic()
        total = f" of {self._fmt(self.total)}" if self.total else ""
        self.console.print(f"  {self.description}: {self._fmt(self.done)}{total}", highlight=False)

    def close(self) -> None:
        pass


class ConsoleProgress:
    """The CLI's `Progress`: used as a context manager around a verb."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.bars = RichProgress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=console, transient=True,
        )

    def __enter__(self) -> ConsoleProgress:
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bars.stop()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the live display while a person is asked something, so nothing draws over the question."""
        running = self.live and self.bars.live.is_started
        if running:
            self.bars.stop()
        try:
            yield
        finally:
            if running:
                self.bars.start()

    def task(self, description: str, total: float | None = None, unit: str = "") -> ProgressTask:
        if not self.enabled:
            return NullProgress().task(description, total, unit)
        if self.live:
            return _RichTask(self, self.bars.add_task(description, total=total))
        return _PlainTask(self.console, description, total, unit)
