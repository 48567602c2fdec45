"""Listing and copying overlap (issue 13), against a real Azurite: copies start while the source is still
being listed, the progress says the totals are still growing, small files take the lean Put Blob path, and
`kill -9` of the whole command mid-work loses nothing. Both sides are compared by sha256 of their bytes;
every blob must carry the Content-MD5 of its bytes."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ResourceTypes,
    generate_account_sas,
)
from fixtures_azurite import ACCOUNT, ACCOUNT_KEY, AZURITE_BIN, Azurite, FaultyProxy, env_with, free_port
from rich.console import Console
from test_blobs_azure import AzureSetup
from test_blobs_local import MIB, ROOT

from migrate.blobs import local
from migrate.blobs.azure import AzureBlobStore
from migrate.blobs.engine import BlobEngine
from migrate.blobs.local import LocalFolderStore
from migrate.blobs.store import BlobProps, Listing, Precondition
from migrate.plan.model import Connection
from migrate.progress import _PlainTask
from migrate.stages.engine import StageContext

pytestmark = pytest.mark.azurite


def sha256_source(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def assert_same_bytes_and_md5(container: ContainerClient, source: Path) -> None:
    """sha256 of every blob's bytes equals the source file's; Content-MD5 present and equal to the bytes' MD5."""
    expected = sha256_source(source)
    blobs = {b.name: b for b in container.list_blobs()}
    assert set(blobs) == set(expected)
    for name, blob in blobs.items():
        data = container.download_blob(name).readall()
        assert hashlib.sha256(data).hexdigest() == expected[name], name
        stored = blob.content_settings.content_md5
        assert stored, f"{name}: no Content-MD5"
        assert bytes(stored) == hashlib.md5(data).digest(), name


def direct(azurite: Azurite, container: str) -> ContainerClient:
    """The container without the fault-injecting proxy in front (which is slow to relay downloads)."""
    return BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)


class ObservedFolder(LocalFolderStore):
    """A real folder whose listing, before it hands on each page after the first, waits (up to 60 s) for a
    blob on the target, then notes how many are there. Were copying to begin only after the listing
    ended, the second page would wait in vain and the load would show none copied at any boundary."""

    def __init__(self, root: Path, container: ContainerClient) -> None:
        super().__init__(root)
        self.container = container
        self.at_boundaries: list[int] = []

    def _any_blob(self) -> bool:
        page = next(iter(self.container.list_blobs(results_per_page=1).by_page()), None)
        return bool(page and list(page))

    def listing_pages(self) -> Iterator[Listing]:
        for number, page in enumerate(super().listing_pages()):
            if number:
                deadline = time.monotonic() + 60
                while not self._any_blob() and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.at_boundaries.append(sum(1 for _ in self.container.list_blobs()))
            yield page


class RecordingProgress:
    """A progress sink that keeps every call, in order (the CLI's bars read the same calls)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float, int, bool]] = []
        self.lock = threading.Lock()

    def task(self, description: str, total: float | None = None, unit: str = "",
             items_total: int | None = None) -> Any:
        owner = self

        class Task:
            def advance(self, amount: float = 1, items: int = 0) -> None:
                with owner.lock:
                    owner.events.append(("advance", amount, items, False))

            def extend(self, amount: float, items: int = 0, listing: bool = False) -> None:
                with owner.lock:
                    owner.events.append(("extend", amount, items, listing))

            def close(self) -> None:
                pass

        return Task()


def test_copying_starts_before_the_listing_ends(azurite: Azurite, blob_container: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    page = 300  # files per listing page (PAGE_ENTRIES in earnest: 1,000), so the test needs fewer files
    monkeypatch.setattr(local, "PAGE_ENTRIES", page)
    count = 2 * page + 500  # four listing pages
    files = {f"ward-{i % 5}/letter-{i:05d}.txt": os.urandom(1024 + i % 97) for i in range(count)}
    files["scans/big.tif"] = os.urandom(3 * MIB + 7)  # blocks (1 MiB) through the large-object pool
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "block_size: 1048576\n", files)
    engine = BlobEngine(setup.loaded.plan.blobs[0], setup.loaded)
    source = ObservedFolder(setup.src, setup.container)
    engine._source = source
    progress = RecordingProgress()
    try:
        result = engine.load(StageContext(setup.loaded, setup.journal, progress=progress))
    finally:
        engine.close()
    assert not result.problems and result.metrics["files_copied"] == len(files)

    # at every page boundary after the first, files of earlier pages were already on the target
    assert len(source.at_boundaries) >= 2, source.at_boundaries
    assert all(0 < n < len(files) for n in source.at_boundaries), source.at_boundaries

    # the progress: totals grow page by page while listing (shown as lower bounds), files finish meanwhile,
    # and the final totals are exact
    extends = [(i, e) for i, e in enumerate(progress.events) if e[0] == "extend"]
    growing = [e for _, e in extends if e[3]]
    assert len(growing) >= 3 and all(e[2] > 0 for e in growing)
    last_growing = max(i for i, e in extends if e[3])
    assert any(e[0] == "advance" and e[2] > 0 for e in progress.events[:last_growing]), \
        "no file finished before the listing ended"
    assert extends[-1][1][3] is False  # the listing's end is announced
    assert sum(e[2] for _, e in extends) == len(files)
    assert sum(e[1] for _, e in extends) == sum(len(v) for v in files.values())

    assert_same_bytes_and_md5(setup.container, setup.src)
    assert len(setup.journal.chunks("letters", "load")) == len(files)
    assert setup.run("verify").clean


def test_progress_lines_say_the_totals_are_still_growing() -> None:
    out = io.StringIO()
    task = _PlainTask(Console(file=out, width=200), "load letters", None, "B", 0)
    task.extend(1000 * 1024, items=1000, listing=True)
    assert "1,000+ files (listing)" in task.line() and "+ listed so far" in task.line()
    task.advance(2048, items=2)
    task.extend(500 * 1024, items=500, listing=True)
    assert "2/1,500+ files (listing)" in task.line()
    task.extend(0, listing=False)
    line = task.line()
    assert "2/1,500 files" in line and "listing" not in line and "(0%)" in line


def test_small_files_take_the_lean_put_and_carry_content_md5(azurite: Azurite, faulty_proxy: FaultyProxy,
                                                             blob_container: str, tmp_path: Path) -> None:
    files = {f"notes/n{i:03d}.txt": os.urandom(300 + i) for i in range(200)}
    files["empty.txt"] = b""
    files["odd name #1 %20 + ;.txt"] = b"odd"
    setup = AzureSetup(tmp_path, faulty_proxy.connection_string, blob_container, "", files)
    store = AzureBlobStore.from_connection(setup.loaded.plan.connections["cloud"])
    try:
        assert store.direct is not None  # shared key: the lean path signs its own requests
    finally:
        store.close()
    result = setup.run("load")
    assert not result.problems and result.metrics["files_copied"] == len(files)
    # one request per small file, none of them the SDK's block upload
    assert faulty_proxy.count("PUT", "/n") >= 200 and faulty_proxy.count("PUT", "comp=block") == 0
    assert_same_bytes_and_md5(direct(azurite, blob_container), setup.src)
    # a second load sends nothing: every path is journaled with the etag the lean path returned

    def blob_puts() -> int:  # every PUT but the container's create (each load ensures the container)
        return faulty_proxy.count("PUT", "") - faulty_proxy.count("PUT", "restype=container")

    before = blob_puts()
    again = setup.run("load")
    assert again.metrics["files_copied"] == 0 and again.metrics["unchanged"] == len(files)
    assert blob_puts() == before


@pytest.mark.slow
def test_kill_9_of_the_whole_command_mid_overlap_then_rerun_loses_nothing(
        azurite: Azurite, faulty_proxy: FaultyProxy, blob_container: str, tmp_path: Path) -> None:
    files = {f"batch-{i % 30:02d}/letter {i:05d}.txt": os.urandom(2048 + i % 13) for i in range(1500)}
    for n in range(3):
        files[f"scans/scan-{n}.tif"] = os.urandom(2 * MIB + n)
    setup = AzureSetup(tmp_path, faulty_proxy.connection_string, blob_container, "block_size: 1048576\n", files)
    env = {**os.environ, **setup.env, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "migrate", "run", str(setup.plan), "--until", "load", "--json"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while faulty_proxy.count("PUT", "letter") < 300:  # real uploads under way
        assert process.poll() is None, "the load finished before it could be killed"
        assert time.monotonic() < deadline, "the load never got far enough to be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()

    before = {b.name: (b.etag, bytes(b.content_settings.content_md5 or b"")) for b in setup.container.list_blobs()}
    assert 200 <= len(before) < len(files)
    # the journal claims nothing that is not committed: each recorded path is there with our etag and MD5
    recorded = {path: detail for path, (status, _units, detail) in setup.journal.chunks("letters", "load").items()
                if status == "done"}
    assert len(recorded) <= len(before)
    for path, detail in recorded.items():
        assert before[path][0].strip('"') == detail["etag"].strip('"'), path
        assert before[path][1].hex() == detail["md5"] == hashlib.md5(files[path]).hexdigest(), path

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    load = next(stage for item in json.loads(rerun.stdout)["result"]["items"] for stage in item["stages"]
                if stage["stage"] == "load")
    assert load["metrics"]["files_copied"] == len(files) - len(before)
    after = {b.name: (b.etag, bytes(b.content_settings.content_md5 or b"")) for b in setup.container.list_blobs()}
    assert {name: after[name] for name in before} == before  # nothing finished was sent again
    assert_same_bytes_and_md5(direct(azurite, blob_container), setup.src)
    assert len(setup.journal.chunks("letters", "load")) == len(files)
    verify = subprocess.run([sys.executable, "-m", "migrate", "verify", str(setup.plan)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stderr


def test_sas_uploads_take_the_lean_put_token_credentials_and_proxies_the_sdk(
        azurite: Azurite, blob_container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sas = generate_account_sas(ACCOUNT, ACCOUNT_KEY, ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                                                     create=True), expiry=datetime.now(UTC) + timedelta(hours=1))
    target = f'{{account_url: "{azurite.blob_endpoint}", sas_token: "${{AZ_SAS}}", container: {blob_container}}}'
    files = {f"sas/s{i:02d}.txt": os.urandom(100 + i) for i in range(40)}
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "", files, target=target,
                       env=env_with(AZ_SAS=sas))
    store = AzureBlobStore.from_connection(setup.loaded.plan.connections["cloud"])
    try:
        assert store.direct is not None  # the SAS travels in the URL
    finally:
        store.close()
    result = setup.run("load")
    assert not result.problems and result.metrics["files_copied"] == len(files)
    assert_same_bytes_and_md5(direct(azurite, blob_container), setup.src)

    entra = Connection.model_validate({"account_url": "https://ppmdocs.blob.core.windows.net", "container": "letters"})
    store = AzureBlobStore.from_connection(entra)  # DefaultAzureCredential: nothing is asked until a request
    try:
        assert store.direct is None  # token credentials stay on the SDK path
    finally:
        store.close()

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy for the endpoint: the SDK path honours it
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    store = AzureBlobStore.from_connection(setup.loaded.plan.connections["cloud"])
    try:
        assert store.direct is None
    finally:
        store.close()


def test_lean_put_over_https_trusts_the_same_ca_bundle_as_the_sdk(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Azurite over TLS with a self-signed certificate named in REQUESTS_CA_BUNDLE: the lean path verifies
    it as the SDK does (a direct put answers, rather than failing over), and the load lands with Content-MD5."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_port()
    process = subprocess.Popen(
        [str(AZURITE_BIN), "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
         "--blobHost", "127.0.0.1", "--blobPort", str(port), "--cert", str(cert), "--key", str(key)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=1, context=context)
                conn.request("GET", f"/{ACCOUNT}?comp=list")
                conn.getresponse().read()
                break
            except OSError:
                assert time.monotonic() < deadline, "Azurite over TLS did not answer"
                time.sleep(0.1)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        cs = (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
              f"BlobEndpoint=https://127.0.0.1:{port}/{ACCOUNT};")
        files = {f"tls/t{i:02d}.txt": os.urandom(500 + i) for i in range(30)}
        setup = AzureSetup(tmp_path / "plan", cs, "tls-letters", "", files)
        store = AzureBlobStore.from_connection(setup.loaded.plan.connections["cloud"])
        try:
            assert store.direct is not None
            store.ensure()
            data = b"straight through the lean path"
            props = BlobProps(len(data), hashlib.md5(data).digest(), time.time_ns(), "text/plain")
            assert store.direct.put("probe.txt", data, props, Precondition.absent())  # no Unsure: TLS verified
            store.delete("probe.txt", Precondition.always())
        finally:
            store.close()
        result = setup.run("load")
        assert not result.problems and result.metrics["files_copied"] == len(files)
        client = BlobServiceClient.from_connection_string(cs, connection_verify=str(cert))
        assert_same_bytes_and_md5(client.get_container_client("tls-letters"), setup.src)
    finally:
        process.terminate()
        process.wait(timeout=10)
