"""An azure-core transport that serves recorded ARM responses: for tests and the offline demo.

Routes map (method, path regex) to a queue of recorded responses; the last one repeats. Every request
is kept, so a test can assert what was asked (and how often), and sleeps asked by the retry and polling
policies are recorded instead of slept.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.response import HTTPResponse


@dataclass(frozen=True)
class Recorded:
    """One recorded HTTP response."""

    status: int
    body: Any = None  # dict or list → JSON, str or bytes as they are, None → empty
    headers: Mapping[str, str] = field(default_factory=dict)
    raises: Exception | None = None  # e.g. requests.ConnectionError: the network failed, no answer

    def content(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


@dataclass(frozen=True)
class SeenRequest:
    """A request the transport answered."""

    method: str
    url: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes | None

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class NoRecording(LookupError):
    """A request matched no route; raised rather than answered so a gap in a recording is loud."""


@dataclass
class _Route:
    method: str
    pattern: re.Pattern[str]
    responses: list[Recorded]
    served: int = 0

    def next(self) -> Recorded:
        response = self.responses[min(self.served, len(self.responses) - 1)]
        self.served += 1
        return response


class ArmReplay(RequestsTransport):
    """Serves recorded responses by (method, path regex); records requests and sleeps."""

    def __init__(self) -> None:
        session = requests.Session()
        session.mount("https://", _ReplayAdapter(self))
        session.mount("http://", _ReplayAdapter(self))
        super().__init__(session=session, session_owner=False, use_env_settings=False)
        self.routes: list[_Route] = []
        self.requests: list[SeenRequest] = []
        self.sleeps: list[float] = []

    def add(self, method: str, path_regex: str, *responses: Recorded) -> ArmReplay:
        """Answer `method` requests whose URL path fully matches `path_regex` with `responses` in turn."""
        if not responses:
            raise ValueError("a route needs at least one response")
        self.routes.insert(0, _Route(method.upper(), re.compile(path_regex, re.IGNORECASE), list(responses)))
        return self

    def add_file(self, path: str | Path) -> ArmReplay:
        """Load routes from a JSON file: {"interactions": [{method, path, status, headers?, body?}]}."""
        data = json.loads(Path(path).read_text())
        for item in data["interactions"]:
            recorded = Recorded(item["status"], item.get("body"), item.get("headers", {}))
            self.add(item["method"], item["path"], recorded)
        return self

    def count(self, method: str, path_regex: str) -> int:
        """How many requests with `method` had a path fully matching `path_regex`."""
        pattern = re.compile(path_regex, re.IGNORECASE)
        return sum(1 for r in self.requests if r.method == method.upper() and pattern.fullmatch(r.path))

    def sleep(self, duration: float) -> None:
        self.sleeps.append(duration)

    def _answer(self, request: requests.PreparedRequest) -> requests.Response:
        url = request.url or ""
        parts = urlsplit(url)
        raw = request.body
        body = raw.encode() if isinstance(raw, str) else raw if isinstance(raw, bytes) else None
        method = (request.method or "GET").upper()
        headers = {str(k): str(v) for k, v in request.headers.items()}
        self.requests.append(SeenRequest(method, url, parts.path, parts.query, headers, body))
        for route in self.routes:
            if route.method == method and route.pattern.fullmatch(parts.path):
                return _to_response(request, route.next())
        raise NoRecording(f"no recorded response for {method} {parts.path}")


class _ReplayAdapter(BaseAdapter):
    def __init__(self, replay: ArmReplay) -> None:
        super().__init__()
        self._replay = replay

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        return self._replay._answer(request)

    def close(self) -> None:
        pass


def _to_response(request: requests.PreparedRequest, recorded: Recorded) -> requests.Response:
    if recorded.raises is not None:
        raise recorded.raises
    response = requests.Response()
    response.status_code = recorded.status
    response.reason = _REASONS.get(recorded.status, "")
    content = recorded.content()
    headers = {"Content-Type": "application/json", **dict(recorded.headers)}
    headers["Content-Length"] = str(len(content))
    response.headers = CaseInsensitiveDict(headers)
    response.raw = HTTPResponse(
        body=io.BytesIO(content), headers=headers, status=recorded.status, preload_content=False
    )
    response.url = request.url or ""
    response.request = request
    response.encoding = "utf-8"
    return response


def load_recordings(names: Iterable[str], folder: str | Path) -> dict[str, Any]:
    """Read recorded ARM bodies `<folder>/<name>.json` into a dict keyed by name."""
    return {name: json.loads((Path(folder) / f"{name}.json").read_text()) for name in names}


_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
