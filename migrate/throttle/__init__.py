"""Gentle on the hospital's systems: limits, schedules, source-health back-off and live control.

- `schedule`: which window of a plan's schedule is open now, in a named time zone (DST-safe);
- `bucket`: the token bucket every worker of a process shares, counting time spent waiting by reason;
- `control`: the effective limits of an item (plan, item, schedule window, manual override from
  `migrate throttle`, probe back-off), refreshed every second while work runs.
"""

from migrate.throttle.control import OVERRIDE_KEY, Effective, Throttle, Throttles, effective_limits

__all__ = ["OVERRIDE_KEY", "Effective", "Throttle", "Throttles", "effective_limits"]
