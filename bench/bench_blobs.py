"""Side-by-side benchmark: `migrate run --until load` vs `rclone copy`, into the same Azurite.

Workload (generated into a temp folder): 4 files of 64 MiB + 2,000 files of 16 KiB in 20 folders.
Each run gets a fresh in-memory Azurite (started here from node_modules): Azurite slows down as it fills,
so sharing one would favour whichever tool runs first. Rounds alternate which tool goes first.

Both are timed the same way: the wall time of the whole command as a user types it, from spawning the
process to its exit (start-up, imports, listing, every request, the journal). Ours is
`python -m migrate run PLAN --until load` (preflight, which lists the source and probes the target, then the
load; it creates its container itself); rclone's is `rclone copy SRC :azureblob:CONTAINER --transfers 16
--checkers 16` with a container SAS URL (its container is created before the clock starts: rclone cannot
create one through a container SAS). Our peak RSS and both tools' CPU time are read with wait4, and Azurite's
CPU time during each run from /proc (it is one Node.js thread: the floor for both). After our run, `rclone check`
compares the source with our container: it must find 0 differences and check every hash (our blobs carry
Content-MD5). The ratio printed is the median of ours over the median of rclone's, same run.

    python bench/bench_blobs.py [--rounds 3] [--big-mib 64] [--small 2000] [--keep]

Needs: node_modules/.bin/azurite-blob (`npm ci`) and rclone (`apt-get install -y rclone`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
MIB = 1024 * 1024
TARGET_RATIO = 0.7  # issue 13: our whole command in at most 0.7x rclone's time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_azurite(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [str(AZURITE), "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
         "--blobHost", "127.0.0.1", "--blobPort", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", f"/{ACCOUNT}?comp=list")
            conn.getresponse().read()
            return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("Azurite did not start")


def make_workload(folder: Path, big: int, big_mib: int, small: int, small_kib: int) -> int:
    rng = random.Random(42)
    total = 0
    for i in range(big):
        data = rng.randbytes(big_mib * MIB)
        (folder / f"scan-{i}.bin").write_bytes(data)
        total += len(data)
    for i in range(small):
        sub = folder / "letters" / f"batch-{i % 20:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(small_kib * 1024)
        (sub / f"letter-{i:05d}.txt").write_bytes(data)
        total += len(data)
    return total


def create_container(port: int, container: str) -> None:
    """rclone cannot create a container through a container SAS: make it first (ours creates its own)."""
    from azure.storage.blob import BlobServiceClient

    cs = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};" \
         f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    BlobServiceClient.from_connection_string(cs).create_container(container)


def container_sas_url(port: int, container: str) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(ACCOUNT, container, account_key=KEY, expiry=datetime.now(UTC) + timedelta(hours=2),
                                 permission=ContainerSasPermissions(read=True, write=True, delete=True, list=True,
                                                                    add=True, create=True))
    return f"http://127.0.0.1:{port}/{ACCOUNT}/{container}?{sas}"


def run_ours(work: Path, source: Path, port: int, container: str) -> tuple[float, int, str, float]:
    """(wall seconds, peak RSS bytes, the load's summary, CPU seconds) of the whole command."""
    plan = work / f"bench-{container}.yaml"
    plan.write_text(textwrap.dedent(f"""
        version: 1
        component: bench-{container}
        state: sqlite:///{work}/bench-{container}.db
        connections:
          src: {{path: "{source}"}}
          dst: {{connection_string: "${{BENCH_CS}}", container: {container}}}
        blobs:
          - {{name: bench, source: src, target: dst, concurrency: 16}}
    """))
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "BENCH_CS": f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                       f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"}
    started = time.perf_counter()
    log = work / f"bench-{container}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "migrate", "run", str(plan), "--until", "load", "--json"],
                                   env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)  # this checkout's code
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    output = log.read_text(errors="replace")
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"migrate failed ({process.returncode}):\n{output}")
    summary = next((line for line in output.splitlines() if "copied" in line), "")
    try:
        envelope = json.loads(output[output.index("{"):])
        stages = [stage for item in envelope["result"]["items"] for stage in item["stages"]
                  if stage.get("stage") == "load"]
        summary = stages[0]["summary"] if stages else summary
    except (ValueError, KeyError, TypeError, IndexError):
        pass
    return wall, usage.ru_maxrss * 1024, summary.strip(), usage.ru_utime + usage.ru_stime


def run_rclone(source: Path, sas_url: str, container: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the whole rclone copy."""
    started = time.perf_counter()
    process = subprocess.Popen(["rclone", "copy", str(source), f":azureblob:{container}", "--azureblob-sas-url",
                                sas_url, "--transfers", "16", "--checkers", "16", "-q"])
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"rclone failed ({os.waitstatus_to_exitcode(status)})")
    return wall, usage.ru_utime + usage.ru_stime


def cpu_seconds(pid: int) -> float:
    """CPU time a live process used so far (Azurite's, read from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rclone_check(source: Path, sas_url: str, container: str) -> tuple[int, str]:
    done = subprocess.run(["rclone", "check", str(source), f":azureblob:{container}", "--azureblob-sas-url",
                           sas_url, "--checkers", "16"], capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if "NOTICE" in line or "ERROR" in line]
    return done.returncode, "\n".join(lines[-8:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tool (order alternates)")
    parser.add_argument("--big", type=int, default=4)
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--small-kib", type=int, default=16)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    if not AZURITE.exists():
        raise SystemExit("Azurite missing: run `npm ci`")
    if shutil.which("rclone") is None:
        raise SystemExit("rclone missing: `apt-get install -y rclone`")
    rclone_version = subprocess.run(["rclone", "version"], capture_output=True, text=True).stdout.splitlines()[0]

    work = Path(tempfile.mkdtemp(prefix="bench-blobs-"))
    source = work / "source"
    source.mkdir()
    total = make_workload(source, args.big, args.big_mib, args.small, args.small_kib)
    files = args.big + args.small
    print(f"workload: {files} files, {total / MIB:.1f} MiB ({args.big} x {args.big_mib} MiB + "
          f"{args.small} x {args.small_kib} KiB); {rclone_version}; {os.cpu_count()} CPUs")
    ours_times: list[float] = []
    peer_times: list[float] = []
    cpu: dict[str, list[float]] = {"migrate": [], "migrate's Azurite": [], "rclone": [], "rclone's Azurite": []}
    peak = 0
    checks: list[tuple[int, str]] = []

    def peer_run() -> None:
        port = free_port()
        azurite = start_azurite(port)
        try:
            create_container(port, "rclone")
            before = cpu_seconds(azurite.pid)
            wall, used = run_rclone(source, container_sas_url(port, "rclone"), "rclone")
            peer_times.append(wall)
            cpu["rclone"].append(used)
            cpu["rclone's Azurite"].append(cpu_seconds(azurite.pid) - before)
        finally:
            azurite.terminate()
            azurite.wait(timeout=10)

    def ours_run() -> str:
        nonlocal peak
        port = free_port()
        azurite = start_azurite(port)
        try:
            before = cpu_seconds(azurite.pid)
            wall, rss, summary, used = run_ours(work, source, port, f"migrate{len(ours_times)}")
            cpu["migrate's Azurite"].append(cpu_seconds(azurite.pid) - before)
            cpu["migrate"].append(used)
            ours_times.append(wall)
            peak = max(peak, rss)
            checks.append(rclone_check(source, container_sas_url(port, f"migrate{len(ours_times) - 1}"),
                                       f"migrate{len(ours_times) - 1}"))
            return summary
        finally:
            azurite.terminate()
            azurite.wait(timeout=10)

    try:
        for round_no in range(args.rounds):
            if round_no % 2 == 0:
                peer_run()
                summary = ours_run()
            else:
                summary = ours_run()
                peer_run()
            print(f"round {round_no + 1}: rclone {peer_times[-1]:.2f} s, migrate {ours_times[-1]:.2f} s "
                  f"(peak RSS {peak / MIB:.0f} MiB) - {summary}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    code = max(c for c, _ in checks)
    check = checks[-1][1]
    if any("could not be checked" in text or " 0 differences" not in text for _, text in checks):
        check = next(text for _, text in checks if "could not be checked" in text or " 0 differences" not in text)
        code = code or 1
    ours, peer = statistics.median(ours_times), statistics.median(peer_times)
    print(f"medians over {args.rounds} round(s), each run on a fresh Azurite:")
    print(f"rclone copy --transfers 16: {peer:.2f} s ({total / MIB / peer:.0f} MiB/s)")
    print(f"migrate run --until load (concurrency 16, Content-MD5 on every blob): {ours:.2f} s "
          f"({total / MIB / ours:.0f} MiB/s)")
    print(f"ratio migrate/rclone: {ours / peer:.2f} (target <= {TARGET_RATIO:.2f})")
    print(f"migrate peak RSS: {peak / MIB:.0f} MiB (target <= 300 MiB)")
    print("median CPU seconds: " + ", ".join(f"{who} {statistics.median(v):.2f}" for who, v in cpu.items()))
    print(f"rclone check source vs migrate's container, every round (worst exit {code}):\n{check}")
    ok = ours <= TARGET_RATIO * peer and peak <= 300 * MIB and code == 0 and "could not be checked" not in check
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
