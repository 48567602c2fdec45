"""A token bucket shared by every worker of a process, on rows or bytes actually moved.

Work is counted after it happens (`take(n)` once a chunk committed or a block was written): the bucket may go
into debt by one unit of work, and the next `take` waits the debt off. So the rate over any window longer than
one unit of work is the limit, and nothing is ever held half-done while waiting. The rate and a pause can
change while someone waits: the wait is re-judged every `SLICE` seconds, which is how `migrate throttle`
reaches a running worker within two seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

SLICE = 0.25  # seconds: how often a waiting worker looks again at the rate and the pause
BURST_SECONDS = 1.0  # a bucket holds at most one second of work, so an idle spell does not allow a flood


class Bucket:
    def __init__(self, rate: Callable[[], tuple[float | None, bool, str]],
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        """`rate()` gives (units per second or None for no limit, paused, why) as they stand now."""
        self.rate = rate
        self.clock, self.sleep = clock, sleep
        self.tokens = 0.0
        self.last = clock()
        self.lock = threading.Lock()
        self.waited: dict[str, float] = {}  # why -> seconds spent waiting

    def take(self, amount: float, stop: Callable[[], None] | None = None) -> None:
        """Count `amount` units as done; wait while paused or in debt. `stop()` may raise to abandon the wait."""
        with self.lock:
            limit, paused, _ = self.rate()
            self._refill(limit)
            if (limit is not None or paused) and amount:
                self.tokens -= amount
        while True:
            with self.lock:
                limit, paused, why = self.rate()
                self._refill(limit)
                if not paused and (limit is None or self.tokens >= 0):
                    if limit is None:
                        self.tokens = 0.0
                    return
                wait = SLICE if paused or limit is None else min(SLICE, -self.tokens / limit)
            if stop is not None:
                stop()
            started = self.clock()
            self.sleep(max(wait, 0.001))
            with self.lock:
                self.waited[why] = self.waited.get(why, 0.0) + (self.clock() - started)

    def _refill(self, limit: float | None) -> None:
        now = self.clock()
        if limit is not None:
            self.tokens = min(self.tokens + (now - self.last) * limit, limit * BURST_SECONDS)
        self.last = now
