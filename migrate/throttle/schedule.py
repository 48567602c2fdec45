"""Which schedule window is open at a moment, in the schedule's time zone.

Windows are wall-clock times (`07:00-19:00`) on days (`mon-fri`) in a named zone: the moment is converted to
that zone's local time first, so a window keeps its wall-clock meaning across daylight-saving changes (on the
spring-forward day 07:00-19:00 is 11 hours long; on the autumn day, 13). A window that crosses midnight
(`19:00-07:00`) belongs to the day it starts on. The first open window wins.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from migrate.plan.model import DAYS, Window


def zone(name: str | None) -> tzinfo:
    """The named zone, or the runner's own."""
    if name:
        return ZoneInfo(name)
    local = datetime.now().astimezone().tzinfo
    assert local is not None
    return local


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def is_open(window: Window, local: datetime) -> bool:
    start_text, end_text = window.at.split("-")
    start, end = _minutes(start_text), _minutes(end_text)
    now = local.hour * 60 + local.minute
    today = DAYS[local.weekday()]
    yesterday = DAYS[(local - timedelta(days=1)).weekday()]
    if start < end:
        return start <= now < end and today in window.days
    if start == end:  # the whole day
        return today in window.days
    # crosses midnight: the evening part belongs to today, the early-morning part to yesterday's window
    return (now >= start and today in window.days) or (now < end and yesterday in window.days)


def open_window(windows: list[Window], timezone: str | None, moment: datetime) -> Window | None:
    local = moment.astimezone(zone(timezone))
    return next((w for w in windows if is_open(w, local)), None)
