"""The estate: one row per component (plan) in a folder, sorted by what needs attention first."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from datetime import datetime

from migrate.reports.build import ReportData, lag_text
from migrate.results import jsonable

# lower sorts first: broken or half-done work, then refusals, then the rest by how far it has come
ATTENTION = {"INVALID": 0, "CUTOVER RUNNING": 0, "ROLLING BACK": 0, "NOT READY": 1, "ROLLED BACK": 2,
             "LOADING": 3, "DUAL-RUNNING": 4, "READY FOR CUTOVER": 5, "CUT OVER": 6}


@dataclass
class ComponentRow:
    component: str
    plan: str
    phase: str
    headline: str
    lag: str = "-"
    last_verification: str = "-"
    gates: str = "-"
    cutover: str = "-"
    depends_on: list[str] = field(default_factory=list)

    @property
    def attention(self) -> int:
        return ATTENTION.get(self.phase, 0)


@dataclass
class EstateResult:
    folder: str
    components: list[ComponentRow]
    generated_at: datetime

    @property
    def clean(self) -> bool:
        return all(c.phase in ("READY FOR CUTOVER", "CUT OVER") for c in self.components)


def component_row(plan: str, data: ReportData, depends_on: list[str]) -> ComponentRow:
    lags = [i.reverse_lag_seconds if i.reverse_lag_seconds is not None else i.lag_seconds for i in data.items]
    known = [lag for lag in lags if lag is not None]
    verified = [i.verification for i in data.items if i.verification]
    last = max(verified, key=lambda v: v["at"]) if verified else None
    dirty = sum(1 for i in data.items if i.verification and not i.verification["clean"])
    failing = [g.gate for g in data.gates if not g.passed]
    return ComponentRow(
        component=data.component, plan=plan, phase=data.phase, headline=data.headline,
        lag="reverse: not run yet" if data.phase == "CUT OVER" and not known else
        ("reverse " if any(i.reverse_lag_seconds is not None for i in data.items) else "")
        + (lag_text(max(known)) if known else "unknown"),
        last_verification="never" if last is None else
        f"{last['at']:%Y-%m-%d %H:%M} UTC, " + (f"{dirty} item(s) with differences" if dirty else "clean"),
        gates=f"{len(data.gates) - len(failing)}/{len(data.gates)} pass"
        + (f"; failing: {', '.join(failing)}" if failing else ""),
        cutover=str(data.cutover.get("status", "idle")), depends_on=depends_on)


def invalid_row(plan: str, message: str) -> ComponentRow:
    return ComponentRow(component="?", plan=plan, phase="INVALID", headline=message)


def sort_rows(rows: list[ComponentRow]) -> list[ComponentRow]:
    return sorted(rows, key=lambda r: (r.attention, r.component))


_HEADER = ["component", "state", "lag", "last verification", "gates", "cutover", "depends on", "plan"]


def _cells(row: ComponentRow) -> list[str]:
    return [row.component, row.headline, row.lag, row.last_verification, row.gates, row.cutover,
            ", ".join(row.depends_on) or "-", row.plan]


def estate_markdown(estate: EstateResult) -> str:
    lines = [f"# Estate: {estate.folder}", "", f"{len(estate.components)} component(s), generated "
             f"{estate.generated_at:%Y-%m-%d %H:%M:%S} UTC; most in need of attention first.", "",
             "| " + " | ".join(_HEADER) + " |", "|" + "---|" * len(_HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(r)) + " |" for r in estate.components]
    return "\n".join(lines) + "\n"


def estate_html(estate: EstateResult) -> str:
    e = html.escape
    rows = []
    for row in estate.components:
        css = "ok" if row.phase in ("READY FOR CUTOVER", "CUT OVER", "DUAL-RUNNING") else "bad"
        cells = _cells(row)
        rows.append(f"<tr><td>{e(cells[0])}</td><td class='{css}'>{e(cells[1])}</td>"
                    + "".join(f"<td>{e(c)}</td>" for c in cells[2:]) + "</tr>")
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Estate: "
            f"{e(estate.folder)}</title><style>body{{font-family:system-ui,sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;"
            "font-size:.9em}th{background:#f0f0f0}.ok{color:#06682f;font-weight:bold}"
            ".bad{color:#b00020;font-weight:bold}</style></head><body>"
            f"<h1>Estate: {e(estate.folder)}</h1><p>{len(estate.components)} component(s), generated "
            f"{estate.generated_at:%Y-%m-%d %H:%M:%S} UTC; most in need of attention first.</p><table><tr>"
            + "".join(f"<th>{e(h)}</th>" for h in _HEADER) + "</tr>" + "".join(rows) + "</table></body></html>\n")


def estate_json(estate: EstateResult) -> str:
    return json.dumps({**jsonable(estate), "report_version": 1}, indent=2, ensure_ascii=False) + "\n"


ESTATE_RENDERERS = {"md": estate_markdown, "html": estate_html, "json": estate_json}
