"""Human rendering of result objects with rich (on stderr). Machine output is the JSON envelope."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from migrate.plan.durations import format_duration
from migrate.units import human_bytes

if TYPE_CHECKING:
    from migrate.commands import CutoverPreview
    from migrate.stages.cutover import CutoverResult
    from migrate.stages.gates import GateResult


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def show_validate(console: Console, result: Any) -> None:
    for f in result.files:
        if f.ok:
            console.print(f"[green]ok[/]   {escape(str(f.file))} ({escape(f.component)})", highlight=False)
        for problem in f.problems:
            console.print(problem, highlight=False, markup=False)
    bad = sum(len(f.problems) for f in result.files)
    console.print(f"{len(result.files)} plan(s), {bad} problem(s)", highlight=False)


def show_plan(console: Console, result: Any) -> None:
    table = _table(f"Plan for {result.component} (dry-run: nothing was written)",
                   "item", "kind", "create", "update", "delete", "unchanged", "size", "estimate")
    for p in result.previews:
        table.add_row(p.item, p.kind, f"{p.create:,} {p.units}", f"{p.update:,}", f"{p.delete:,}",
                      f"{p.unchanged:,}", human_bytes(p.bytes) if p.bytes else "-",
                      format_duration(p.estimate_seconds))
    console.print(table)
    for p in result.previews:
        for line in p.details:
            console.print(f"  {p.item}: {line}", highlight=False, markup=False)
        for entry in p.inventory:
            detail = f" ({entry['detail']})" if entry["detail"] else ""
            console.print(f"  {p.item}: {entry['kind']} {entry['name']}: {entry['fate']}{detail}",
                          highlight=False, markup=False)
        for line in p.warnings:
            console.print(f"  [yellow]warning[/] {escape(p.item)}: {escape(line)}", highlight=False)
        for line in p.problems:
            console.print(f"  [red]problem[/] {escape(p.item)}: {escape(line)}", highlight=False)
    if result.azure:
        show_azure(console, result.azure)
    console.print("Cutover steps: " + " → ".join(result.cutover_steps), highlight=False)
    _warnings(console, result.warnings)
    if result.problems:
        console.print(f"[red]{len(result.problems)} check(s) failed[/]: fix them before `migrate run`.")
    else:
        console.print("Changes pending." if result.changes else "Nothing to do: source and target agree.")


def show_azure(console: Console, checks: list[dict[str, Any]]) -> None:
    table = _table("Azure preflight", "resource", "check", "result", "evidence / what to do")
    colour = {"pass": "green", "warn": "yellow", "fail": "red"}
    for c in checks:
        text = c["evidence"] + (f" — fix: {c['fix']}" if c.get("fix") else "")
        table.add_row(c["target"], c["name"], f"[{colour.get(c['status'], 'white')}]{c['status']}[/]", text)
    console.print(table)


def show_run(console: Console, result: Any) -> None:
    table = _table(f"Run of {result.component}", "item", "kind", "stages run", "already done", "verify", "took")
    for i in result.items:
        verify = "-" if i.verification is None else (
            f"[green]clean[/] ({i.verification.checked:,} checked)" if i.verification.clean
            else f"[red]{len(i.verification.differences)} difference(s)[/]")
        table.add_row(i.item, i.kind, ", ".join(f"{s.stage}" + ("" if s.ok and not s.problems else " [red](failed)[/]")
                                                for s in i.stages) or "-",
                      ", ".join(i.skipped) or "-", verify, format_duration(i.seconds))
    console.print(table)
    for i in result.items:
        for s in i.stages:
            if s.summary:
                console.print(f"  {i.item} {s.stage}: {s.summary}", highlight=False, markup=False)
        for problem in i.problems:
            console.print(f"  [red]problem[/] {escape(i.item)}: {escape(problem)}", highlight=False)
        if i.verification is not None:
            _differences(console, i.verification.differences)
    _warnings(console, result.warnings)


def show_worker(console: Console, result: Any) -> None:
    syncing = any(i.synced for i in result.items)
    table = _table(f"Worker {result.owner}", "item", "claimed", "done", "compared" if syncing else "rows",
                   "verified", "refused", "finished the load", "sync cycle" if syncing else "verification")
    for i in result.items:
        table.add_row(i.item, str(i.claimed), str(i.done), f"{i.compared if syncing else i.units:,}",
                      f"{i.checked:,}", str(len(i.refused)), "yes" if i.finished_stage else "-",
                      (i.synced if syncing else i.verification) or "-")
    console.print(table)
    for i in result.items:
        for message in i.refused:
            console.print(f"  {i.item}: {message}", highlight=False, markup=False)
    for failure in result.failed:
        console.print(f"  [red]failed[/] {escape(failure)}", highlight=False)
    for found in result.differences:
        console.print(f"  [red]differences[/] {escape(found)}", highlight=False)


def _differences(console: Console, differences: list[Any], limit: int = 50) -> None:
    for d in differences[:limit]:
        detail = f" ({escape(d.detail)})" if d.detail else ""
        console.print(f"  [red]{d.kind}[/] {escape(d.item)}: {escape(d.key)}{detail}", highlight=False)
    if len(differences) > limit:
        console.print(f"  ... and {len(differences) - limit} more (use --json for all)")


def show_verify(console: Console, result: Any) -> None:
    for r in result.results:
        state = "[green]clean[/]" if r.clean else f"[red]{r.found} difference(s)[/]"
        console.print(f"{r.item}: {r.checked:,} checked, {state}", highlight=False)
        _differences(console, r.differences)


def show_sync_cycle(console: Console, cycle: int, results: list[Any]) -> None:
    for r in results:
        lag = "unknown" if r.lag_seconds is None else format_duration(r.lag_seconds)
        name = r.item.removesuffix(".reverse") + (" (reverse: target → source)" if r.item.endswith(".reverse") else "")
        console.print(f"{_clock()} cycle {cycle} {escape(name)}: {r.created} created, {r.updated} updated, "
                      f"{r.deleted} deleted, lag {lag}", highlight=False)
        for problem in r.problems:
            console.print(f"  [red]problem[/] {escape(problem)}", highlight=False)


def show_sync_skipped(console: Console, cycle: int, why: str) -> None:
    console.print(f"{_clock()} [yellow]{escape(why)}[/]", highlight=False)


def _clock() -> str:
    """The local time of day, for lines a long `sync --watch` prints."""
    from datetime import datetime

    return datetime.now().strftime("%H:%M:%S")


def show_lock_wait(console: Console, holder: Any, waited: float, timeout: float) -> None:
    who = holder.describe() if holder is not None else "another runner"
    console.print(f"[yellow]waiting for the plan's lock ({waited:.0f}s of {timeout:g}s): held by {escape(who)}[/]",
                  highlight=False)


def show_status(console: Console, result: Any) -> None:
    table = _table(f"Status of {result.component}", "item", "kind", "stage", "status", "load progress", "lag",
                   "last verification")
    for i in result.items:
        progress = f"{i.load_chunks_done:,}/{i.load_chunks_total:,} chunks" if i.load_chunks_total else "-"
        v = i.last_verification
        if v is None:
            verified = "never"
        else:
            verdict = "[green]clean[/]" if v["clean"] else f"[red]{v['differences']} diff[/]"
            verified = f"{verdict} at {v['at'][:19]}"
        lag = "-" if i.lag_seconds is None else format_duration(i.lag_seconds)
        if i.reverse_lag_seconds is not None:
            lag = f"reverse {format_duration(i.reverse_lag_seconds)}"
        table.add_row(i.item, i.kind, i.stage, i.status, progress, lag, verified)
    console.print(table)
    for i in result.items:
        if i.throttle:
            t = i.throttle
            limits = ", ".join(x for x in (
                "paused" if t["paused"] else "",
                f"{t['rows_per_second']:,.0f} rows/s" if t["rows_per_second"] else "",
                f"{human_bytes(t['bytes_per_second'])}/s" if t["bytes_per_second"] else "",
                f"{t['max_connections']} connections" if t["max_connections"] else "") if x)
            console.print(f"{i.item}: throttled to {limits or 'its verify limit'} ({t['why']})", highlight=False,
                          markup=False)
        for s in i.work:
            rate = f", {s['units_per_second']:,.0f} units/s" if s["units_per_second"] else ""
            eta = f", ETA {format_duration(s['eta_seconds'])}" if s["eta_seconds"] is not None else ""
            failed = f", {s['failed']} failed" if s["failed"] else ""
            console.print(f"{i.item}: {s['stage']} by workers: {s['done']:,}/{s['tasks']:,} task(s) done, "
                          f"{s['units']:,} units{rate}{failed}{eta}", highlight=False, markup=False)
        for w in i.workers:
            leased = f", {w['leased']} leased until {str(w['lease_until'])[11:19]}" if w["leased"] else ""
            verified = f", {w['verified']:,} verified" if w.get("verified") else ""
            synced = f", {w['synced']:,} compared by sync" if w.get("synced") else ""
            rate = f", {w['units_per_second']:,.0f} units/s" if w.get("units_per_second") else ""
            console.print(f"{i.item}: worker {w['owner']}: {w['done']:,} task(s) done ({w['units']:,} units"
                          f"{verified}{synced}{rate}){leased}", highlight=False, markup=False)
        for seen in (i.slot, i.reverse_slot):
            if seen:
                held = human_bytes(seen["retained_bytes"]) if "retained_bytes" in seen else "not read yet"
                console.print(f"{i.item}: replication slot {seen['slot']} on {seen['source']}: {held} of WAL "
                              f"retained (at {str(seen.get('read_at') or seen.get('created'))[:19]}); "
                              "`migrate finish` drops it after cutover", highlight=False, markup=False)
    console.print(f"Cutover: {result.cutover.get('status', 'idle')}; authoritative: the {result.authoritative}"
                  + (" (reverse replication: migrate sync copies target → source)"
                     if result.authoritative == "target" and result.cutover.get("status") == "done" else ""),
                  highlight=False)
    if result.lock:
        console.print(f"Locked by {result.lock.describe()}", highlight=False, markup=False)
    _warnings(console, result.warnings)


def show_estate(console: Console, result: Any) -> None:
    """One row per component, most in need of attention first."""
    table = _table(f"Estate: {result.folder}", "component", "state", "lag", "last verification", "gates",
                   "cutover", "plan")
    for row in result.components:
        colour = "green" if row.phase in ("READY FOR CUTOVER", "CUT OVER", "DUAL-RUNNING") else "red"
        table.add_row(escape(row.component), f"[{colour}]{escape(row.headline)}[/]", row.lag,
                      escape(row.last_verification), escape(row.gates), row.cutover, escape(row.plan))
    console.print(table)


def show_gates(console: Console, gates: list[GateResult]) -> None:
    table = _table("Cutover gates", "gate", "result", "evidence")
    for g in gates:
        table.add_row(g.gate, "[green]pass[/]" if g.passed else "[red]FAIL[/]", escape(g.evidence))
    console.print(table)


def show_step_list(console: Console, title: str, steps: list[str]) -> None:
    console.print(f"{title}:", highlight=False)
    for number, name in enumerate(steps, 1):
        console.print(f"  {number}. {escape(name)}", highlight=False)


def show_cutover_preview(console: Console, preview: CutoverPreview) -> None:
    """What a cutover would do, shown before the question (the live display is stopped by then)."""
    if preview.resuming_at is not None:
        console.print(f"An interrupted cutover resumes at step {preview.resuming_at + 1}; its gates are not "
                      "checked again (the first attempt's evidence and approval are kept):", highlight=False)
    if preview.gates:
        show_gates(console, preview.gates)
    if preview.resuming_at is not None or all(g.passed for g in preview.gates):
        show_step_list(console, "Cutover steps to run", preview.steps)


def show_cutover(console: Console, result: CutoverResult) -> None:
    if result.gates:
        show_gates(console, result.gates)
    if result.resumed_at is not None:
        console.print(f"Resumed an interrupted cutover at step {result.resumed_at + 1}.")
    for s in result.steps:
        colour = "green" if s.status == "done" else "red"
        orphan = f" (after an interrupted run: {s.orphan})" if s.orphan else ""
        console.print(f"  [{colour}]{s.status}[/] {escape(s.name)}" + (f": {escape(s.detail)}" if s.detail else "")
                      + orphan, highlight=False)
    for s in result.rollback:
        colour = "green" if s.status == "done" else "red"
        console.print(f"  rollback [{colour}]{s.status}[/] {escape(s.name)}", highlight=False)
    if result.message:
        console.print(result.message, highlight=False)


def _warnings(console: Console, warnings: list[str]) -> None:
    for w in warnings:
        console.print(f"[yellow]warning[/] {escape(w)}", highlight=False)


def show_throttle(console: Console, result: Any) -> None:
    if result.message:
        console.print(result.message, highlight=False, markup=False)
    table = _table(f"Throttle of {result.component}", "item", "rows/s", "bytes/s", "connections", "paused", "why")
    for name, e in result.items.items():
        table.add_row(escape(name), _limit(e["rows_per_second"]), _limit(e["bytes_per_second"], True),
                      _limit(e["max_connections"]), "yes" if e["paused"] else "no", escape(e["why"]))
    console.print(table)


def _limit(value: float | None, size: bool = False) -> str:
    if value is None:
        return "-"
    return f"{human_bytes(value)}/s" if size else f"{value:,.0f}"

