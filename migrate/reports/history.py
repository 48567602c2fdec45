"""The report's history sections: verification runs (what was found, which later run found it resolved), the
event log folded for people, and the series behind the charts (lag and throughput over time)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from migrate.state.journal import VerificationRecord

MAX_EVENT_LINES = 200  # the folded log keeps the newest lines; older ones are counted, not shown
MAX_POINTS = 500  # chart points per series: weeks of --watch are thinned to this many
_FOLDED_KINDS = ("sync",)  # clean cycles of these kinds fold into one line per run of repeats


def verification_history(item: str, runs: list[VerificationRecord]) -> list[dict[str, Any]]:
    """Each verification of `item`: when, how much was checked, what differed, and, for a run that found
    differences, the first later clean run (which found them resolved)."""
    out = []
    for n, run in enumerate(runs):
        resolved = next((later.at for later in runs[n + 1:] if later.clean), None) if not run.clean else None
        out.append({
            "item": item, "at": run.at, "deep": bool(run.detail.get("deep")), "checked": run.checked,
            "differences": run.differences, "clean": run.clean,
            "keys": [d.get("key", "") for d in run.detail.get("differences", [])[:20]],
            "resolved_at": resolved,
        })
    return out


def fold_events(events: list[dict[str, Any]], limit: int = MAX_EVENT_LINES) -> tuple[list[dict[str, Any]], int]:
    """Fold each run of repeated clean sync cycles (same item, outcome ok, nothing moved) into one line with
    a count and a time span; keep the newest `limit` lines. Returns (lines, how many older lines were left out)."""
    lines: list[dict[str, Any]] = []
    for event in events:
        if _foldable(event):
            last = lines[-1] if lines else None
            if last and last.get("count") and last["kind"] == event["kind"] and last["item"] == event["item"]:
                last["count"] += 1
                last["until"] = event["at"]
                last["message"] = f"{last['count']} clean {event['kind']} cycles, nothing to copy"
                continue
            lines.append({**event, "count": 1, "until": event["at"]})
            continue
        lines.append(event)
    left_out = max(0, len(lines) - limit)
    return lines[left_out:], left_out


def _foldable(event: dict[str, Any]) -> bool:
    data = event.get("data") or {}
    moved = sum(int(data.get(k, 0) or 0) for k in ("created", "updated", "deleted"))
    return event["kind"] in _FOLDED_KINDS and event["outcome"] == "ok" and moved == 0


def lag_series(events: list[dict[str, Any]]) -> dict[str, list[tuple[datetime, float]]]:
    """item -> [(when, lag seconds)] from the sync cycles the journal logged."""
    series: dict[str, list[tuple[datetime, float]]] = {}
    for event in events:
        data = event.get("data") or {}
        if event["kind"] == "sync" and event["item"] and data.get("lag_seconds") is not None:
            series.setdefault(event["item"], []).append((event["at"], float(data["lag_seconds"])))
    return {k: _thin(v) for k, v in series.items()}


def throughput_series(events: list[dict[str, Any]]) -> dict[str, list[tuple[datetime, float]]]:
    """item -> [(when, rows or files per second)] of each load and sync that moved something."""
    series: dict[str, list[tuple[datetime, float]]] = {}
    for event in events:
        data = event.get("data") or {}
        seconds = float(data.get("seconds") or 0.0)
        if event["kind"] not in ("load", "sync") or not event["item"] or seconds <= 0:
            continue
        metrics = data.get("metrics") or {}
        moved = (int(metrics.get("rows_this_run", metrics.get("files_copied", 0)) or 0) if event["kind"] == "load"
                 else sum(int(data.get(k, 0) or 0) for k in ("created", "updated", "deleted")))
        if moved:
            series.setdefault(event["item"], []).append((event["at"], moved / seconds))
    return {k: _thin(v) for k, v in series.items()}


def _thin(points: list[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    if len(points) <= MAX_POINTS:
        return points
    step = len(points) / MAX_POINTS
    return [points[int(i * step)] for i in range(MAX_POINTS - 1)] + [points[-1]]
