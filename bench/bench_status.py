"""Benchmark: `migrate status` over a journal holding 1,000,000 file records (a blob item of a million letters),
as a whole command, with its peak RSS. No peer: the figure to hold is "answers in under 2 s".

    .venv/bin/python bench/bench_status.py [--records 1000000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=1_000_000)
    args = parser.parse_args()
    from migrate.plan.loader import load_plan
    from migrate.state.journal import Journal

    folder = Path(tempfile.mkdtemp(prefix="bench-status-"))
    (folder / "src").mkdir()
    (folder / "dst").mkdir()
    plan = folder / "plan.yaml"
    plan.write_text(textwrap.dedent("""\
        version: 1
        component: letters
        connections:
          onprem: {path: ./src}
          azure: {path: ./dst}
        blobs:
          - {name: docs, source: onprem, target: azure}
        """), encoding="utf-8")
    journal = Journal(load_plan(plan).state_url)
    journal.set_stage("docs", "blob", "load", "done")
    batch = 10_000
    for start in range(0, args.records, batch):
        journal.mark_chunks("docs", "load", [(f"letters/{i // 10_000:04}/{i:08}.pdf", "done", 200_000,
                                              {"md5": "x" * 24}) for i in range(start, start + batch)])
    journal.close()
    for attempt in range(3):
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "migrate", "status", str(plan), "--json"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"migrate status failed: {proc.stderr.read().decode() if proc.stderr else ''}")
        print(f"migrate status over {args.records:,} journal records, run {attempt + 1}: {seconds:.2f} s, "
              f"peak RSS {usage.ru_maxrss / 1024:.0f} MiB (target < 2 s)")


if __name__ == "__main__":
    main()
