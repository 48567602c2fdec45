"""Azurite (the Azure Storage emulator) for the blob tests: a pytest plugin listed in conftest.py.

- `azurite` (session): starts `node_modules/.bin/azurite-blob` in memory on a free port (the Makefile's
  `npm ci` installs it; without it every test that needs it is skipped, saying so), waits until it
  answers, and stops it at the end. Its `.connection_string` uses the well-known devstoreaccount1 key.
- `blob_container` (function): a unique container name for one test (not created: the engine creates it).
- `FaultyProxy` / `faulty_proxy`: a loopback HTTP proxy in front of Azurite that counts requests and can
  fail some of them (500 InternalError, connection reset before forwarding, reset after forwarding so the
  request took effect but its answer is lost): real network faults for the real client stack.
"""

from __future__ import annotations

import http.client
import itertools
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
AZURITE_BIN = ROOT / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connection_string(port: int, key: str = ACCOUNT_KEY) -> str:
    return (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={key};"
            f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};")


@dataclass
class Azurite:
    """A running Azurite blob service."""

    port: int
    process: subprocess.Popen[bytes]
    workdir: Path

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"


def start_azurite(workdir: Path, port: int | None = None, timeout: float = 30.0) -> Azurite:
    """Start Azurite in memory and wait until it answers HTTP."""
    port = port or free_port()
    log = open(workdir / "azurite.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(
        [str(AZURITE_BIN), "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
         "--blobHost", "127.0.0.1", "--blobPort", str(port)],
        cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Azurite exited with {process.returncode}: "
                               f"{(workdir / 'azurite.log').read_text(errors='replace')[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", f"/{ACCOUNT}?comp=list")
            conn.getresponse().read()
            conn.close()
            return Azurite(port, process, workdir)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"Azurite did not answer on port {port} within {timeout:.0f} s")


def stop_azurite(azurite: Azurite) -> None:
    azurite.process.terminate()
    try:
        azurite.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        azurite.process.kill()
        azurite.process.wait(timeout=10)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    if not AZURITE_BIN.exists():
        pytest.skip(f"Azurite is not installed ({AZURITE_BIN.relative_to(ROOT)} missing): run `npm ci`")
    if shutil.which("node") is None:
        pytest.skip("Azurite needs Node.js (`node` is not on PATH)")
    workdir = Path(tempfile.mkdtemp(prefix="azurite-"))
    server = start_azurite(workdir)
    try:
        yield server
    finally:
        stop_azurite(server)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def blob_container() -> str:
    """A container name no other test uses (3-63 characters, lowercase letters, digits, hyphens)."""
    return f"t-{uuid.uuid4().hex[:20]}"


# -- a loopback proxy that counts and breaks requests --

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


@dataclass
class FaultyProxy:
    """Forwards HTTP to `upstream_port`; every `fail_every`-th request (0: none) meets the next fault of
    `faults` in turn: "500", "reset" (before forwarding) or "reset-after" (forwarded, answer lost)."""

    upstream_port: int
    fail_every: int = 0
    faults: tuple[str, ...] = ("500", "reset", "reset-after")
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path with query)
    injected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._fault_cycle = itertools.cycle(self.faults)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = proxy._next_fault(self.command, self.path)
                if fault == "reset":
                    self._reset()
                    return
                if fault == "500":
                    payload = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>InternalError</Code>'
                               b"<Message>injected fault</Message></Error>")
                    self.send_response(500)
                    self.send_header("x-ms-error-code", "InternalError")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                headers["Host"] = f"127.0.0.1:{proxy.upstream_port}"
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                upstream.close()
                if fault == "reset-after":
                    self._reset()
                    return
                self.send_response_only(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _reset(self) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _relay  # noqa: N815 - stdlib naming

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # the resets we inject make the client hang up on us too: expected

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _next_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            self.requests.append((method, path))
            self._count += 1
            if self.fail_every and self._count % self.fail_every == 0:
                fault = next(self._fault_cycle)
                self.injected.append(fault)
                return fault
        return None

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    def count(self, method: str, query_part: str) -> int:
        """How many requests with `method` had `query_part` in their URL."""
        with self._lock:
            return sum(1 for m, p in self.requests if m == method and query_part in p)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty_proxy(azurite: Azurite) -> Iterator[FaultyProxy]:
    """A FaultyProxy in front of the session's Azurite, passing everything until told otherwise."""
    proxy = FaultyProxy(azurite.port)
    try:
        yield proxy
    finally:
        proxy.close()


def env_with(**values: str) -> dict[str, str]:
    """The process environment plus `values` (plans read secrets through ${VAR})."""
    return {**os.environ, **values}
