"""Put Blob for small objects on a lean HTTP path: one signed request, no SDK pipeline.

Why: a 16 KiB upload through azure-storage-blob costs about 1.5 ms of CPU in the SDK's pipeline (a client
object per blob, a dozen policies, requests on top of urllib3), three times the cost of the request
itself. Under the GIL that caps a runner at a few hundred small files a second, whatever the concurrency.
This path builds the same Put Blob request (REST API, `x-ms-version` of the SDK in use), signs it with the
container client's own credential policy (shared key; a SAS travels in the URL) and sends it over a
urllib3 pool sized for many small requests.

It is only the happy path. Its answers:
- 201: done; the etag is returned.
- 412, or 409 `BlobAlreadyExists`: the condition failed: `TargetChanged`, exactly as from the SDK.
- anything else (a 5xx, a throttling 503, an authorisation failure, a reset connection, a timeout):
  `Unsure`, and the caller sends the same conditional request again through the SDK, which retries,
  translates the error and says what to fix. A request that did reach the service before its answer
  was lost then meets its own blob (`TargetChanged`), which the copy resolves by comparing MD5s.

Every request carries `Content-MD5` (the service checks the body on arrival) and `x-ms-blob-content-md5`
(the blob's stored Content-MD5), the content type and the `mtime` metadata, as the SDK path sets them.
Not used (the SDK path is): token credentials (DefaultAzureCredential), proxies from the environment.
"""

from __future__ import annotations

import base64
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import requests.certs
import urllib3
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.pipeline.transport import HttpRequest
from azure.storage.blob._shared.authentication import SharedKeyCredentialPolicy

from migrate.blobs.store import BlobProps, Precondition, TargetChanged, format_mtime

CONNECT_TIMEOUT = 20.0
READ_TIMEOUT = 120.0


class Unsure(Exception):
    """The lean request did not give a clear answer: send it again through the SDK."""


def _quoted(etag: str | None) -> str:
    return f'"{str(etag or "").strip(chr(34))}"'


class DirectPut:
    """Signed Put Blob requests into one container over a pool of `connections` keep-alive connections."""

    def __init__(self, container: Any, connections: int, ca_bundle: str | None = None) -> None:
        url = str(container.url)
        self.base, _, query = url.partition("?")
        self.query = f"?{query}" if query else ""
        self.version = str(container.api_version)
        policy = getattr(container, "_credential_policy", None)
        self.sign = policy.on_request if isinstance(policy, SharedKeyCredentialPolicy) else None
        # the trust store of the SDK path: REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE, else requests' own (certifi)
        kwargs: dict[str, Any] = {"ca_certs": ca_bundle or requests.certs.where(), "cert_reqs": "CERT_REQUIRED"}
        self.pool = urllib3.PoolManager(num_pools=2, maxsize=connections, block=False, retries=False,
                                        timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT, read=READ_TIMEOUT),
                                        **kwargs)

    @classmethod
    def usable(cls, container: Any) -> bool:
        """Shared key, or a SAS in the URL: the credentials this path signs or carries."""
        policy = getattr(container, "_credential_policy", None)
        return isinstance(policy, SharedKeyCredentialPolicy) or (policy is None and "sig=" in str(container.url))

    def put(self, name: str, data: bytes, props: BlobProps, when: Precondition) -> str:
        """Upload `data` as block blob `name` if `when` holds; return its etag (raises TargetChanged, Unsure)."""
        md5 = base64.b64encode(props.md5).decode()
        url = f"{self.base}/{quote(name, safe='/~')}{self.query}"
        headers = {
            "x-ms-version": self.version,
            "x-ms-date": formatdate(usegmt=True),
            "x-ms-blob-type": "BlockBlob",
            "Content-Length": str(len(data)),
            "Content-MD5": md5,
            "x-ms-blob-content-md5": md5,
            "x-ms-blob-content-type": props.content_type,
            "x-ms-meta-mtime": format_mtime(props.mtime_ns),
        }
        if when.kind == "absent":
            headers["If-None-Match"] = "*"
        elif when.kind == "etag":
            headers["If-Match"] = _quoted(when.etag)
        if self.sign is not None:
            request = HttpRequest("PUT", url, headers=headers)
            self.sign(PipelineRequest(request, PipelineContext(None)))
            headers = dict(request.headers)
        try:
            response = self.pool.request("PUT", url, body=data, headers=headers, retries=False,
                                         redirect=False, preload_content=True)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise Unsure(str(exc)) from exc
        if response.status == 201:
            return str(response.headers.get("ETag", "")).strip('"')
        code = str(response.headers.get("x-ms-error-code", ""))
        if response.status == 412 or (response.status == 409 and code == "BlobAlreadyExists"):
            raise TargetChanged("changed on the target meanwhile")
        raise Unsure(f"{response.status} {code}")

    def close(self) -> None:
        self.pool.clear()
