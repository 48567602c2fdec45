"""Renderers: Markdown and HTML for people, JSON and JUnit XML for CI. All take one `ReportData`."""

from __future__ import annotations

import html
import json
from datetime import datetime
from typing import Any
from xml.etree import ElementTree as ET

from migrate.reports.build import ReportData, lag_text
from migrate.reports.schema import REPORT_VERSION
from migrate.reports.svg import line_chart, timeline_bars
from migrate.results import jsonable
from migrate.units import human_bytes

FORMATS = ("md", "html", "json", "junit")
_SUFFIX = {"md": ".md", "html": ".html", "json": ".json", "junit": ".xml"}


def suffix_for(fmt: str) -> str:
    return _SUFFIX[fmt]


def render(data: ReportData, fmt: str, events_all: bool = False) -> str:
    if fmt in ("md", "html"):
        return (to_markdown if fmt == "md" else to_html)(data, events_all)
    return {"json": to_json, "junit": to_junit}[fmt](data)


def _when(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return f"{value:%Y-%m-%d %H:%M:%S}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _verdict(data: ReportData) -> str:
    return data.headline or data.phase


def _summary(data: ReportData) -> list[tuple[str, list[str], list[list[str]]]]:
    """The one-page summary's tables: items, counts, gates."""
    items = [[i.name, i.kind, i.source, i.target, f"{i.stage} ({i.status})",
              f"reverse {lag_text(i.reverse_lag_seconds)}" if i.reverse_lag_seconds is not None
              else "reverse: not run yet" if data.phase == "CUT OVER" else lag_text(i.lag_seconds),
              ("clean" if i.verified_clean else f"{i.verification['differences']} difference(s)")
              + f", {i.verification['checked']} checked at {i.verification['at']:%Y-%m-%d %H:%M:%S} UTC"
              if i.verification else "never verified"] for i in data.items]
    counts = [[c.item, c.part, c.unit, _number(c.source), _number(c.target),
               "equal" if c.source == c.target and not c.differences else
               f"{c.differences} difference(s)" if c.differences else "DIFFER"] for c in data.counts]
    gates = [[g.gate, "PASS" if g.passed else "FAIL", g.evidence] for g in data.gates]
    return [
        ("Items", ["item", "kind", "source", "target", "stage", "lag", "last verification"], items),
        ("Counts: source vs target (last verification)", ["item", "table / blob set", "unit", "source", "target",
                                                          "result"], counts),
        ("Cutover gates" + (" (as they stood when the cutover was allowed)" if data.phase == "CUT OVER" else ""),
         ["gate", "result", "evidence"], gates),
    ]


def _masked(data: ReportData) -> str:
    how = ("an HMAC under the plan's secret mask_key" if data.masked_keyed else
           "an unkeyed hash: anyone who knows the component name can test a guessed identifier; set "
           "change.mask_key to a ${VAR} secret")
    return f"MASKED: keys and file names are replaced by stable short hashes ({how})"


def _number(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _details(data: ReportData, events_all: bool) -> list[tuple[str, list[str], list[list[str]]]]:
    """The detail sections after the summary, shared by Markdown and HTML so both always say the same."""
    if data.step_runs:
        steps = [[r.phase, str(r.run), str(r.index + 1), r.name, _when(r.started_at), _when(r.ended_at),
                  _seconds(r.seconds), r.status, "-" if r.exit_status is None else str(r.exit_status),
                  r.output_excerpt] for r in data.step_runs]
    else:
        steps = [["cutover", "-", str(n + 1), s, "-", "-", "-", "planned", "-", ""]
                 for n, s in enumerate(data.cutover_steps)]
    history = [[v["item"], _when(v["at"]), "deep" if v["deep"] else "checksums", f"{v['checked']:,}",
                "none" if v["clean"] else f"{v['differences']} ({', '.join(v['keys'][:5])})",
                "-" if v["clean"] else (f"resolved: clean at {_when(v['resolved_at'])}" if v["resolved_at"]
                                        else "NOT RESOLVED")] for v in data.verification_history]
    differences = [[i.name, d.get("kind", ""), d.get("key", ""), d.get("detail", "")]
                   for i in data.items if i.verification for d in i.verification["sample"]]
    limits = [[x.item, x.what, x.why] for x in data.not_migrated]
    protected = [[t["item"], t["stage"], t["why"], f"{t['seconds']:.1f} s"] for t in data.throttled]
    slots = [[i.name, seen["slot"], seen.get("source", ""),
              human_bytes(seen["retained_bytes"]) if "retained_bytes" in seen else "not read yet",
              str(seen.get("newest_commit") or "-")[:19], str(seen.get("read_at") or "-")[:19]]
             for i in data.items for seen in (i.slot, i.reverse_slot) if seen]
    rollback = [[str(n + 1), r["name"], r["run"]] for n, r in enumerate(data.rollback_plan)]
    rollback.append(["", "how to start it", data.rollback_command])
    rollback.append(["", "automatic trigger", "a cutover step that fails or times out runs these steps itself"])
    timeline = [[i.name, t["stage"], t["status"], f"{t['at']:%Y-%m-%d %H:%M:%S}",
                 "" if t["seconds"] is None else f"{t['seconds']:.1f}s"] for i in data.items for t in i.timeline
                if t["status"] != "running"]
    events = [[f"{e['at']:%Y-%m-%d %H:%M:%S}" + (f" .. {e['until']:%Y-%m-%d %H:%M:%S}" if e.get("count", 1) > 1
                                                  else ""),
               e["user"], e["host"], e["command"], e["item"] or "", e["kind"], e["outcome"], e["message"]]
              for e in data.events]
    shown = (f"Event log (all {data.events_total} events)" if events_all else
             f"Event log ({data.events_total} events; clean sync cycles folded"
             + (f"; {data.events_left_out} older lines left out" if data.events_left_out else "")
             + "; `--events all` for every event)")
    return [
        ("Cutover and rollback steps", ["phase", "run", "#", "step", "start (UTC)", "end (UTC)", "took", "status",
                                        "exit", "output (last lines)"], steps),
        ("Verification history", ["item", "at (UTC)", "what", "checked", "differences", "resolved"], history),
        ("Differences (latest verification, first 20 per item)", ["item", "kind", "key", "detail"], differences),
        ("Not migrated / not verified", ["item", "what", "why"], limits),
        *([("Source protection (time spent throttled, by item and reason)", ["item", "stage", "why", "waited"],
            protected)] if protected else []),
        *([("Replication slots (logical decoding; dropped by `migrate finish` after cutover)",
            ["item", "slot", "on", "WAL retained", "newest applied commit (UTC)", "read at (UTC)"], slots)]
          if slots else []),
        ("Rollback plan", ["#", "step", "command"], rollback),
        ("Stage timeline", ["item", "stage", "status", "at (UTC)", "took"], timeline),
        (shown, ["at (UTC)", "user", "host", "command", "item", "event", "outcome", "message"], events),
    ]


def _header_lines(data: ReportData) -> list[tuple[str, str]]:
    approval = data.approval
    if approval.get("approved_by"):
        matches = approval.get("plan_matches")
        approved = (f"{approval['approved_by']} at {_when(approval.get('approved_at'))} UTC, plan sha256 "
                    f"{str(approval.get('approved_plan') or '?')[:16]}"
                    + ("" if matches is None else " (the current plan)" if matches
                       else " (NOT the current plan: it was edited since)"))
    else:
        approved = "not approved (no cutover has run with --approved-by)"
    window = data.freeze_window
    if window is None:
        freeze = "no freeze step before the final sync in this plan"
    elif window["seconds"] is None:
        freeze = f"not measured yet ({window['from_step']} start to {window['to_step']} end)"
    else:
        freeze = (f"{window['seconds']:.1f}s: writes frozen from {_when(window['start'])} ({window['from_step']} "
                  f"began) to {_when(window['end'])} UTC ({window['to_step']} ended)")
    lines = [
        ("Component", data.component),
        ("Description", data.description or "-"),
        ("Change", f"{data.change_id or '-'} (owner: {data.change_owner or '-'})"),
        ("Plan", f"{data.plan_path} (sha256 {data.fingerprint[:16]})"),
        ("Cutover", data.cutover.get("status", "idle")),
        ("Approval", approved),
        ("Write-freeze window", freeze),
        ("Generated", f"{data.generated_at:%Y-%m-%d %H:%M:%S} UTC by migrate {data.tool_version}"),
    ]
    if data.masked:
        lines.insert(0, ("Masked", _masked(data)))
    return lines


def _signoff_lines(data: ReportData) -> list[str]:
    roles = data.signoff or ["Sign-off"]
    return [f"{role}: name ______________________  signature ______________  date ____________" for role in roles]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["", f"## {title}", ""]
    if not rows:
        return [*lines, "_none_"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    return lines + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]


def to_markdown(data: ReportData, events_all: bool = False) -> str:
    lines = [f"# Migration report: {data.component}", "", f"**{_md_cell(_verdict(data))}**", ""]
    lines += [f"- **{k}:** {_md_cell(v)}" for k, v in _header_lines(data)]
    for section in _summary(data) + _details(data, events_all):
        lines += _md_table(*section)
    lines += ["", "## Sign-off", ""] + [f"- {_md_cell(line)}" for line in _signoff_lines(data)] + [""]
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:90em}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top;font-size:.9em}
th{background:#f0f0f0}.ok{color:#06682f;font-weight:bold}.bad{color:#b00020;font-weight:bold}
.headline{font-size:1.3em;padding:.5em .8em;border-radius:4px}.headline.ok{background:#e6f4ea}
.headline.bad{background:#fde8ea}.masked{background:#fff4d6;padding:.3em .6em}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dd{margin:0}
pre{margin:0;white-space:pre-wrap;font-size:.85em}.summary{page-break-after:always}"""
_GOOD_PHASES = ("READY FOR CUTOVER", "CUT OVER", "DUAL-RUNNING")


def _html_table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    e = html.escape
    parts = [f"<h2>{e(title)}</h2>"]
    if not rows:
        return [*parts, "<p><i>none</i></p>"]
    parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            css = " class='ok'" if cell in ("PASS", "clean", "ok", "done", "equal", "none") else (
                " class='bad'" if cell in ("FAIL", "failed", "refused", "differences", "DIFFER", "NOT RESOLVED",
                                           "timed_out") else "")
            body = f"<pre>{e(str(cell))}</pre>" if "\n" in str(cell) else e(str(cell))
            cells.append(f"<td{css}>{body}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    return parts


def _bars(data: ReportData) -> list[tuple[str, datetime, datetime, bool]]:
    bars = []
    for item in data.items:
        started: dict[str, datetime] = {}
        for t in item.timeline:
            if t["status"] == "running":
                started[t["stage"]] = t["at"]
            elif t["stage"] in started:
                bars.append((f"{item.name} {t['stage']}", started.pop(t["stage"]), t["at"], t["status"] == "done"))
    return bars[-60:]  # the latest stages: weeks of sync cycles would make the chart unreadable


def to_html(data: ReportData, events_all: bool = False) -> str:
    e = html.escape
    cls = "ok" if data.phase in _GOOD_PHASES else "bad"
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Migration report: "
             f"{e(data.component)}</title><style>{_CSS}</style></head><body><section class='summary'>",
             f"<h1>Migration report: {e(data.component)}</h1>"]
    if data.masked:
        parts.append(f"<p class='masked'>{html.escape(_masked(data))}</p>")
    parts.append(f"<p class='headline {cls}'>{e(_verdict(data))}</p><dl>")
    parts += [f"<dt><b>{e(k)}</b></dt><dd>{e(v)}</dd>" for k, v in _header_lines(data)]
    parts.append("</dl>")
    for section in _summary(data):
        parts += _html_table(*section)
    parts.append("<h2>Sign-off</h2>" + "".join(f"<p>{e(line)}</p>" for line in _signoff_lines(data)))
    parts.append("</section><h2>Charts</h2>")
    parts.append("<h3>Lag over time (seconds behind, per sync cycle)</h3>"
                 + (line_chart("Lag over time", "s", data.lag_series) or "<p><i>no sync cycles yet</i></p>"))
    parts.append("<h3>Throughput over time (rows or files a second, per load and sync)</h3>"
                 + (line_chart("Throughput over time", "/s", data.throughput_series)
                    or "<p><i>nothing moved yet</i></p>"))
    parts.append("<h3>Stage timeline</h3>"
                 + (timeline_bars("Stage timeline", _bars(data)) or "<p><i>no stage finished yet</i></p>"))
    for section in _details(data, events_all):
        parts += _html_table(*section)
    parts.append("</body></html>")
    return "\n".join(parts)


def to_json(data: ReportData) -> str:
    body = jsonable(data)
    body["clean"] = data.clean
    body["report_version"] = REPORT_VERSION
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


def to_junit(data: ReportData) -> str:
    """A test case per item verification, table, blob set, gate and cutover/rollback step, each with `time`;
    a failure carries its evidence."""
    suite = ET.Element("testsuite", name=f"migrate.{data.component}", timestamp=data.generated_at.isoformat())
    failures = 0
    total = 0.0

    def case(name: str, classname: str, seconds: float | None, failure: str | None) -> None:
        nonlocal failures, total
        total += seconds or 0.0
        element = ET.SubElement(suite, "testcase", name=name, classname=f"migrate.{data.component}.{classname}",
                                time=f"{seconds or 0.0:.3f}")
        if failure:
            failures += 1
            ET.SubElement(element, "failure", message=failure.splitlines()[0][:500]).text = failure

    for item in data.items:
        v = item.verification
        verify_seconds = next((t["seconds"] for t in reversed(item.timeline)
                               if t["stage"] == "verify" and t["seconds"] is not None), None)
        keys = ", ".join(f"{d.get('kind', '')} {d.get('key', '')}" for d in (v or {}).get("sample", [])[:20])
        case(f"verify {item.name}", "verify", verify_seconds,
             None if item.verified_clean else ("never verified" if v is None else
                                               f"{v['differences']} difference(s) of {v['checked']} checked: {keys}"))
        failed_stages = [t for t in item.timeline if t["status"] == "failed"]
        case(f"stages {item.name}", "stages", sum(t["seconds"] or 0.0 for t in item.timeline),
             f"{item.stage} is {item.status}" if item.status == "failed" or (failed_stages and item.status != "done")
             else None)
    for count in data.counts:
        same = count.source == count.target and not count.differences
        case(f"{count.unit} {count.item} {count.part}", "tables" if count.unit == "rows" else "blobs", 0.0,
             None if same else f"source {_number(count.source)} vs target {_number(count.target)} {count.unit}; "
             f"{count.differences} difference(s) found by the last verification")
    for gate in data.gates:
        case(f"gate {gate.gate}", "gates", 0.0, None if gate.passed else gate.evidence)
    for run in data.step_runs:
        bad = run.status not in ("done", "running")
        case(f"{run.phase} {run.run}.{run.index + 1} {run.name}", f"{run.phase}_steps", run.seconds,
             f"{run.status} (exit {run.exit_status}): {run.output_excerpt}" if bad else None)
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("time", f"{total:.3f}")
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"
