"""Benchmark: the measured rate of a throttled load against the configured one (rows and bytes).

Builds the demo estate (SQLite + folders, no services), limits the database item to --rows-per-second and the
letters item to --bytes-per-second, runs `migrate run --until load` for each item as a whole command and prints
configured vs measured (from the stage's own rows or bytes and seconds) and the whole command's time.

    .venv/bin/python bench/bench_throttle.py [--rows-per-second 5000] [--bytes-per-second 4MiB]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from migrate.demo.flow import prepare_estate  # noqa: E402
from migrate.plan.model import parse_size  # noqa: E402
from migrate.units import human_bytes  # noqa: E402


def load(plan: Path, item: str) -> tuple[dict, float]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "migrate", "run", str(plan), "--until", "load", "--item", item,
                           "--json"], capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"run failed: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    stages = json.loads(done.stdout)["result"]["items"][0]["stages"]
    return next(s for s in stages if s["stage"] == "load"), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-second", type=float, default=5000)
    parser.add_argument("--bytes-per-second", default="4MiB")
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--letters", type=int, default=300)
    args = parser.parse_args()
    rate_bytes = int(parse_size(args.bytes_per_second))  # type: ignore[call-overload]
    with tempfile.TemporaryDirectory(prefix="bench-throttle-") as folder:
        plan, _ = prepare_estate(Path(folder) / "estate", patients=args.patients, letters=args.letters)
        text = plan.read_text()
        text = text.replace("    chunk_rows: 5000\n", "    chunk_rows: 1000\n"
                            f"    throttle: {{rows_per_second: {args.rows_per_second}}}\n")
        text = text.replace("    delete: true\n",
                            f"    delete: true\n    throttle: {{bytes_per_second: {rate_bytes}}}\n")
        plan.write_text(text)
        rows_stage, rows_command = load(plan, "patient-record")
        blob_stage, blob_command = load(plan, "letters")
    rows, seconds = rows_stage["metrics"]["rows"], rows_stage["metrics"]["seconds"]
    copied = blob_stage["metrics"].get("bytes_copied", 0)
    blob_seconds = blob_stage["metrics"].get("seconds") or blob_stage["metrics"].get("copy_seconds") or 0
    print(f"rows:  configured {args.rows_per_second:,.0f} rows/s; measured {rows / seconds:,.0f} rows/s "
          f"({rows:,} rows in {seconds:.2f} s; ratio {rows / seconds / args.rows_per_second:.3f}); "
          f"whole command {rows_command:.2f} s")
    if copied and blob_seconds:
        print(f"bytes: configured {human_bytes(rate_bytes)}/s; measured {human_bytes(copied / blob_seconds)}/s "
              f"({human_bytes(copied)} in {blob_seconds:.2f} s; ratio {copied / blob_seconds / rate_bytes:.3f}); "
              f"whole command {blob_command:.2f} s")
    else:
        print(f"bytes: the blob load reported no copy time ({blob_stage['metrics']})")


if __name__ == "__main__":
    main()
