"""Keep secrets out of every message, log line, journal row and report.

Values interpolated from `${VAR}` are registered here when a plan is loaded; on top of that, well-known
secret shapes (account keys, SAS signatures, passwords in URLs) are masked wherever they appear.
"""

from __future__ import annotations

import re
import threading

MASK = "***"

_PATTERNS = [
    # AccountKey=...; SharedAccessSignature=...; Password=...; in connection strings
    re.compile(r"(?i)((?:AccountKey|SharedAccessSignature|Password|Pwd)=)[^;\s]+"),
    # SAS query parameters
    re.compile(r"(?i)([?&]sig=)[^&\s'\"]+"),
    # user:password@ in URLs
    re.compile(r"(?i)(://[^:/@\s]+:)[^@\s/]+(?=@)"),
    # bearer tokens
    re.compile(r"(?i)(Bearer )[A-Za-z0-9\-._~+/]+=*"),
]

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a value that must never be shown (anything read from the environment into a plan)."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact(text: object) -> str:
    """Return `text` with every registered secret and every secret-shaped fragment masked."""
    out = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    for pattern in _PATTERNS:
        out = pattern.sub(rf"\g<1>{MASK}", out)
    return out
