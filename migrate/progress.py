"""Progress for people: rich bars on a terminal, a plain line every few seconds otherwise (CI logs)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, ProgressColumn, Task, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress
from rich.text import Text

from migrate.stages.engine import NullProgress, ProgressTask
from migrate.units import human_bytes

PLAIN_EVERY = 5.0  # seconds between plain progress lines


def amount(value: float, unit: str) -> str:
    """An amount in its unit for people: 150994944 B -> '144.0 MiB'; 12345 rows -> '12,345 rows'."""
    if unit == "B":
        return human_bytes(value)
    return f"{value:,.0f}{(' ' + unit) if unit else ''}"


def speed(per_second: float | None, unit: str) -> str:
    """A rate for people: '48.2 MiB/s', '12,300 rows/s'; '' before there is one."""
    if not per_second:
        return ""
    if unit == "B":
        return f"{human_bytes(per_second)}/s"
    return f"{per_second:,.0f} {unit or 'items'}/s"


def items(done: int, total: int | None, listing: bool = False) -> str:
    """Files finished alongside the bytes: '123/2,000 files'; '' when the task counts none. While the listing
    still goes on the total is what it found so far: '123/1,000+ files (listing)'."""
    if listing:
        return f"{done:,}/{total or 0:,}+ files (listing)"
    return f"{done:,}/{total:,} files" if total else ""


class _AmountColumn(ProgressColumn):
    """Done of total in the task's unit, then its speed and files: '144.0 MiB/800.0 MiB 48.2 MiB/s 12/40 files'."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "")
        done = amount(task.completed, unit)
        listing = bool(task.fields.get("listing"))
        if listing:  # the total is unknown (no bar, no percentage, no time left): what is listed so far
            text = f"{done}/{amount(task.fields.get('known', 0), unit)}+"
        else:
            text = f"{done}/{amount(task.total, unit)}" if task.total else done
        parts = [text, speed(task.finished_speed or task.speed, unit),
                 items(task.fields.get("items_done", 0), task.fields.get("items_total"), listing)]
        return Text(" ".join(p for p in parts if p), style="progress.download")


class _RichTask:
    def __init__(self, owner: ConsoleProgress, task_id: Any, total: float | None, items_total: int | None) -> None:
        self.owner, self.task_id = owner, task_id
        self.items_done = 0
        self.known, self.items_total = total or 0, items_total or 0

    def extend(self, amount: float, items: int = 0, listing: bool = False) -> None:
        self.known += amount
        self.items_total += items
        fields: dict[str, Any] = {"known": self.known, "items_total": self.items_total, "listing": listing}
        if not listing:
            fields["total"] = self.known  # while listing the task keeps total None: no percentage, no time left
        self.owner.bars.update(self.task_id, **fields)

    def advance(self, amount: float = 1, items: int = 0) -> None:
        if items:
            self.items_done += items
            self.owner.bars.update(self.task_id, advance=amount, items_done=self.items_done)
        else:
            self.owner.bars.advance(self.task_id, amount)

    def close(self) -> None:
        self.owner.bars.update(self.task_id, visible=False)
        self.owner.bars.stop_task(self.task_id)


class _PlainTask:
    """A line every PLAIN_EVERY seconds: '  copy docs: 144.0 MiB of 800.0 MiB (18%), 48.2 MiB/s, 12/40 files'."""

    def __init__(self, console: Console, description: str, total: float | None, unit: str,
                 items_total: int | None) -> None:
        self.console, self.description, self.total, self.unit = console, description, total, unit
        self.items_total = items_total
        self.listing = False
        self.done = 0.0
        self.items_done = 0
        self.started = self.last = time.monotonic()
        self.lock = threading.Lock()

    def line(self) -> str:
        text = f"  {self.description}: {amount(self.done, self.unit)}"
        if self.listing:
            text += f" of {amount(self.total or 0, self.unit)}+ listed so far"
        elif self.total:
            text += f" of {amount(self.total, self.unit)} ({100 * self.done / self.total:.0f}%)"
        elapsed = time.monotonic() - self.started
        extra = [speed(self.done / elapsed if elapsed > 0 else None, self.unit),
                 items(self.items_done, self.items_total, self.listing)]
        return ", ".join([text, *(e for e in extra if e)])

    def advance(self, amount: float = 1, items: int = 0) -> None:
        with self.lock:
            self.done += amount
            self.items_done += items
            if time.monotonic() - self.last < PLAIN_EVERY:
                return
            self.last = time.monotonic()
        self.console.print(self.line(), highlight=False, markup=False)

    def extend(self, amount: float, items: int = 0, listing: bool = False) -> None:
        with self.lock:
            self.total = (self.total or 0) + amount
            self.items_total = (self.items_total or 0) + items
            self.listing = listing

    def close(self) -> None:
        pass


class ConsoleProgress:
    """The CLI's `Progress`: used as a context manager around a verb."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.console = console
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.bars = RichProgress(
            TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(), _AmountColumn(),
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

    def task(self, description: str, total: float | None = None, unit: str = "",
             items_total: int | None = None) -> ProgressTask:
        if not self.enabled:
            return NullProgress().task(description, total, unit)
        if self.live:
            return _RichTask(self, self.bars.add_task(description, total=total, unit=unit, items_total=items_total,
                                                      items_done=0), total, items_total)
        return _PlainTask(self.console, description, total, unit, items_total)
