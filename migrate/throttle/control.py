"""The effective limits of an item, and the limiter its workers share.

Precedence, most specific last: the plan's `throttle`, the item's (key by key), an open schedule window (its
limits replace the others while it is open: a window without limits is a fast window), a manual override
from `migrate throttle` (journaled with who and when), and finally the probe's back-off factor (halved while the
source is over a ceiling, recovering by a tenth per healthy reading: multiplicative decrease, additive increase).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from migrate.plan.loader import LoadedPlan
from migrate.plan.model import BlobItem, DatabaseItem, Limits
from migrate.plan.model import Throttle as ThrottleSpec
from migrate.state.direction import PLAN_ITEM
from migrate.state.journal import Journal
from migrate.throttle.bucket import Bucket
from migrate.throttle.schedule import open_window

OVERRIDE_KEY = "throttle:override"  # plan-level state written by `migrate throttle`
REFRESH = 1.0  # seconds between looks at the journal's override and the schedule
MIN_FACTOR = 0.05

Probe = Callable[[], tuple[bool, str]]  # (over a ceiling, reading)


@dataclass
class Effective:
    rows_per_second: float | None = None
    bytes_per_second: float | None = None
    max_connections: int | None = None
    verify_rows_per_second: float | None = None
    paused: bool = False
    reasons: list[str] = field(default_factory=list)

    @property
    def why(self) -> str:
        return "; ".join(self.reasons) or "no limits"

    @property
    def limited(self) -> bool:
        return self.paused or any(v is not None for v in (self.rows_per_second, self.bytes_per_second,
                                                          self.max_connections, self.verify_rows_per_second))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "why": self.why}


def _merge(plan: ThrottleSpec | None, item: ThrottleSpec | None) -> ThrottleSpec | None:
    if plan is None or item is None:
        return item or plan
    return ThrottleSpec(**{**plan.model_dump(exclude_unset=True), **item.model_dump(exclude_unset=True)})


def spec_of(loaded: LoadedPlan, item: DatabaseItem | BlobItem) -> ThrottleSpec | None:
    return _merge(loaded.plan.throttle, item.throttle)


def effective_limits(spec: ThrottleSpec | None, override: dict[str, Any] | None, moment: datetime,
                     factor: float = 1.0, probe_reading: str = "") -> Effective:
    out = Effective()
    if spec is not None:
        window = open_window(spec.schedule, spec.timezone, moment)
        chosen: Limits = window if window is not None else spec
        out.rows_per_second, out.bytes_per_second = chosen.rows_per_second, chosen.bytes_per_second
        out.max_connections, out.paused = chosen.max_connections, chosen.pause
        out.verify_rows_per_second = spec.verify_rows_per_second
        if window is not None:
            out.reasons.append(f"schedule window {window.at} {','.join(window.days)} ({spec.timezone or 'local'})")
        elif chosen.rows_per_second or chosen.bytes_per_second or chosen.max_connections:
            out.reasons.append("plan limits")
    if override:
        who = f"{override.get('by', '?')} at {str(override.get('at', '?'))[:19]}"
        if override.get("pause"):
            out.paused = True
            out.reasons.append(f"paused by {who}")
        for key in ("rows_per_second", "bytes_per_second"):
            if override.get(key):
                setattr(out, key, float(override[key]))
                out.reasons.append(f"{key.replace('_', ' ')} {override[key]:g} set by {who}")
    if factor < 1.0 and (out.rows_per_second or out.bytes_per_second):
        out.rows_per_second = out.rows_per_second * factor if out.rows_per_second else None
        out.bytes_per_second = out.bytes_per_second * factor if out.bytes_per_second else None
        out.reasons.append(f"{probe_reading}: at {factor:.0%}")
    return out


class Throttle:
    """One item's limiter, shared by every worker of the process; `rows(n)`, `bytes(n)` and `verify_rows(n)`
    count work done and wait as the effective limits require."""

    def __init__(self, spec: ThrottleSpec | None, journal: Journal | None, probe: Probe | None = None,
                 unthrottled: bool = False, item: str | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.spec, self.journal, self.probe = spec, journal, probe
        self.unthrottled, self.item = unthrottled, item
        self._over = False
        self.now, self.clock = now, clock
        self.factor = 1.0
        self.reading = ""
        self.current = Effective()
        self._refreshed = -1e9
        self._probed = -1e9
        self._lock = threading.Lock()
        self._rows = Bucket(lambda: self._rate("rows_per_second"), clock, sleep)
        self._bytes = Bucket(lambda: self._rate("bytes_per_second"), clock, sleep)
        self._verify = Bucket(lambda: self._rate("verify_rows_per_second"), clock, sleep)

    @property
    def active(self) -> bool:
        return not self.unthrottled and (self.spec is not None or self.journal is not None)

    def effective(self) -> Effective:
        """The limits as they stand now (looked at again at most once a second)."""
        if not self.active:
            return Effective()
        with self._lock:
            if self.clock() - self._refreshed >= REFRESH:
                self._refreshed = self.clock()
                self._look_at_probe()
                override = self.journal.get(PLAN_ITEM, OVERRIDE_KEY) if self.journal is not None else None
                said = (f"source over its ceiling ({self.reading})" if self._over
                        else f"recovering, the source is healthy again ({self.reading})")
                self.current = effective_limits(self.spec, override if isinstance(override, dict) else None,
                                                self.now(), self.factor, said)
            return self.current

    def _look_at_probe(self) -> None:
        probe = self.spec.probe if self.spec is not None else None
        if self.probe is None or probe is None or self.clock() - self._probed < probe.every:
            return
        self._probed = self.clock()
        over, self.reading = self.probe()
        before = self.factor
        self.factor = max(MIN_FACTOR, self.factor / 2) if over else min(1.0, self.factor + 0.1)
        if self.journal is not None and (over != self._over or (self.factor == 1.0 and before < 1.0)):
            said = (f"source over its ceiling ({self.reading}): backing off to {self.factor:.0%} of the limits"
                    if over else f"source healthy again ({self.reading}): back to {self.factor:.0%} of the limits")
            self.journal.event("throttle", said, item=self.item, outcome="warning" if over else "ok")
        self._over = over

    def _rate(self, key: str) -> tuple[float | None, bool, str]:
        current = self.effective()
        return getattr(current, key), current.paused, current.why

    def hold(self) -> None:
        """Before a unit of work: wait while paused (and while in debt), consuming nothing."""
        if self.active:
            self._rows.take(0)

    def rows(self, amount: float) -> None:
        if self.active and amount:
            self._rows.take(amount)

    def bytes(self, amount: float) -> None:
        if self.active and amount:
            self._bytes.take(amount)

    def verify_rows(self, amount: float) -> None:
        if self.active and amount:
            self._verify.take(amount)

    def workers(self, wanted: int) -> int:
        limit = self.effective().max_connections
        return max(1, min(wanted, limit)) if limit else wanted

    def waited(self) -> dict[str, float]:
        """Seconds spent waiting, by reason, over the life of this limiter."""
        out: dict[str, float] = {}
        for bucket in (self._rows, self._bytes, self._verify):
            for why, seconds in bucket.waited.items():
                out[why] = out.get(why, 0.0) + seconds
        return {why: round(s, 3) for why, s in out.items() if s >= 0.001}


class Throttles:
    """The limiters of one process, one per item (`unthrottled`: the cutover's final sync)."""

    def __init__(self, loaded: LoadedPlan, journal: Journal, unthrottled: bool = False) -> None:
        self.loaded, self.journal, self.unthrottled = loaded, journal, unthrottled
        self._items: dict[str, Throttle] = {}

    def item(self, item: DatabaseItem | BlobItem, probe: Probe | None = None) -> Throttle:
        if item.name not in self._items:
            self._items[item.name] = Throttle(spec_of(self.loaded, item), self.journal, probe, self.unthrottled,
                                              item.name)
        return self._items[item.name]


NO_THROTTLE = Throttle(None, None)
