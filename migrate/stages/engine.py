"""What every kind of plan item (a database, a blob set) implements, and the results its stages return.

The stage runner drives these; it never knows whether it moves rows or files.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from migrate.errors import Difference

if TYPE_CHECKING:
    from migrate.plan.loader import LoadedPlan
    from migrate.state.journal import Journal

STAGES = ("preflight", "schema", "load", "verify", "sync", "cutover", "rollback")
RUN_STAGES = ("preflight", "schema", "load", "verify")
REVERSE_SUFFIX = ".reverse"  # journal name of an item's reverse replication


class ProgressTask(Protocol):
    def advance(self, amount: float = 1, items: int = 0) -> None: ...
    def extend(self, amount: float, items: int = 0, listing: bool = False) -> None:
        """Raise the totals by what a listing just found; `listing` says whether it is still going on (the
        totals are then lower bounds, and shown as such)."""
    def close(self) -> None: ...


class Progress(Protocol):
    """Where long work reports how far it is; the CLI shows bars, the API default shows nothing.

    `total` and `advance(amount)` are in `unit` (B for bytes, rows, tables); `items_total` and
    `advance(items=)` count whole things finished alongside (files of a blob copy)."""

    def task(self, description: str, total: float | None = None, unit: str = "",
             items_total: int | None = None) -> ProgressTask: ...


class _NullTask:
    def advance(self, amount: float = 1, items: int = 0) -> None:
        pass

    def extend(self, amount: float, items: int = 0, listing: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


class NullProgress:
    def task(self, description: str, total: float | None = None, unit: str = "",
             items_total: int | None = None) -> ProgressTask:
        return _NullTask()


@dataclass
class StageContext:
    """What a stage may use: the plan, the journal, a progress sink."""

    loaded: LoadedPlan
    journal: Journal
    progress: Progress = field(default_factory=NullProgress)
    run_id: int | None = None
    allow_mass_delete: bool = False  # --allow-mass-delete: let a cycle delete past the guard (stages/guards.py)
    throttles: Any = None  # migrate.throttle.Throttles: the limiters of this process (None: no limits)

    def throttle(self, item: Any, probe: Any = None) -> Any:
        """The item's limiter (`migrate.throttle.Throttle`), shared by all its workers in this process."""
        if self.throttles is None:
            from migrate.throttle.control import NO_THROTTLE

            return NO_THROTTLE
        return self.throttles.item(item, probe)


@dataclass
class StageResult:
    item: str
    stage: str
    ok: bool = True
    summary: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # per-object failures (e.g. an unreadable file)


@dataclass
class Preview:
    """What `migrate plan` shows for one item: what would change, without changing anything."""

    item: str
    kind: str
    create: int = 0
    update: int = 0
    delete: int = 0
    unchanged: int = 0
    units: str = "files"  # files | rows | tables
    bytes: int = 0
    estimate_seconds: float = 0.0
    details: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    inventory: list[dict[str, str]] = field(default_factory=list)  # every source object and its fate
    problems: list[str] = field(default_factory=list)  # a check that failed (unreachable, missing, refused)

    @property
    def changes(self) -> bool:
        return bool(self.create or self.update or self.delete)


@dataclass
class VerifyResult:
    item: str
    checked: int = 0
    differences: list[Difference] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    more: int = 0  # differences found beyond those listed (a verification in parts keeps 1,000 per part)

    @property
    def clean(self) -> bool:
        return not self.differences

    @property
    def found(self) -> int:
        """Every difference found, listed or not."""
        return len(self.differences) + self.more


@dataclass
class SyncResult:
    item: str
    created: int = 0
    updated: int = 0
    deleted: int = 0
    lag_seconds: float | None = None  # how far the target is behind after this cycle
    lag_detail: dict[str, Any] = field(default_factory=dict)  # per table / per prefix
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


class ItemEngine(ABC):
    """One plan item's stages. Every method is idempotent and safe to re-run after a crash."""

    kind: ClassVar[str]
    stages: ClassVar[tuple[str, ...]]

    def __init__(self, item: Any, loaded: LoadedPlan, reverse: bool = False) -> None:
        self.item = item
        self.loaded = loaded
        self.reverse = reverse  # reverse replication: reads the plan's target, writes its source

    @property
    def name(self) -> str:
        """The journal name: the item's, or `<item>.reverse` for reverse replication (its own records)."""
        return f"{self.item.name}{REVERSE_SUFFIX}" if self.reverse else str(self.item.name)

    @abstractmethod
    def preflight(self, ctx: StageContext) -> StageResult:
        """Read-only: endpoints reachable, credentials work, source objects exist."""

    def schema(self, ctx: StageContext) -> StageResult:
        return StageResult(self.name, "schema", summary="nothing to do")

    @abstractmethod
    def load(self, ctx: StageContext) -> StageResult:
        """Full copy, chunked and journaled so that a rerun resumes."""

    @abstractmethod
    def verify(self, ctx: StageContext, deep: bool = False) -> VerifyResult:
        """Compare both sides; list every difference."""

    @abstractmethod
    def sync(self, ctx: StageContext) -> SyncResult:
        """One incremental catch-up cycle."""

    @abstractmethod
    def preview(self, ctx: StageContext) -> Preview:
        """What load/sync would change; reads only."""

    @abstractmethod
    def reverse_ready(self, ctx: StageContext) -> tuple[bool, str]:
        """Whether reverse replication would work (the source takes writes, the target supplies changes),
        with the evidence; checked by the `reverse_ready` gate before any cutover step. Writes nothing that
        stays."""

    def sync_tasks(self, ctx: StageContext, loaded: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
        """The parts of a sync cycle run by workers (`migrate worker --sync`), as (task, spec); none by default:
        the cycle is then one task, `sync_parts`, run by one worker."""
        return []

    def sync_task(self, ctx: StageContext, cycle: str, task: str, spec: str | None = None) -> Any:
        raise NotImplementedError(f"{self.kind} items sync in one task")

    def sync_parts(self, ctx: StageContext, cycle: str, opened_ns: int) -> SyncResult:
        """The closing task of a sync cycle run by workers: its parts added up, or, without parts, the cycle."""
        return self.sync(ctx)

    def pending(self, ctx: StageContext) -> list[str]:
        """Parts added to the plan since this item's load (a table named later): schema and load run again
        for them on the next `run` (none by default)."""
        return []

    def advance_sequences(self, ctx: StageContext) -> list[str]:
        """`migrate:sequences`: set the target's id generators past the moved rows (none by default)."""
        return []

    def release(self, journal: Journal) -> list[str]:
        """Drop what this engine's change capture keeps on the server it reads (a replication slot and its
        publication, where the journal says it made them); returns what was dropped (nothing by default)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook: engines without connections need nothing here
        """Release connections."""
