"""Renderers: Markdown and HTML for people, JSON and JUnit XML for CI. All take one `ReportData`."""

from __future__ import annotations

import html
import json
from xml.etree import ElementTree as ET

from migrate.plan.durations import format_duration
from migrate.reports.build import ReportData
from migrate.results import jsonable

FORMATS = ("md", "html", "json", "junit")
_SUFFIX = {"md": ".md", "html": ".html", "json": ".json", "junit": ".xml"}


def suffix_for(fmt: str) -> str:
    return _SUFFIX[fmt]


def render(data: ReportData, fmt: str) -> str:
    return {"md": to_markdown, "html": to_html, "json": to_json, "junit": to_junit}[fmt](data)


def _lag(seconds: float | None) -> str:
    return "unknown" if seconds is None else format_duration(seconds)


def _verdict(data: ReportData) -> str:
    return ("READY: every item verified clean and every gate passes" if data.clean
            else "NOT READY: see the failing gates and verifications below")


def _sections(data: ReportData) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables, shared by Markdown and HTML so both always say the same."""
    items = [[i.name, i.kind, i.source, i.target, f"{i.stage} ({i.status})",
              _lag(i.lag_seconds) if i.reverse_lag_seconds is None else f"reverse {_lag(i.reverse_lag_seconds)}",
              ("clean" if i.verified_clean else f"{i.verification['differences']} difference(s)")
              + f", {i.verification['checked']} checked at {i.verification['at']:%Y-%m-%d %H:%M:%S} UTC"
              if i.verification else "never verified"] for i in data.items]
    gates = [[g.gate, "PASS" if g.passed else "FAIL", g.evidence] for g in data.gates]
    differences = [[i.name, d.get("kind", ""), d.get("key", ""), d.get("detail", "")]
                   for i in data.items if i.verification for d in i.verification["sample"]]
    timeline = [[i.name, t["stage"], t["status"], f"{t['at']:%Y-%m-%d %H:%M:%S}",
                 "" if t["seconds"] is None else f"{t['seconds']:.1f}s"] for i in data.items for t in i.timeline
                if t["status"] != "running"]
    steps = [[str(n + 1), s] for n, s in enumerate(data.cutover_steps)]
    rollback = [[str(n + 1), s] for n, s in enumerate(data.rollback_steps)] or [["-", "(none planned)"]]
    events = [[f"{e['at']:%Y-%m-%d %H:%M:%S}", e["user"], e["host"], e["command"], e["item"] or "", e["kind"],
               e["outcome"], e["message"]] for e in data.events]
    return [
        ("Items", ["item", "kind", "source", "target", "stage", "lag", "last verification"], items),
        ("Cutover gates", ["gate", "result", "evidence"], gates),
        ("Differences (first 20 per item)", ["item", "kind", "key", "detail"], differences),
        ("Cutover steps", ["#", "step"], steps),
        ("Rollback steps", ["#", "step"], rollback),
        ("Stage timeline", ["item", "stage", "status", "at (UTC)", "took"], timeline),
        ("Event log", ["at (UTC)", "user", "host", "command", "item", "event", "outcome", "message"], events),
    ]


def _header_lines(data: ReportData) -> list[tuple[str, str]]:
    return [
        ("Component", data.component),
        ("Description", data.description or "-"),
        ("Change", f"{data.change_id or '-'} (owner: {data.change_owner or '-'})"),
        ("Plan", f"{data.plan_path} (sha256 {data.fingerprint[:16]})"),
        ("Cutover", data.cutover.get("status", "idle")
         + (f", approved by {data.cutover['approved_by']}" if data.cutover.get("approved_by") else "")),
        ("Generated", f"{data.generated_at:%Y-%m-%d %H:%M:%S} UTC by migrate {data.tool_version}"),
    ]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(data: ReportData) -> str:
    lines = [f"# Migration report: {data.component}", "", f"**{_verdict(data)}**", ""]
    lines += [f"- **{k}:** {_md_cell(v)}" for k, v in _header_lines(data)]
    for title, header, rows in _sections(data):
        lines += ["", f"## {title}", ""]
        if not rows:
            lines.append("_none_")
            continue
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    lines += ["", "Sign-off: ______________________  Date: ____________", ""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top;font-size:.9em}
th{background:#f0f0f0}.ok{color:#06682f;font-weight:bold}.bad{color:#b00020;font-weight:bold}"""


def to_html(data: ReportData) -> str:
    e = html.escape
    cls = "ok" if data.clean else "bad"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Migration report: "
             f"{e(data.component)}</title><style>{_CSS}</style></head><body>",
             f"<h1>Migration report: {e(data.component)}</h1><p class='{cls}'>{e(_verdict(data))}</p><dl>"]
    parts += [f"<dt><b>{e(k)}</b></dt><dd>{e(v)}</dd>" for k, v in _header_lines(data)]
    parts.append("</dl>")
    for title, header, rows in _sections(data):
        parts.append(f"<h2>{e(title)}</h2>")
        if not rows:
            parts.append("<p><i>none</i></p>")
            continue
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for row in rows:
            cells = []
            for cell in row:
                css = " class='ok'" if cell in ("PASS", "clean", "ok") else (
                    " class='bad'" if cell in ("FAIL", "failed", "refused") else "")
                cells.append(f"<td{css}>{e(str(cell))}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
    parts.append("<p>Sign-off: ______________________ Date: ____________</p></body></html>")
    return "\n".join(parts)


def to_json(data: ReportData) -> str:
    body = jsonable(data)
    body["clean"] = data.clean
    body["report_version"] = 1
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def to_junit(data: ReportData) -> str:
    suite = ET.Element("testsuite", name=f"migrate.{data.component}",
                       timestamp=data.generated_at.isoformat())
    failures = 0

    def case(name: str, classname: str, failure: str | None) -> None:
        nonlocal failures
        element = ET.SubElement(suite, "testcase", name=name, classname=classname)
        if failure:
            failures += 1
            ET.SubElement(element, "failure", message=failure).text = failure

    for item in data.items:
        v = item.verification
        case(f"verify {item.name}", f"migrate.{data.component}.verify",
             None if item.verified_clean else ("never verified" if v is None
                                               else f"{v['differences']} difference(s) of {v['checked']} checked"))
        failed_stages = [t for t in item.timeline if t["status"] == "failed"]
        case(f"stages {item.name}", f"migrate.{data.component}.stages",
             f"{item.stage} is {item.status}" if item.status == "failed" or (failed_stages and item.status != "done")
             else None)
    for gate in data.gates:
        case(f"gate {gate.gate}", f"migrate.{data.component}.gates", None if gate.passed else gate.evidence)
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
