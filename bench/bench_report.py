"""Benchmark: the board's report over a large journal: a blob item with --files paths recorded and --cycles
`sync --watch` cycles logged (one in a hundred copies something). Times building the report data, masked and
not, and rendering each format; prints each format's size (bounded however long dual-running went on).

    .venv/bin/python bench/bench_report.py [--files 200000] [--cycles 40320]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from migrate.commands import session
from migrate.reports.build import build_report
from migrate.reports.render import FORMATS, render
from migrate.state.journal import Journal, events_t, now

PLAN = """version: 1
component: bench-report
connections:
  src: {path: src}
  dst: {path: dst}
blobs:
  - {name: letters, source: src, target: dst}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--cycles", type=int, default=40_320)  # two weeks every 30 s
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.yaml"
        plan.write_text(PLAN)
        journal = Journal(f"sqlite:///{Path(tmp) / '.migrate' / 'bench-report.db'}", command="sync")
        journal.set_stage("letters", "blob", "load", "done", detail={"seconds": 1.0})
        journal.mark_chunks("letters", "load", [(f"2026/Ward {n % 40}/patient-{n:07d}/letter-{n:07d}.pdf",
                                                 "done", 1000, None) for n in range(args.files)])
        at = now()
        rows = [{"at": at, "user": "ops", "host": "runner", "command": "sync", "item": "letters", "kind": "sync",
                 "outcome": "ok", "message": "sync", "data": json.dumps(
                     {"created": int(n % 100 == 0), "lag_seconds": 1.0, "seconds": 0.5})}
                for n in range(args.cycles)]
        with journal.connect() as conn:
            conn.execute(insert(events_t), rows)
        journal.close()
        for mask in (False, True):
            with session(plan, "report", lock=False) as ctx:
                started = time.perf_counter()
                data = build_report(ctx, None, mask=mask)
                built = time.perf_counter() - started
            sizes = {}
            started = time.perf_counter()
            for fmt in FORMATS:
                sizes[fmt] = len(render(data, fmt).encode())
            rendered = time.perf_counter() - started
            print(f"mask={mask}: build {built:.2f} s, render all formats {rendered:.2f} s; sizes "
                  + ", ".join(f"{fmt} {size / 1024:.0f} KiB" for fmt, size in sizes.items()))


if __name__ == "__main__":
    main()
