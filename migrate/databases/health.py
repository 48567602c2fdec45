"""The source-health probe of a throttled database item: a query's latency and, on PostgreSQL, built-in signals
(active sessions, replay lag of the source's own standbys). Read-only, on the item's source connection."""

from __future__ import annotations

import time

from sqlalchemy import text

from migrate.databases.endpoint import Endpoint
from migrate.errors import MigrateError
from migrate.plan.model import Probe


def source_health(endpoint: Endpoint, probe: Probe) -> tuple[bool, str]:
    """(over a ceiling, what was read). A probe that cannot run counts as over: back off rather than press on."""
    readings: list[str] = []
    over = False
    try:
        with endpoint.errors("health probe failed"), endpoint.engine.connect() as conn:
            if probe.sql:
                started = time.monotonic()
                conn.execute(text(probe.sql)).fetchall()
                took = time.monotonic() - started
                over |= took > probe.max_latency
                readings.append(f"probe query {took * 1000:.0f} ms (ceiling {probe.max_latency * 1000:.0f} ms)")
            if endpoint.dialect == "postgresql" and probe.max_active_sessions is not None:
                active = int(conn.execute(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND backend_type = 'client backend' "
                    "AND pid <> pg_backend_pid()")).scalar_one())
                over |= active > probe.max_active_sessions
                readings.append(f"{active} active sessions (ceiling {probe.max_active_sessions})")
            if endpoint.dialect == "postgresql" and probe.max_replica_lag is not None:
                lag = float(conn.execute(text(
                    "SELECT coalesce(max(extract(epoch FROM replay_lag)), 0) FROM pg_stat_replication")).scalar_one())
                over |= lag > probe.max_replica_lag
                readings.append(f"standby replay lag {lag:.1f} s (ceiling {probe.max_replica_lag:g} s)")
            conn.rollback()
    except MigrateError as exc:
        return True, f"probe failed: {exc}"
    return over, "; ".join(readings) or "no signal configured"
