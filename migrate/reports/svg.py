"""Inline SVG charts for the HTML report: no external assets, no JavaScript."""

from __future__ import annotations

import html
from datetime import datetime

_W, _H, _PAD = 640, 200, 44
_COLOURS = ("#1f6fb2", "#c2571a", "#2a8a3e", "#8a2a8a", "#6b6b00")


def line_chart(title: str, unit: str, series: dict[str, list[tuple[datetime, float]]]) -> str:
    """One line per series over time; empty when there is nothing to draw."""
    points = [p for values in series.values() for p in values]
    if not points:
        return ""
    t0 = min(p[0] for p in points).timestamp()
    t1 = max(p[0] for p in points).timestamp()
    top = max(p[1] for p in points) or 1.0
    span = (t1 - t0) or 1.0

    def xy(at: datetime, value: float) -> str:
        x = _PAD + (at.timestamp() - t0) / span * (_W - 2 * _PAD)
        y = _H - _PAD + -(value / top) * (_H - 2 * _PAD)
        return f"{x:.1f},{y:.1f}"

    parts = [_open(title), _axes(f"{top:,.1f} {unit}", f"{min(p[0] for p in points):%m-%d %H:%M}",
                                 f"{max(p[0] for p in points):%m-%d %H:%M}")]
    for n, (name, values) in enumerate(sorted(series.items())):
        colour = _COLOURS[n % len(_COLOURS)]
        marked = list(values[-60:])  # the newest points marked, so a lone cycle is seen too
        for run in runs(values):  # a gap (a load, then a sync days later) is a gap, not a straight line
            if len(run) == 1:
                marked.append(run[0])
                continue
            coords = " ".join(xy(at, v) for at, v in run)
            parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{coords}'/>")
        for at, value in dict.fromkeys(marked):
            x, y = xy(at, value).split(",")
            parts.append(f"<circle cx='{x}' cy='{y}' r='3' fill='{colour}'/>")
        parts.append(f"<text x='{_W - _PAD + 4}' y='{_PAD + 14 * n}' font-size='11' fill='{colour}'>"
                     f"{html.escape(name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


GAP_FACTOR = 5.0  # a pause this many times the usual spacing between points breaks the line
GAP_MIN_SECONDS = 120.0


def runs(values: list[tuple[datetime, float]]) -> list[list[tuple[datetime, float]]]:
    """The series cut where consecutive points are much further apart than usual (median spacing)."""
    if len(values) < 3:
        return [list(values)] if values else []
    gaps = sorted((b[0] - a[0]).total_seconds() for a, b in zip(values, values[1:], strict=False))
    limit = max(GAP_MIN_SECONDS, GAP_FACTOR * gaps[len(gaps) // 2])
    out = [[values[0]]]
    for before, point in zip(values, values[1:], strict=False):
        if (point[0] - before[0]).total_seconds() > limit:
            out.append([])
        out[-1].append(point)
    return out


def timeline_bars(title: str, bars: list[tuple[str, datetime, datetime, bool]]) -> str:
    """Horizontal bars (label, start, end, ok) on one time axis: the stage timeline."""
    if not bars:
        return ""
    t0 = min(b[1] for b in bars).timestamp()
    t1 = max(b[2] for b in bars).timestamp()
    span = (t1 - t0) or 1.0
    row = 18
    height = _PAD + row * len(bars) + 24
    label_w = 220
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W + label_w}' height='{height}' role='img' "
             f"aria-label='{html.escape(title)}'><title>{html.escape(title)}</title>"]
    for n, (label, start, end, ok) in enumerate(bars):
        x = label_w + (start.timestamp() - t0) / span * (_W - _PAD)
        width = max(2.0, (end.timestamp() - start.timestamp()) / span * (_W - _PAD))
        y = 10 + n * row
        colour = "#2a8a3e" if ok else "#b00020"
        seconds = (end - start).total_seconds()
        parts.append(f"<text x='4' y='{y + 12}' font-size='11'>{html.escape(label)}</text>"
                     f"<rect x='{x:.1f}' y='{y}' width='{width:.1f}' height='{row - 4}' fill='{colour}'>"
                     f"<title>{html.escape(label)}: {seconds:.1f}s</title></rect>")
    parts.append(f"<text x='{label_w}' y='{height - 6}' font-size='11'>{min(b[1] for b in bars):%m-%d %H:%M:%S}"
                 f"</text><text x='{label_w + _W - _PAD}' y='{height - 6}' font-size='11' text-anchor='end'>"
                 f"{max(b[2] for b in bars):%m-%d %H:%M:%S}</text></svg>")
    return "".join(parts)


def _open(title: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{_W + 120}' height='{_H}' role='img' "
            f"aria-label='{html.escape(title)}'><title>{html.escape(title)}</title>")


def _axes(top: str, start: str, end: str) -> str:
    return (f"<line x1='{_PAD}' y1='{_H - _PAD}' x2='{_W - _PAD}' y2='{_H - _PAD}' stroke='#888'/>"
            f"<line x1='{_PAD}' y1='{_PAD}' x2='{_PAD}' y2='{_H - _PAD}' stroke='#888'/>"
            f"<text x='{_PAD}' y='{_PAD - 6}' font-size='11'>{html.escape(top)}</text>"
            f"<text x='{_PAD}' y='{_H - _PAD + 16}' font-size='11'>{start}</text>"
            f"<text x='{_W - _PAD}' y='{_H - _PAD + 16}' font-size='11' text-anchor='end'>{end}</text>")
