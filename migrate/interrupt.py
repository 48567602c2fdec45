"""Ctrl-C that takes effect at once, everywhere, and is never mistaken for a database error.

Python delivers SIGINT to the main thread only, and between bytecodes: a SQLite query running in a worker
thread, or a PostgreSQL query in any thread, would carry on for seconds, and a KeyboardInterrupt raised
inside a SQLite user-defined function (our checksum functions) is swallowed by SQLite into "user-defined
function raised exception". So the CLI's SIGINT handler also sets `STOP` and cancels every open database
connection; `Endpoint.errors()` turns any driver error met while stopping back into KeyboardInterrupt, and
refuses to start new work once stopping.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

STOP = threading.Event()
_cancels: dict[int, Callable[[], None]] = {}  # id(driver connection) -> how to cancel its statement
_lock = threading.Lock()


def watch_connection(dbapi_conn: Any) -> None:
    """Remember an open driver connection so Ctrl-C can cancel what it runs (SQLite and psycopg).
    `forget_connection` must follow when it closes (sqlite3 connections cannot be weakly referenced)."""
    cancel = getattr(dbapi_conn, "interrupt", None)  # sqlite3: thread-safe, aborts the running statement
    if cancel is None:
        cancel = getattr(dbapi_conn, "cancel_safe", None) or getattr(dbapi_conn, "cancel", None)  # psycopg
    if cancel is not None:
        with _lock:
            _cancels[id(dbapi_conn)] = cancel


def forget_connection(dbapi_conn: Any) -> None:
    with _lock:
        _cancels.pop(id(dbapi_conn), None)


def watch_engine(engine: Any) -> None:
    """Watch every connection a SQLAlchemy engine opens, until it closes."""
    from sqlalchemy import event

    event.listen(engine, "connect", lambda dbapi_conn, _record: watch_connection(dbapi_conn))
    event.listen(engine, "close", lambda dbapi_conn, _record: forget_connection(dbapi_conn))
    event.listen(engine, "close_detached", forget_connection)


def check() -> None:
    """Raise KeyboardInterrupt when a stop was asked for (call before starting a unit of work)."""
    if STOP.is_set():
        raise KeyboardInterrupt


def stop() -> None:
    """Ask everything to stop: set `STOP` and cancel every open database statement (in the background)."""
    STOP.set()
    with _lock:
        cancels = list(_cancels.values())

    def cancel_all() -> None:
        for cancel in cancels:
            with contextlib.suppress(Exception):
                cancel()

    threading.Thread(target=cancel_all, name="migrate-cancel", daemon=True).start()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    stop()
    raise KeyboardInterrupt


def install() -> None:
    """Handle SIGINT as above (CLI only: a library caller keeps its own handler)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
