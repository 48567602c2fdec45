"""The `migrate` command line: parse arguments, call `migrate.commands`, render the result. Nothing else.

Human output and progress go to stderr; `--json` prints one versioned envelope on stdout. Exit codes:
0 success, 1 operational error, 2 invalid plan or usage, 3 differences found or a gate refused,
4 (`plan --detailed-exitcode`) changes pending.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup

from migrate import interrupt, views
from migrate.errors import (
    EXIT_OPERATIONAL,
    GateRefused,
    MigrateError,
    PlanError,
    RollbackRefused,
    UsageError,
    VerificationFailed,
)
from migrate.plan.durations import parse_duration
from migrate.progress import ConsoleProgress
from migrate.redact import redact
from migrate.results import envelope, jsonable

# The `migrate` process starts without the cyclic garbage collector (`main`): the SDKs' imports make hundreds of
# thousands of objects that live as long as the process, and collecting while they are made walks them again
# and again (0.06 s of every command, measured). `_collector_on` freezes them out of its way and turns it back
# on before any work; the last collection at exit is skipped the same way. Not when the CLI runs in-process.
_process = {"own": False}

def _lazy_module(name: str) -> Any:
    """`name` as a module that is executed on first attribute access (importlib's LazyLoader)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.loader is not None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING:
    from migrate import commands
else:  # imported when a verb first needs it: `--help`, `--version` and `validate` start without the engines
    commands = _lazy_module("migrate.commands")

EXIT_CODES = ("Exit codes: 0 success, 1 operational error, 2 invalid plan or usage, 3 differences found or a "
              "gate refused, 4 changes pending (plan --detailed-exitcode), 130 interrupted (rerun to resume).")


def _plain_words(params: list[Any]) -> list[Any]:
    """Arguments in the plan's words (`PLAN`, `PATH...`) instead of typer's `{PLAN}` and `<list[Path]>`."""
    for param in params:
        if isinstance(param, TyperArgument):
            name = param.metavar or param.name.upper()
            usage = f"{name}..." if param.nargs != 1 else name
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            param._usage_display_name = lambda usage=usage: usage  # type: ignore[method-assign,misc]
    return params


def _epilog(examples: list[str]) -> str:
    """Examples one per line (click's \\b keeps them unwrapped), then the exit codes."""
    return "\b\nExamples:\n" + "\n".join(f"  $ {e}" for e in examples) + "\n\n" + EXIT_CODES


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_words(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_words(super().get_params(ctx))


app = typer.Typer(
    name="migrate", cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Move an EPR component to Azure in staged, verified, resumable steps. See README.md.",
    epilog=_epilog([f"migrate {e}" for e in (
        "validate plans/", "plan plans/ppm-documents.yaml", "run plans/ppm-documents.yaml", "status plans/",
        "cutover --check plans/ppm-documents.yaml", "COMMAND --help")]),
)


EXAMPLES = {  # shown at the foot of each verb's help, one per line
    "validate": ["migrate validate plans/", "migrate validate --skip-env --json plans/ppm-documents.yaml"],
    "plan": ["migrate plan plans/ppm-documents.yaml",
             "migrate plan --detailed-exitcode --json PLAN   (CI: 4 = changes pending)"],
    "run": ["migrate run PLAN", "migrate run PLAN --until load --item letters", "migrate run PLAN --lock-timeout 5m",
            "migrate run PLAN --workers 4   (the load by four local workers; PostgreSQL journal)"],
    "sync": ["migrate sync PLAN", "migrate sync PLAN --watch",
             "migrate sync PLAN --watch --json   (one JSON line per cycle)"],
    "verify": ["migrate verify PLAN", "migrate verify PLAN --deep --item letters"],
    "status": ["migrate status PLAN", "migrate status plans/   (one row per plan)", "migrate status PLAN --json"],
    "cutover": ["migrate cutover --check PLAN", "migrate cutover PLAN --approved-by CAB-1234 --yes"],
    "rollback": ["migrate rollback PLAN", "migrate rollback PLAN --yes"],
    "report": ["migrate report PLAN --format html", "migrate report PLAN --format junit --out -",
               "migrate report plans/   (the estate)"],
    "unlock": ["migrate unlock PLAN", "migrate unlock PLAN --force"],
    "finish": ["migrate finish PLAN", "migrate finish PLAN --yes"],
    "throttle": ["migrate throttle PLAN   (the effective limits and why)", "migrate throttle PLAN --pause",
                 "migrate throttle PLAN --rows-per-second 2000", "migrate throttle PLAN --bytes-per-second 50MiB",
                 "migrate throttle PLAN --clear"],
    "abandon": ["migrate abandon PLAN", "migrate abandon PLAN --yes"],
    "worker": ["migrate worker PLAN   (one of N runners; the plan's state is a PostgreSQL journal)",
               "migrate worker PLAN --shard 2/4 --until load", "migrate worker PLAN --shard /4   "
               "(i from JOB_COMPLETION_INDEX)"],
    "schema": ["migrate schema > plan.schema.json", "migrate schema --report"],
    "demo": ["migrate demo", "migrate demo --workdir /tmp/demo --patients 20000",
             "migrate demo --workdir tour --prepare-only   (an estate to move by hand)"],
}


def _command() -> Callable[[Callable[..., Any]], Any]:
    """A verb with its examples and the exit codes at the foot of its help."""

    def register(verb: Callable[..., Any]) -> Any:
        epilog = _epilog(EXAMPLES[verb.__name__])
        return app.command(cls=_Command, epilog=epilog)(verb)

    return register
err = Console(stderr=True, soft_wrap=True, emoji=False)  # `path:100:5:` is not the 💯 emoji
if not err.is_terminal:  # CI logs and pipes: wide enough that tables do not fold every cell
    err.width = 160
_debug = {"on": False}
_quiet = {"on": False}  # -q: nothing on success but the exit code; failures as always
_ndjson = {"on": False}  # sync --watch --json prints one line per cycle: the closing envelope is one line too

PlanArg = Annotated[Path, typer.Argument(help="The plan file (YAML).", show_default=False, metavar="PLAN")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine output (JSON envelope) on stdout.")]
ItemOpt = Annotated[list[str] | None, typer.Option("--item", metavar="ITEM", help="Only this item (repeatable).")]
LockTimeoutOpt = Annotated[str | None, typer.Option(
    "--lock-timeout", metavar="DURATION",
    help="Wait up to this long (30s, 5m) for the plan's lock when another run holds it, instead of failing.")]


MassDeleteOpt = Annotated[bool, typer.Option(
    "--allow-mass-delete", help="Let a cycle delete more than half of a table or blob set (over 100 keys), or "
                                "everything from an empty source. Refused without it.")]


def _json_line(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def _lock_wait(timeout: str | None) -> commands.LockWait:
    """The --lock-timeout wait, saying on stderr who holds the lock (first try, then every 10 s)."""
    if timeout is None:
        return commands.LockWait()
    try:
        seconds = parse_duration(timeout)
    except ValueError as exc:
        raise UsageError(f"--lock-timeout: {exc}") from None
    said = {"at": -10.0}

    def on_wait(holder: Any, waited: float) -> None:
        if waited - said["at"] >= 10:
            said["at"] = waited
            views.show_lock_wait(err, holder, waited, seconds)

    return commands.LockWait(seconds, on_wait)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"migrate {version('migrate')}")
        raise typer.Exit(0)


@app.callback()
def _main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
          quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress and nothing on success (the "
                                                                     "exit code says it); failures as always.")]
          = False,
          verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, metavar="", show_default=False,
                                               help="Say each stage and event as it happens (-vv: debug logs).")]
          = 0,
          _version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                 help="Print the version and exit.")] = False) -> None:
    if quiet and verbose:
        raise typer.BadParameter("-q and -v contradict each other: choose one")
    _debug["on"] = debug
    _quiet["on"] = quiet
    interrupt.install()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    level = logging.DEBUG if debug or verbose > 1 else logging.WARNING
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if verbose == 1 and not debug:
        logging.getLogger("migrate").setLevel(logging.INFO)
    if not debug:
        logging.getLogger("azure").setLevel(logging.ERROR)


def _debug_traceback(exc: BaseException) -> None:
    """With --debug, the traceback on stderr, redacted like everything else (a driver's message can hold a
    secret, such as a host name from ${VAR})."""
    if _debug["on"]:
        import traceback

        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
        sys.stderr.flush()


def _collector_on(engines: bool) -> None:
    """Import what the verb runs on (`engines`: the plan, journal and stage modules) with the collector still
    off, then freeze every object made so far (kept for good, never walked again) and collect as usual."""
    if not _process["own"] or gc.isenabled():
        return
    if engines:
        commands.session  # noqa: B018 - executes the lazy module now
    gc.freeze()
    gc.enable()


def _execute(command: str, as_json: bool, work: Callable[[ConsoleProgress], Any],
             show: Callable[[Console, Any], None], exit_code: Callable[[Any], int] = lambda r: 0) -> None:
    """Run one verb: map errors to exit codes and one clear message; render the result."""
    result: Any = None
    _collector_on(engines=command not in ("validate", "demo"))
    try:
        with ConsoleProgress(err, enabled=not _quiet["on"]) as progress:
            result = work(progress)
        code = exit_code(result)
        error = None
    except MigrateError as exc:
        _debug_traceback(exc)
        code, error = exc.exit_code, redact(str(exc))
        if isinstance(exc, VerificationFailed | RollbackRefused):
            result = {"differences": exc.differences}
        elif isinstance(exc, GateRefused):
            result = {"refused": exc.reasons}
        elif isinstance(exc, PlanError):
            result = {"problems": [str(p) for p in exc.problems]}
    except KeyboardInterrupt:
        err.print("interrupted: the journal holds what finished; run the same command again to resume")
        raise typer.Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the one place unexpected errors become a message
        _debug_traceback(exc)
        code = EXIT_OPERATIONAL
        error = redact(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)")
    if as_json:
        compact = _ndjson["on"]  # after NDJSON lines, the envelope is one more line
        sys.stdout.write(json.dumps(envelope(command, code, result, error), indent=None if compact else 2,
                                    ensure_ascii=False) + "\n")
    elif error is not None:
        label = "" if error.startswith("internal error") or isinstance(result, dict) and "problems" in result \
            else "error: "
        err.print(f"{label}{error}", highlight=False, markup=False)
    elif not (_quiet["on"] and code == 0):
        show(err, result)
    if _process["own"]:  # the interpreter's last collection would walk every object left (0.1 s, measured)
        gc.freeze()
    raise typer.Exit(code)


@_command()
def validate(paths: Annotated[list[Path], typer.Argument(help="Plan files or folders of them.", metavar="PATH")],
             as_json: JsonOpt = False,
             skip_env: Annotated[bool, typer.Option("--skip-env", help="Do not require ${VAR}s to be set "
                                                    "(lint plans in CI without their secrets).")] = False) -> None:
    """Check plans: schema and meaning; every problem as `path:line:col: key: message` (exit 2)."""
    from migrate.plan.check import validate as check

    _execute("validate", as_json, lambda p: check(paths, require_env=not skip_env),
             views.show_validate, lambda r: r.exit_code)


@_command()
def plan(plan: PlanArg, as_json: JsonOpt = False,
         detailed_exitcode: Annotated[bool, typer.Option("--detailed-exitcode",
                                                         help="Exit 4 when something would change.")] = False
         ) -> None:
    """Dry-run: connect read-only, inventory both sides, show what would move. Writes nothing."""
    _execute("plan", as_json, lambda p: commands.plan(plan, progress=p), views.show_plan,
             lambda r: r.exit_code(detailed_exitcode))


@_command()
def run(plan: PlanArg, as_json: JsonOpt = False, items: ItemOpt = None,
        until: Annotated[str, typer.Option(metavar="STAGE",
                                           help="Stop after this stage: preflight, schema, load or verify.")]
        = "verify", lock_timeout: LockTimeoutOpt = None, allow_mass_delete: MassDeleteOpt = False,
        workers: Annotated[int | None, typer.Option(metavar="N", min=1, max=64,
                                                    help="Load (and verify database items) with N local `migrate "
                                                         "worker` processes (claims in a PostgreSQL journal), then "
                                                         "finish here.")] = None) -> None:
    """preflight → schema → load → verify; resumes whatever an earlier run left unfinished."""
    _execute("run", as_json, lambda p: commands.run(plan, until=until, items=items, progress=p,
                                                    lock_wait=_lock_wait(lock_timeout),
                                                    allow_mass_delete=allow_mass_delete, workers=workers),
             views.show_run, lambda r: r.exit_code)


@_command()
def worker(plan: PlanArg, as_json: JsonOpt = False,
           shard: Annotated[str | None, typer.Option(metavar="i/N", help="Claim this share's tasks first (affinity "
                                                     "only: claims balance the work); `/N` takes i from "
                                                     "JOB_COMPLETION_INDEX.")] = None,
           until: Annotated[str, typer.Option(metavar="STAGE", help="Stop after this stage: preflight, schema, "
                                                                     "load or verify (verify in parts).")] = "load",
           sync: Annotated[bool, typer.Option("--sync", help="Instead: one forward sync cycle, in parts (the "
                                                             "load must be done).")] = False,
           lease: Annotated[str, typer.Option(metavar="DURATION", help="How long a claim lasts without a "
                                                                        "heartbeat.")] = "30s",
           allow_mass_delete: MassDeleteOpt = False) -> None:
    """One of N stateless runners sharing a plan: claims chunks from the PostgreSQL journal until none is pending
    or leased. Exit 0 done, 1 a task failed too often (or a sync cycle had problems), 2 bad usage (a SQLite
    journal), 3 the verification found differences, 130 SIGTERM (its tasks given back)."""
    _execute("worker", as_json, lambda p: commands.worker(plan, shard=shard, until=until, lease=lease, sync=sync,
                                                          allow_mass_delete=allow_mass_delete),
             views.show_worker, lambda r: r.exit_code)


@_command()
def sync(plan: PlanArg, as_json: JsonOpt = False, items: ItemOpt = None,
         watch: Annotated[bool, typer.Option(help="Keep dual-running every dual_run.interval.")] = False,
         cycles: Annotated[int | None, typer.Option(metavar="N", help="With --watch: stop after this many cycles.")]
         = None,
         lock_timeout: LockTimeoutOpt = None, allow_mass_delete: MassDeleteOpt = False) -> None:
    """One incremental catch-up cycle (or keep going with --watch), reporting lag. With --json --watch, one JSON
    line per cycle (NDJSON) as it ends, then the envelope on one line."""
    on_cycle: Callable[[int, Any], None] | None = None
    on_skip: Callable[[int, str], None] | None = None
    if as_json and watch:  # NDJSON: monitoring reads each cycle as it ends
        _ndjson["on"] = True

        def on_cycle(n: int, results: Any) -> None:
            _json_line({"cycle": n, "at": _now(), "results": jsonable(results)})

        def on_skip(n: int, why: str) -> None:
            _json_line({"cycle": n, "at": _now(), "skipped": redact(why)})
    elif not as_json:
        on_cycle = lambda n, results: views.show_sync_cycle(err, n, results)  # noqa: E731
        on_skip = lambda n, why: views.show_sync_skipped(err, n, why)  # noqa: E731
    _execute("sync", as_json, lambda p: commands.sync(plan, watch=watch, max_cycles=cycles, items=items,
                                                      progress=p, on_cycle=on_cycle, on_skip=on_skip,
                                                      lock_wait=_lock_wait(lock_timeout),
                                                      allow_mass_delete=allow_mass_delete),
             lambda c, r: None, lambda r: r.exit_code)


@_command()
def verify(plan: PlanArg, as_json: JsonOpt = False, items: ItemOpt = None,
           deep: Annotated[bool, typer.Option(help="Re-read target bytes instead of trusting stored hashes.")]
           = False, lock_timeout: LockTimeoutOpt = None) -> None:
    """Full verification; lists every difference (exit 3 when any)."""
    _execute("verify", as_json, lambda p: commands.verify(plan, deep=deep, items=items, progress=p,
                                                          lock_wait=_lock_wait(lock_timeout)),
             views.show_verify, lambda r: r.exit_code)


@_command()
def status(plan: PlanArg, as_json: JsonOpt = False) -> None:
    """Stage, progress, lag and last verification per item; for a folder, one row per plan (the estate)."""
    if plan.is_dir():
        _execute("status", as_json, lambda p: commands.estate(plan), views.show_estate)
    else:
        _execute("status", as_json, lambda p: commands.status(plan), views.show_status)


@_command()
def cutover(plan: PlanArg, as_json: JsonOpt = False,
            check: Annotated[bool, typer.Option("--check", help="Evaluate the gates only.")] = False,
            yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
            approved_by: Annotated[str | None, typer.Option(metavar="NAME",
                                                            help="Who approved this change (approval gate).")]
            = None, lock_timeout: LockTimeoutOpt = None) -> None:
    """Evaluate every gate; if all pass, run the cutover steps. Refuses with reasons (exit 3)."""

    def work(progress: ConsoleProgress) -> Any:
        if not check and not yes:
            if not sys.stdin.isatty():
                raise UsageError("cutover needs confirmation: no terminal to ask on, so pass --yes",
                                   hint="`migrate cutover --check PLAN` evaluates the gates without acting")
            preview = commands.cutover_preview(plan, approved_by)
            if preview.status != "done":
                with progress.paused():
                    views.show_cutover_preview(err, preview)
                    if not all(g.passed for g in preview.gates) and preview.status != "running":
                        return commands.cutover(plan, approved_by=approved_by, check_only=True)
                    if not _confirm("Run these cutover steps now?"):
                        return commands.not_confirmed("cutover")
        return commands.cutover(plan, approved_by=approved_by, check_only=check, progress=progress,
                                lock_wait=_lock_wait(lock_timeout))

    _execute("cutover", as_json, work, views.show_cutover)


@_command()
def rollback(plan: PlanArg, as_json: JsonOpt = False,
             force: Annotated[bool, typer.Option("--force", help="Run the switch-back steps although the final "
                                                 "reverse sync failed (its changes stay on the target).")] = False,
             discard: Annotated[bool, typer.Option("--discard-target-changes",
                                                   help="Without reverse_sync: switch back although the target "
                                                        "holds changes the source lacks (they are lost).")] = False,
             yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
             lock_timeout: LockTimeoutOpt = None, allow_mass_delete: MassDeleteOpt = False) -> None:
    """Go back to the source: the target's changes come home first, then the rollback steps. Asks on a
    terminal; else --yes."""

    def work(progress: ConsoleProgress) -> Any:
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError("rollback needs confirmation: no terminal to ask on, so pass --yes")
            steps = commands.rollback_steps(plan)
            with progress.paused():
                views.show_step_list(err, "Rollback steps to run", steps)
                if not _confirm("Roll back now?"):
                    return commands.not_confirmed("rollback")
        return commands.rollback(plan, force=force, discard_target_changes=discard, progress=progress,
                                 lock_wait=_lock_wait(lock_timeout), allow_mass_delete=allow_mass_delete)

    _execute("rollback", as_json, work, views.show_cutover)


def _confirm(question: str) -> bool:
    """Ask yes/no on the terminal (default no); end of input counts as no."""
    try:
        return typer.confirm(question, default=False, err=True)
    except typer.Abort:
        return False


@_command()
def report(plan: PlanArg, as_json: JsonOpt = False,
           fmt: Annotated[str, typer.Option("--format", metavar="FORMAT", help="md, html, json or junit.")] = "md",
           out: Annotated[Path | None, typer.Option(metavar="FILE",
                                                    help="Where to write it; - for standard output (default: "
                                                         "reports/ beside the plan).")]
           = None,
           mask: Annotated[bool | None, typer.Option("--mask-identifiers/--no-mask-identifiers",
                                                     help="Replace keys and file names by stable short hashes "
                                                          "(default: the plan's change.mask_identifiers).")] = None,
           events: Annotated[str, typer.Option(metavar="summary|all",
                                               help="summary (clean sync cycles folded) or all.")] = "summary",
           ) -> None:
    """Write a change-board (md/html) or CI (json/junit) report from the journal; for a folder of plans, the
    estate report (md, html or json)."""
    from migrate.reports.render import FORMATS

    def work(progress: ConsoleProgress) -> Any:
        if fmt not in FORMATS:
            raise UsageError(f"--format takes one of {', '.join(FORMATS)}, not {fmt!r}")
        if events not in ("summary", "all"):
            raise UsageError(f"--events takes summary or all, not {events!r}")
        if as_json and out is not None and str(out) == "-":
            raise UsageError("--json and --out - both write to standard output: choose one")
        return commands.report(plan, fmt, out, mask=mask, events_all=events == "all")

    _execute("report", as_json, work,
             lambda c, r: c.print(f"wrote {'the report to standard output' if str(r.path) == '-' else r.path} "
                                  f"({'clean' if r.clean else 'NOT clean'})", highlight=False, markup=False))


@_command()
def unlock(plan: PlanArg, as_json: JsonOpt = False,
           force: Annotated[bool, typer.Option(help="Break a live lock held by another runner.")] = False) -> None:
    """Release a stale lock (`--force` to break another owner's)."""
    _execute("unlock", as_json, lambda p: commands.unlock(plan, force=force),
             lambda c, r: c.print(r.message, highlight=False))


@_command()
def throttle(plan: PlanArg, as_json: JsonOpt = False,
             pause: Annotated[bool, typer.Option("--pause", help="Hold every runner of the plan (they keep their "
                                                 "lock and resume where they were).")] = False,
             resume: Annotated[bool, typer.Option("--resume", help="Undo --pause.")] = False,
             rows_per_second: Annotated[float | None, typer.Option("--rows-per-second", metavar="N",
                                                                   help="Limit rows per second, per item.")] = None,
             bytes_per_second: Annotated[str | None, typer.Option("--bytes-per-second", metavar="SIZE",
                                                                  help="Limit bytes per second, per item (50MiB).")]
             = None,
             clear: Annotated[bool, typer.Option("--clear", help="Drop the manual override: the plan's limits and "
                                                 "schedule apply.")] = False) -> None:
    """Slow down, pause or resume the running work of a plan without restarting it; with no option, show the
    effective limits of each item and why. Runners pick the change up within two seconds."""

    def work(progress: ConsoleProgress) -> Any:
        if pause and resume:
            raise UsageError("--pause and --resume contradict each other: choose one")
        if clear and (pause or rows_per_second or bytes_per_second):
            raise UsageError("--clear drops every override: give it alone")
        size = None
        if bytes_per_second is not None:
            from migrate.plan.model import parse_size

            try:
                size = int(parse_size(bytes_per_second))  # type: ignore[call-overload]
            except ValueError as exc:
                raise UsageError(f"--bytes-per-second: {exc}") from None
        if rows_per_second is not None and rows_per_second <= 0:
            raise UsageError("--rows-per-second takes a positive number (use --pause to stop)")
        return commands.throttle(plan, pause=pause, resume=resume, rows_per_second=rows_per_second,
                                 bytes_per_second=size, clear=clear)

    _execute("throttle", as_json, work, views.show_throttle)


def _release(verb: str, plan: Path, as_json: bool, yes: bool, lock_timeout: str | None) -> None:
    def work(progress: ConsoleProgress) -> Any:
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"{verb} needs confirmation: no terminal to ask on, so pass --yes")
            objects = commands.replication_objects(plan)
            if not objects:
                return commands.ReleaseResult(verb, message="no replication slot or publication to drop")
            with progress.paused():
                views.show_step_list(err, "Replication slots and publications to drop", objects)
                if not _confirm("Drop them now?"):
                    return commands.ReleaseResult(verb, message=f"{verb} not confirmed: nothing was dropped")
        return commands.release(plan, verb, lock_wait=_lock_wait(lock_timeout))

    _execute(verb, as_json, work, lambda c, r: c.print(r.message, highlight=False, markup=False))


YesOpt = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]


@_command()
def finish(plan: PlanArg, as_json: JsonOpt = False, yes: YesOpt = False, lock_timeout: LockTimeoutOpt = None) -> None:
    """After a completed cutover: drop the replication slots and publications logical decoding kept on the
    sources (they hold WAL until dropped). Asks on a terminal; else --yes."""
    _release("finish", plan, as_json, yes, lock_timeout)


@_command()
def abandon(plan: PlanArg, as_json: JsonOpt = False, yes: YesOpt = False, lock_timeout: LockTimeoutOpt = None
            ) -> None:
    """Give up a migration that will not go ahead: drop its replication slots and publications on the sources.
    The target and the journal are left as they are. Asks on a terminal; else --yes."""
    _release("abandon", plan, as_json, yes, lock_timeout)


@_command()
def schema(report: Annotated[bool, typer.Option("--report", help="The JSON report's schema instead.")] = False,
           ) -> None:
    """Print the JSON Schema of the plan format (for editors and CI), or with --report of the JSON report."""
    sys.stdout.write(json.dumps(commands.report_schema() if report else commands.plan_schema(), indent=2) + "\n")


@_command()
def demo(as_json: JsonOpt = False,
         workdir: Annotated[Path, typer.Option(metavar="DIR", help="Where to build the synthetic estate.")]
         = Path("demo-work"),
         patients: Annotated[int, typer.Option(metavar="N", help="How many synthetic patients.")] = 2000,
         letters: Annotated[int, typer.Option(metavar="N", help="How many synthetic letter files.")] = 300,
         prepare_only: Annotated[bool, typer.Option("--prepare-only", help="Build the estate and its plan only; "
                                                    "move it yourself (the README's tour).")] = False) -> None:
    """Build a synthetic EPR estate and migrate it end to end on the embedded default (SQLite + folders)."""
    from migrate.demo import run_demo

    _execute("demo", as_json, lambda p: run_demo(workdir, patients=patients, letters=letters, progress=p,
                                                 say=lambda m: err.print(m, highlight=False),
                                                 prepare_only=prepare_only),
             lambda c, r: c.print(r.summary(), highlight=False), lambda r: r.exit_code)


def main() -> None:
    _process["own"] = True
    gc.disable()  # until `_collector_on`, see `_process`
    app(prog_name="migrate")  # also under `python -m migrate`, so help and completion name the command


if __name__ == "__main__":
    main()
