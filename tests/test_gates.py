"""Cutover gates, each against real evidence: journal rows, files, a real HTTP server, the clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from helpers import build_tree
from migrate.plan.loader import load_plan
from migrate.stages.gates import _window, evaluate_gates
from migrate.state.journal import Journal, now
from migrate.state.sync_state import SyncState

PLAN = """
version: 1
component: gates-test
connections:
  a: {path: a}
  b: {path: b}
blobs:
  - {name: letters, source: a, target: b}
cutover:
  gates:
    max_lag: 60s
    verified: true
    min_dual_run: 1h
    postpone_file: postpone
    approval: true
    health: [{url: "http://127.0.0.1:PORT/healthz", status: 200}, {url: "http://127.0.0.1:PORT/down"}]
"""


@pytest.fixture
def health_port() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def gates_by_name(tmp_path: Path, port: int, journal: Journal, **kwargs: object) -> dict[str, object]:
    build_tree(tmp_path, {"plan.yaml": PLAN.replace("PORT", str(port))})
    loaded = load_plan(tmp_path / "plan.yaml")
    return {g.gate: g for g in evaluate_gates(loaded, journal, **kwargs)}


def test_fresh_plan_fails_every_evidence_gate_with_reasons(tmp_path: Path, health_port: int) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 's.db'}")
    (tmp_path / "postpone").write_text("")
    gates = gates_by_name(tmp_path, health_port, journal)
    assert not gates["loaded"].passed and "letters" in gates["loaded"].evidence
    assert not gates["verified"].passed and "never verified" in gates["verified"].evidence
    assert not gates["max_lag"].passed and "unknown" in gates["max_lag"].evidence
    assert not gates["min_dual_run"].passed
    assert not gates["postpone_file"].passed and "postponed" in gates["postpone_file"].evidence
    assert not gates["approval"].passed
    assert gates[f"health http://127.0.0.1:{health_port}/healthz"].passed
    down = gates[f"health http://127.0.0.1:{health_port}/down"]
    assert not down.passed and down.evidence == "HTTP 503 (want 200)"


def test_gates_pass_on_fresh_clean_evidence(tmp_path: Path, health_port: int) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 's.db'}")
    journal.set_stage("letters", "blob", "load", "done")
    SyncState(journal, "letters").cycle_done(now() - timedelta(hours=2), {}, clean=True, lag_seconds=2.0)
    SyncState(journal, "letters").caught_up(now(), 2.0)
    journal.record_verification("letters", True, 10, 0)
    gates = gates_by_name(tmp_path, health_port, journal, approved_by="Dr Example")
    failing = {name: g.evidence for name, g in gates.items() if not g.passed and "down" not in name}
    assert failing == {}


def test_stale_sync_and_later_load_fail_lag_and_verified(tmp_path: Path, health_port: int) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 's.db'}")
    journal.record_verification("letters", True, 10, 0)
    journal.set_stage("letters", "blob", "load", "done")  # after the verification
    SyncState(journal, "letters").caught_up(now() - timedelta(minutes=5), 0.0)
    gates = gates_by_name(tmp_path, health_port, journal)
    assert "loaded again since the last verification" in gates["verified"].evidence
    assert not gates["max_lag"].passed and "letters 5m" in gates["max_lag"].evidence


def test_unreachable_health_endpoint_is_a_failing_gate(tmp_path: Path) -> None:
    journal = Journal(f"sqlite:///{tmp_path / 's.db'}")
    gates = gates_by_name(tmp_path, 9, journal)  # port 9 (discard) is closed on loopback
    assert "unreachable" in gates["health http://127.0.0.1:9/healthz"].evidence


@pytest.mark.parametrize(("window", "at", "inside"), [
    ("22:00-04:00", "23:30", True), ("22:00-04:00", "03:59", True), ("22:00-04:00", "04:00", False),
    ("09:00-17:00", "12:00", True), ("09:00-17:00", "08:59", False),
])
def test_window_spans_midnight(window: str, at: str, inside: bool) -> None:
    hour, minute = map(int, at.split(":"))
    assert _window(window, datetime(2026, 11, 28, hour, minute)).passed is inside


def test_plan_warns_when_the_last_sync_cycle_took_longer_than_max_lag(tmp_path: Path, health_port: int) -> None:
    from migrate import commands

    build_tree(tmp_path, {"plan.yaml": PLAN.replace("PORT", str(health_port)), "a/x.txt": "x", "b/.keep": ""})
    loaded = load_plan(tmp_path / "plan.yaml")
    journal = Journal(loaded.state_url)
    journal.set_stage("letters", "blob", "sync", "done")  # the cycle ended now ...
    SyncState(journal, "letters").cycle_done(now() - timedelta(seconds=20), {}, clean=True, lag_seconds=0.0)
    assert commands.plan(tmp_path / "plan.yaml").warnings == []  # ... 20 s after it began: under 60s
    SyncState(journal, "letters").cycle_done(now() - timedelta(minutes=3), {}, clean=True, lag_seconds=0.0)
    warnings = commands.plan(tmp_path / "plan.yaml").warnings
    assert len(warnings) == 1 and warnings[0].startswith("letters: the last sync cycle took 3m") \
        and "longer than the cutover's max_lag (1m00s)" in warnings[0], warnings
    journal.close()
