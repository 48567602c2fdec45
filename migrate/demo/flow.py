"""`migrate demo`: validate → plan → run → clinical writes → sync → verify → cutover → report."""

from __future__ import annotations

import random
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from migrate import commands
from migrate.demo.estate import EstateSize, build_database, build_letters, simulate_clinical_writes
from migrate.errors import EXIT_DIFFERENCES, EXIT_OK, MigrateError
from migrate.stages.engine import Progress
from migrate.state.journal import now

MARKER = ".migrate-demo"  # only a folder holding this is ever wiped by the demo

RUNBOOK = """# PPM+ demo cutover runbook

1. Freeze writes on premises (`freeze.sh` puts the on-premises application in read-only mode).
2. migrate runs the final sync to zero lag and the final verification.
3. Switch the application to Azure (`switch.sh` repoints the connection settings).

Rollback: `switch-back.sh` points the application back on premises. Remove `postpone-cutover` to allow
the cutover; create it to postpone.
"""
SCRIPTS = {
    "freeze.sh": 'echo "frozen at $(date -u +%FT%TZ)" > "$MIGRATE_COMPONENT.frozen"\necho "writes frozen"\n',
    "switch.sh": 'echo azure > active-site\necho "application now reads from azure/"\n',
    "switch-back.sh": 'echo onprem > active-site\nrm -f "$MIGRATE_COMPONENT.frozen"\necho "back on premises"\n',
}


@dataclass
class DemoResult:
    workdir: Path
    plan: Path
    estate: EstateSize
    reports: dict[str, Path] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    seconds: float = 0.0
    clean: bool = False
    prepared_only: bool = False  # --prepare-only: the estate and its plan, nothing moved

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.clean or self.prepared_only else EXIT_DIFFERENCES

    def summary(self) -> str:
        e = self.estate
        if self.prepared_only:
            return "\n".join([
                f"Estate ready in {self.workdir}: {e.patients:,} patients, {e.encounters:,} encounters, "
                f"{e.observations:,} observations, {e.letters:,} letters ({e.letter_bytes / 1048576:.1f} MiB); "
                "nothing moved yet",
                f"  plan:   {self.plan}",
                f"  next:   migrate plan {self.plan}   (then run, sync, verify, cutover: see the README's tour)",
            ])
        lines = [
            "",
            f"Demo finished in {self.seconds:.1f}s: {'all verified, cutover complete' if self.clean else 'NOT clean'}",
            f"  moved {e.patients:,} patients, {e.encounters:,} encounters, {e.observations:,} observations, "
            f"{e.letters:,} letters ({e.letter_bytes / 1048576:.1f} MiB)",
            f"  plan:   {self.plan}",
            f"  report: {self.reports.get('md')}",
            f"          {self.reports.get('html')} (also .json and JUnit .xml beside it)",
            f"  try:    migrate status {self.plan}",
        ]
        return "\n".join(lines)


def _prepare(workdir: Path) -> None:
    if workdir.exists():
        if not (workdir / MARKER).exists() and any(workdir.iterdir()):
            raise MigrateError(f"{workdir} exists and was not made by the demo; refusing to overwrite it",
                               hint="pass --workdir with a new or empty folder")
        shutil.rmtree(workdir)
    (workdir / "runbooks").mkdir(parents=True)
    (workdir / MARKER).write_text("made by `migrate demo`; safe to delete\n")
    (workdir / "plan.yaml").write_text(resources.files("migrate.demo").joinpath("plan.yaml").read_text())
    (workdir / "runbooks" / "ppm-demo.md").write_text(RUNBOOK)
    for name, body in SCRIPTS.items():
        script = workdir / "runbooks" / name
        script.write_text("#!/bin/sh\nset -eu\n" + body)
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    (workdir / "azure").mkdir()


def prepare_estate(workdir: Path, patients: int = 2000, letters: int = 300,
                   seed: int = 20261128) -> tuple[Path, EstateSize]:
    """Build the synthetic estate, the plan and its runbook in `workdir`; return the plan's path."""
    workdir = workdir.resolve()
    rng = random.Random(seed)
    _prepare(workdir)
    (workdir / "onprem").mkdir()
    estate = build_database(f"sqlite:///{workdir / 'onprem' / 'ppm.db'}", patients, rng)
    files = build_letters(workdir / "onprem" / "letters", letters, rng)
    estate.letters, estate.letter_bytes = files.letters, files.letter_bytes
    return workdir / "plan.yaml", estate


def run_demo(workdir: Path, patients: int = 2000, letters: int = 300, seed: int = 20261128,
             progress: Progress | None = None, say: Callable[[str], None] = lambda m: None,
             prepare_only: bool = False) -> DemoResult:
    """Build the synthetic estate in `workdir` and migrate it end to end; return where the reports are.
    With `prepare_only`, build the estate and its plan and stop (the README's tour moves it by hand)."""
    started = time.monotonic()
    say(f"{'' if prepare_only else '1/8 '}building a synthetic EPR estate in {workdir}")
    plan, estate = prepare_estate(workdir, patients, letters, seed)
    workdir = plan.parent
    rng = random.Random(seed + 1)
    result = DemoResult(workdir=workdir, plan=plan, estate=estate, prepared_only=prepare_only)
    if prepare_only:
        result.seconds = time.monotonic() - started
        return result

    def step(text: str) -> None:
        result.steps.append(text)
        say(text)

    checked = commands.validate([plan])
    if checked.exit_code:
        raise MigrateError("the demo plan does not validate: " + "; ".join(checked.files[0].problems))
    step("2/8 validate: plan is valid")
    preview = commands.plan(plan, progress=progress)
    step("3/8 plan (dry-run): " + ", ".join(f"{p.item} {p.create:,} {p.units} to create" for p in preview.previews))
    ran = commands.run(plan, progress=progress)
    if ran.exit_code:
        raise MigrateError(f"the demo run did not finish cleanly (exit {ran.exit_code})")
    step("4/8 run: preflight, schema, load and verify done for " + ", ".join(i.item for i in ran.items))
    writes = simulate_clinical_writes(f"sqlite:///{workdir / 'onprem' / 'ppm.db'}", workdir / "onprem" / "letters",
                                      rng, now())
    step(f"5/8 clinical writes on premises: {writes.inserted} observations added, {writes.updated} rows corrected, "
         f"{writes.deleted} deleted; {writes.files_added} letter added, {writes.files_changed} re-scanned, "
         f"{writes.files_deleted} withdrawn")
    synced = commands.sync(plan, progress=progress)
    step("6/8 sync: " + "; ".join(f"{r.item} +{r.created} ~{r.updated} -{r.deleted}" for r in synced.results))
    verified = commands.verify(plan, progress=progress)
    if not verified.clean:
        raise MigrateError("verification after sync found differences: "
                           + "; ".join(f"{d.kind} {d.key}" for r in verified.results for d in r.differences[:5]))
    step(f"7/8 verify: {sum(r.checked for r in verified.results):,} rows and files compared by checksum, clean")
    done = commands.cutover(plan, approved_by="demo (synthetic change)", progress=progress)
    step(f"8/8 cutover: gates passed; {len(done.steps)} steps done ({', '.join(s.name for s in done.steps)})")
    for fmt in ("md", "html", "json", "junit"):
        result.reports[fmt] = commands.report(plan, fmt).path
    result.clean = verified.clean and done.status == "done"
    result.seconds = time.monotonic() - started
    return result
