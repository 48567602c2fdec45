"""An Azure Blob Storage container (or a prefix in one) as a blob store, with azure-storage-blob.

Authentication, in the order a connection gives it: a connection string (from the environment through
`${VAR}`), an account URL with a SAS token, or an account URL alone with DefaultAzureCredential. Secrets
are registered for redaction before any request is made. The SDK's own retries are off: every call goes
through `retry.call` (tenacity), and failures are translated by `retry.explain`.

Every object written carries Content-MD5 (set in the commit for block uploads, where the service does not
compute it), the source mtime in metadata `mtime` (as rclone writes it) and a content type. Blocks are sent
with a transactional MD5 so the service checks each one on arrival. A whole small object goes first as one
signed request on the lean path of `putblob.py` (shared key or SAS, no proxy); whatever that path cannot
settle is sent again through the SDK, with the same condition.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobPrefix, BlobServiceClient, ContainerClient, ContentSettings
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from migrate.blobs import retry
from migrate.blobs.copy import SMALL_FACTOR
from migrate.blobs.putblob import DirectPut, Unsure
from migrate.blobs.store import (
    BlobEntry,
    BlobProps,
    BlobStore,
    BlockWriter,
    Level,
    Listing,
    Precondition,
    SourceChanged,
    SourceReader,
    SourceVanished,
    StoreState,
    TargetChanged,
    format_mtime,
    parse_mtime,
)
from migrate.plan.model import Connection
from migrate.redact import redact, register_secret

MTIME_KEY = "mtime"
READ_CHUNK = 8 * 1024 * 1024
LIST_PAGE = 5000  # names per List Blobs answer (the service's maximum)
REFUSED_CODES = frozenset({"ConditionNotMet", "BlobAlreadyExists", "TargetConditionNotMet"})


def _etag(value: Any) -> str:
    """Etags without quotes (listings give them bare, other answers quoted)."""
    return str(value or "").strip('"')


def _quoted(etag: str | None) -> str:
    return f'"{_etag(etag)}"'


def _conditions(when: Precondition) -> dict[str, Any]:
    if when.kind == "absent":
        return {"match_condition": MatchConditions.IfMissing}
    if when.kind == "etag":
        return {"etag": _quoted(when.etag), "match_condition": MatchConditions.IfNotModified}
    return {}


def _refused(exc: BaseException) -> bool:
    """A conditional request the service turned down because the target is not as we saw it."""
    if isinstance(exc, (ResourceModifiedError, ResourceExistsError)):
        return True
    return isinstance(exc, HttpResponseError) and (
        exc.status_code == 412 or retry.error_code(exc) in REFUSED_CODES
    )


def _session(pool: int, url: str) -> requests.Session:
    """An HTTP session with a pool as wide as our concurrency. Proxy settings (HTTPS_PROXY, NO_PROXY...)
    are read from the environment once for the endpoint, not on every request as requests does by
    default (that scan costs more CPU than the rest of a small upload)."""
    session = requests.Session()
    session.proxies = requests.utils.get_environ_proxies(url)
    session.trust_env = False
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _blob_endpoint(connection_string: str) -> str:
    """The blob endpoint a connection string points at (for proxy selection only)."""
    parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
    if parts.get("BlobEndpoint"):
        return parts["BlobEndpoint"]
    protocol = parts.get("DefaultEndpointsProtocol", "https")
    return f"{protocol}://{parts.get('AccountName', 'account')}.blob.{parts.get('EndpointSuffix', 'core.windows.net')}"


class AzureBlobStore(BlobStore):
    """One container; with `prefix`, only the names under it (paths are relative to the prefix)."""

    kind = "blob"

    def __init__(self, container: ContainerClient, prefix: str = "", direct: DirectPut | None = None) -> None:
        self.container = container
        self.prefix = prefix
        self.direct = direct  # the lean Put Blob path for whole small objects (putblob.py)
        self.display = redact(container.url.split("?", 1)[0]) + (f"/{prefix}" if prefix else "")

    def identity(self) -> str:
        return f"blob container {self.container.account_name}/{self.container.container_name}/{self.prefix}"

    @classmethod
    def from_connection(cls, conn: Connection, *, prefix: str = "", concurrency: int = 16,
                        block_size: int = 8 * 1024 * 1024) -> AzureBlobStore:
        """Open the container a plan connection names."""
        assert conn.container
        endpoint = conn.account_url or _blob_endpoint(conn.connection_string or "")
        session = _session((2 + SMALL_FACTOR) * concurrency + 8, endpoint)  # file, block, small-file pools
        # azure-core hands its own `verify` to every request, overriding the session's: give it the bundle
        transport = RequestsTransport(session=session, session_owner=True, connection_verify=session.verify,
                                      connection_timeout=20, read_timeout=120, use_env_settings=False)
        options: dict[str, Any] = {
            "transport": transport,
            "retry_total": 0,
            "connection_timeout": 20,
            "read_timeout": 120,
            "max_single_put_size": max(64 * 1024 * 1024, block_size),
            "max_block_size": block_size,
            "max_single_get_size": READ_CHUNK,
            "max_chunk_get_size": READ_CHUNK,
        }
        if conn.connection_string:
            register_secret(conn.connection_string)
            for part in conn.connection_string.split(";"):
                key, _, value = part.partition("=")
                if key.strip().lower() in ("accountkey", "sharedaccesssignature"):
                    register_secret(value)
            try:
                service = BlobServiceClient.from_connection_string(conn.connection_string, **options)
            except ValueError as exc:
                raise retry.EndpointError(f"connection string for container {conn.container} is invalid: "
                                          f"{redact(exc)}",
                                          hint="expected DefaultEndpointsProtocol=...;AccountName=...;"
                                               "AccountKey=...;BlobEndpoint=... or a SAS form") from None
        else:
            assert conn.account_url
            credential: Any
            if conn.sas_token:
                register_secret(conn.sas_token)
                credential = conn.sas_token.lstrip("?")
            elif "sig=" in conn.account_url:
                credential = None  # the URL carries a SAS
            else:
                from migrate.azure.credentials import default_credential

                credential = default_credential(conn.azure.cloud if conn.azure else "AzureCloud")
            service = BlobServiceClient(conn.account_url, credential=credential, **options)
        container = service.get_container_client(conn.container)
        direct = None
        if DirectPut.usable(container) and not session.proxies:
            direct = DirectPut(container, SMALL_FACTOR * concurrency + 8,
                               session.verify if isinstance(session.verify, str) else None)
        return cls(container, prefix=prefix, direct=direct)

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        self.container.close()

    # -- names --

    def name(self, path: str) -> str:
        return self.prefix + path

    def _blob(self, path: str) -> Any:
        return self.container.get_blob_client(self.name(path))

    def _fail(self, exc: BaseException, what: str, per_object: bool = True) -> retry.EndpointError:
        return retry.explain(exc, what, self.display, per_object=per_object)

    def account_key(self) -> tuple[str, str, str]:
        """(scheme, host, account): two stores with equal keys live in one storage account."""
        parts = urlsplit(self.container.url)
        return parts.scheme, parts.netloc.lower(), str(self.container.account_name).lower()

    # -- read side --

    def probe(self) -> StoreState:
        try:
            retry.call(self.container.get_container_properties)
        except ResourceNotFoundError as exc:
            if retry.error_code(exc) in ("ContainerNotFound", ""):
                return StoreState(False, f"container {self.display} does not exist")
            raise self._fail(exc, "probe", per_object=False) from None
        except Exception as exc:
            raise self._fail(exc, "probe", per_object=False) from None
        return StoreState(True, f"container {self.display} exists")

    def ensure(self) -> bool:
        try:
            retry.call(self.container.create_container)
        except ResourceExistsError:
            return False
        except Exception as exc:
            raise self._fail(exc, "create container", per_object=False) from None
        return True

    def _entry(self, props: Any, path: str) -> BlobEntry:
        metadata = props.metadata or {}
        stamp = metadata.get(MTIME_KEY) or metadata.get(MTIME_KEY.capitalize()) or ""
        mtime_ns = parse_mtime(stamp)
        if mtime_ns is None:
            mtime_ns = int(props.last_modified.timestamp() * 1_000_000_000)
        md5 = props.content_settings.content_md5 if props.content_settings else None
        return BlobEntry(path, int(props.size), mtime_ns, _etag(props.etag), bytes(md5) if md5 else None)

    def listing_pages(self) -> Iterator[Listing]:
        """One page per List Blobs answer (up to LIST_PAGE names), each handed on before the next is asked for."""
        token: str | None = None
        while True:
            def page(token: str | None = token) -> tuple[list[Any], str | None]:
                pages: Any = self.container.list_blobs(name_starts_with=self.prefix or None, include=["metadata"],
                                                  results_per_page=LIST_PAGE).by_page(continuation_token=token)
                items = list(next(pages))
                return items, pages.continuation_token

            try:
                items, token = retry.call(page)
            except ResourceNotFoundError:
                yield Listing()
                return
            except Exception as exc:
                raise self._fail(exc, "list", per_object=False) from None
            listing = Listing()
            for props in items:
                path = props.name[len(self.prefix):]
                if path:
                    listing.entries[path] = self._entry(props, path)
            yield listing
            if not token:
                return

    def list_level(self, folder: str) -> Level:
        """A delimited listing (`/`): the blobs directly under `folder` and its virtual subfolders."""
        start = self.prefix + folder

        def one_level() -> Level:
            level = Level(Listing(), [])
            for found in self.container.walk_blobs(name_starts_with=start or None, include=["metadata"],
                                                   delimiter="/"):
                path = found.name[len(self.prefix):]
                if isinstance(found, BlobPrefix):
                    level.folders.append(path)
                elif path:
                    level.files.entries[path] = self._entry(found, path)
            return level

        try:
            return retry.call(one_level)  # a failure part-way lists the level again
        except ResourceNotFoundError:
            return Level(Listing(), [])
        except Exception as exc:
            raise self._fail(exc, "list", per_object=False) from None

    def stat(self, path: str) -> BlobEntry | None:
        try:
            props = retry.call(self._blob(path).get_blob_properties)
        except ResourceNotFoundError:
            return None
        except Exception as exc:
            raise self._fail(exc, f"read properties of {path}") from None
        return self._entry(props, path)

    def open_read(self, path: str, expected: BlobEntry | None = None) -> SourceReader:
        entry = expected or self.stat(path)
        if entry is None:
            raise SourceVanished("no longer exists")
        return BlobReader(self, path, entry)

    def read_range(self, path: str, offset: int, length: int, etag: str | None) -> bytes:
        blob = self._blob(path)
        conditions = {"etag": _quoted(etag), "match_condition": MatchConditions.IfNotModified} if etag else {}

        def fetch() -> bytes:
            return bytes(blob.download_blob(offset=offset, length=length, max_concurrency=1,
                                            **conditions).readall())

        try:
            return retry.call(fetch)
        except ResourceNotFoundError as exc:
            raise SourceVanished("deleted while being read") from exc
        except Exception as exc:
            if _refused(exc):
                raise SourceChanged("changed while being read") from exc
            raise self._fail(exc, f"read {path}") from None

    def hash(self, path: str) -> bytes:
        entry = self.stat(path)
        if entry is None:
            raise SourceVanished("no longer exists")
        digest = hashlib.md5()
        with self.open_read(path, entry) as reader:
            while chunk := reader.read(READ_CHUNK):
                digest.update(chunk)
        return digest.digest()

    # -- write side --

    def _settings(self, props: BlobProps) -> ContentSettings:
        return ContentSettings(content_type=props.content_type, content_md5=bytearray(props.md5))

    def _write(self, what: str, path: str, fn: Any) -> Any:
        try:
            return retry.call(fn)
        except Exception as exc:
            if _refused(exc):
                raise TargetChanged("changed on the target meanwhile") from exc
            raise self._fail(exc, f"{what} {path}") from None

    def put(self, path: str, data: bytes, props: BlobProps, when: Precondition) -> str:
        if self.direct is not None:
            try:
                return self.direct.put(self.name(path), data, props, when)
            except Unsure:
                pass  # the same conditional request through the SDK: retried, and its error explained
        blob = self._blob(path)

        def upload() -> dict[str, Any]:
            return blob.upload_blob(data, length=len(data), overwrite=True, content_settings=self._settings(props),
                                    metadata={MTIME_KEY: format_mtime(props.mtime_ns)}, max_concurrency=1,
                                    transactional_content_md5=bytearray(props.md5), **_conditions(when))

        return _etag(self._write("upload", path, upload)["etag"])

    def block_writer(self, path: str, block_size: int) -> BlockWriter:
        return AzureBlockWriter(self, path)

    def delete(self, path: str, when: Precondition) -> None:
        blob = self._blob(path)

        def delete() -> None:
            try:
                blob.delete_blob(**_conditions(when))
            except ResourceNotFoundError as exc:
                if retry.error_code(exc) == "ContainerNotFound":
                    raise
                # absent already (maybe our own earlier attempt whose answer was lost): done

        self._write("delete", path, delete)

    def set_mtime(self, path: str, mtime_ns: int, when: Precondition) -> str:
        blob = self._blob(path)
        result = self._write("set metadata of", path, lambda: blob.set_blob_metadata(
            {MTIME_KEY: format_mtime(mtime_ns)}, **_conditions(when)))
        return _etag(result["etag"])

    def server_copy(self, source: BlobStore, src_path: str, dst_path: str, entry: BlobEntry,
                    when: Precondition) -> tuple[str, bytes] | None:
        """Copy Blob inside one storage account (Azurite supports it; Put Block From URL it lacks)."""
        if not isinstance(source, AzureBlobStore) or source.account_key() != self.account_key():
            return None
        src_url = source._blob(src_path).url
        blob = self._blob(dst_path)
        metadata = {MTIME_KEY: format_mtime(entry.mtime_ns)}

        def start() -> dict[str, Any]:
            return blob.start_copy_from_url(src_url, metadata=metadata, source_etag=_quoted(entry.etag),
                                            source_match_condition=MatchConditions.IfNotModified,
                                            **_conditions(when))

        try:
            retry.call(start)
        except Exception as exc:
            if isinstance(exc, HttpResponseError) and retry.error_code(exc) in (
                    "SourceConditionNotMet", "CannotVerifyCopySource") or isinstance(exc, ResourceNotFoundError):
                raise SourceChanged("changed before the copy started") from exc
            if _refused(exc):
                raise TargetChanged("changed on the target meanwhile") from exc
            raise self._fail(exc, f"copy {src_path} to") from None
        delay = 0.02
        while True:
            try:
                props = retry.call(blob.get_blob_properties)
            except Exception as exc:
                raise self._fail(exc, f"follow the copy of {src_path} to") from None
            status = props.copy.status if props.copy else "success"
            if status != "pending":
                break
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        if status != "success":
            raise SourceChanged(f"server-side copy ended {status}: {props.copy.status_description}")
        md5 = props.content_settings.content_md5
        if md5:
            return _etag(props.etag), bytes(md5)
        digest = self.hash(dst_path)  # the source had no Content-MD5: compute it and set it
        settings = ContentSettings(content_type=props.content_settings.content_type, content_md5=bytearray(digest))
        result = self._write("set Content-MD5 of", dst_path, lambda: blob.set_http_headers(
            settings, etag=_quoted(props.etag), match_condition=MatchConditions.IfNotModified))
        return _etag(result["etag"]), digest


class BlobReader(SourceReader):
    """Reads a blob in ranged GETs pinned to the etag it was listed with."""

    def __init__(self, store: AzureBlobStore, path: str, entry: BlobEntry) -> None:
        self.store = store
        self.path = path
        self.entry = entry
        self.size = entry.size
        self.mtime_ns = entry.mtime_ns
        self._offset = 0

    def read(self, n: int) -> bytes:
        if self._offset >= self.size:
            return b""
        length = min(n, self.size - self._offset)
        data = self.store.read_range(self.path, self._offset, length, self.entry.etag)
        self._offset += len(data)
        return data

    def check_unchanged(self) -> None:
        now = self.store.stat(self.path)
        if now is None:
            raise SourceVanished("deleted while being read")
        if now.etag != self.entry.etag or self._offset != self.size:
            raise SourceChanged("changed while being read")


class AzureBlockWriter(BlockWriter):
    """Put Block with deterministic ids, Get Block List to resume, Put Block List to commit."""

    def __init__(self, store: AzureBlobStore, path: str) -> None:
        self.store = store
        self.path = path
        self.blob = store._blob(path)

    def staged(self) -> dict[str, int]:
        try:
            _, uncommitted = retry.call(lambda: self.blob.get_block_list("uncommitted"))
        except ResourceNotFoundError:
            return {}
        except Exception as exc:
            raise self.store._fail(exc, f"list blocks of {self.path}") from None
        return {str(b.id): int(b.size) for b in uncommitted}

    def stage(self, index: int, block_id: str, data: bytes, md5: bytes) -> None:
        def put() -> None:
            self.blob.stage_block(block_id, data, length=len(data), transactional_content_md5=bytearray(md5))

        try:
            retry.call(put)
        except Exception as exc:
            raise self.store._fail(exc, f"upload block {index} of {self.path}") from None

    def commit(self, block_ids: list[str], props: BlobProps, when: Precondition) -> str:
        def commit() -> dict[str, Any]:
            return self.blob.commit_block_list(block_ids, content_settings=self.store._settings(props),
                                               metadata={MTIME_KEY: format_mtime(props.mtime_ns)},
                                               **_conditions(when))

        return _etag(self.store._write("commit", self.path, commit)["etag"])
