"""Blob items against Azure Blob Storage, played by a real Azurite: copy, Content-MD5, resume after
kill -9, injected network faults, conditional writes, blob-to-blob copy and error messages."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.blob import (
    AccountSasPermissions,
    BlobServiceClient,
    ContainerClient,
    ContentSettings,
    ResourceTypes,
    generate_account_sas,
)
from fixtures_azurite import ACCOUNT, ACCOUNT_KEY, Azurite, FaultyProxy, connection_string, env_with
from test_blobs_local import MIB, ROOT, RUNNER, build_tree, demo_letters, kill_when

from migrate.blobs.azure import AzureBlobStore
from migrate.blobs.engine import BlobEngine
from migrate.blobs.store import block_id, format_mtime
from migrate.errors import EndpointError
from migrate.plan.loader import LoadedPlan, load_plan
from migrate.stages.engine import StageContext
from migrate.state.journal import Journal

pytestmark = pytest.mark.azurite


class AzureSetup:
    """A plan: local folder `src` (or a container) → container `container`, secrets via ${VAR}."""

    def __init__(self, folder: Path, cs: str, container: str, item: str = "",
                 files: dict[str, bytes] | None = None, source: str | None = None,
                 target: str | None = None, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.src = folder / "src"
        self.src.mkdir(parents=True, exist_ok=True)
        if files:
            build_tree(self.src, files)
        self.cs = cs
        self.container_name = container
        source = source or "{path: src}"
        target = target or f'{{connection_string: "${{AZ_CS}}", container: {container}}}'
        self.plan = folder / "plan.yaml"
        self.plan.write_text(textwrap.dedent(f"""\
            version: 1
            component: blobaz
            connections:
              onprem: {source}
              cloud: {target}
            blobs:
              - name: letters
                source: onprem
                target: cloud
            """) + textwrap.indent(textwrap.dedent(item), " " * 4))
        self.env = env or env_with(AZ_CS=cs)
        self.loaded: LoadedPlan = load_plan(self.plan, env=self.env)
        self.journal = Journal(self.loaded.state_url)

    def run(self, stage: str, **kwargs: object) -> object:
        engine = BlobEngine(self.loaded.plan.blobs[0], self.loaded)
        try:
            return getattr(engine, stage)(StageContext(self.loaded, self.journal), **kwargs)
        finally:
            engine.close()

    @property
    def container(self) -> ContainerClient:
        return BlobServiceClient.from_connection_string(self.cs).get_container_client(self.container_name)

    def blobs(self) -> dict[str, object]:
        return {b.name: b for b in self.container.list_blobs(include=["metadata"])}

    def content(self, name: str) -> bytes:
        return self.container.download_blob(name).readall()


def assert_target_matches(setup: AzureSetup, files: dict[str, bytes], prefix: str = "",
                          read_bytes: bool = True) -> None:
    """Every blob: exact bytes (unless `read_bytes` is off: Content-MD5 was checked by the service on
    upload), Content-MD5 of those bytes, source mtime in metadata, a content type."""
    blobs = setup.blobs()
    assert set(blobs) == {prefix + k for k in files}
    for rel, data in files.items():
        blob = blobs[prefix + rel]
        digest = hashlib.md5(data).digest()
        assert blob.size == len(data), rel
        assert bytes(blob.content_settings.content_md5 or b"") == digest, f"Content-MD5 of {rel}"
        if read_bytes:
            assert setup.content(prefix + rel) == data, rel
        source = setup.src / rel
        if source.exists():
            assert blob.metadata["mtime"] == format_mtime(source.stat().st_mtime_ns)
        assert blob.content_settings.content_type


# -- copy, verify, sync --


def test_load_verify_and_sync_into_azurite(azurite: Azurite, blob_container: str, tmp_path: Path) -> None:
    files = demo_letters(120)
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "block_size: 1048576\ndelete: true\n",
                       files)
    preview = setup.run("preview")
    assert preview.create == len(files) and any("will be created" in d for d in preview.details)
    assert not setup.container.exists()  # the dry run wrote nothing
    result = setup.run("load")
    assert not result.problems and result.metrics["target_created"]
    assert_target_matches(setup, files)
    blocks, _ = setup.container.get_blob_client("scans/big-scan.pdf").get_block_list("committed")
    assert len(blocks) == 6  # 5 MiB + 12345 bytes in 1 MiB blocks, and still a Content-MD5 on the blob
    assert setup.blobs()["scans/big-scan.pdf"].content_settings.content_type == "application/pdf"
    assert setup.run("verify").clean
    deep = setup.run("verify", deep=True)
    assert deep.clean and deep.metrics["target_bytes_read"] == sum(len(v) for v in files.values())

    etags = {name: blob.etag for name, blob in setup.blobs().items()}
    (setup.src / "empty.txt").write_bytes(b"no longer empty")
    (setup.src / "added/new letter.txt").parent.mkdir()
    (setup.src / "added/new letter.txt").write_bytes(b"new")
    (setup.src / "clinic-1/2024/02/letter-0001.txt").unlink()
    touched = setup.src / "clinic-2/2024/03/letter-0002.txt"
    os.utime(touched, ns=(1_400_000_000_000_000_000,) * 2)
    synced = setup.run("sync")
    assert (synced.created, synced.updated, synced.deleted) == (1, 2, 1), synced
    assert synced.metrics["files_copied"] == 2 and synced.metrics["touched"] == 1 and synced.lag_seconds == 0
    now_files = {p.relative_to(setup.src).as_posix(): p.read_bytes() for p in setup.src.rglob("*") if p.is_file()}
    assert_target_matches(setup, now_files)
    after = {name: blob.etag for name, blob in setup.blobs().items()}
    changed = {"empty.txt", "clinic-1/2024/02/letter-0001.txt", touched.relative_to(setup.src).as_posix()}
    unchanged = set(etags) - changed
    assert all(after[name] == etags[name] for name in unchanged)
    assert setup.run("verify").clean


def test_prefix_and_sas_token_auth(azurite: Azurite, blob_container: str, tmp_path: Path) -> None:
    sas = generate_account_sas(ACCOUNT, ACCOUNT_KEY, ResourceTypes(service=True, container=True, object=True),
                               AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True,
                                                     create=True), expiry=datetime.now(UTC) + timedelta(hours=1))
    target = f'{{account_url: "{azurite.blob_endpoint}", sas_token: "${{AZ_SAS}}", container: {blob_container}}}'
    files = {"a.pdf": b"one", "sub/b.pdf": b"two", "skip.tmp": b"no"}
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, 'prefix: "/2024/letters/"\n'
                       'exclude: ["*.tmp"]\n', files, target=target, env=env_with(AZ_SAS=sas))
    result = setup.run("load")
    assert not result.problems
    assert set(setup.blobs()) == {"2024/letters/a.pdf", "2024/letters/sub/b.pdf"}
    assert setup.run("verify").clean
    text = repr(result) + repr(setup.journal.events()) + repr(setup.journal.chunks("letters", "load"))
    assert sas.split("sig=")[1][:20] not in text


def test_edge_case_names_sizes_and_nesting(azurite: Azurite, blob_container: str, tmp_path: Path) -> None:
    deep = "/".join(f"level{i}" for i in range(30))
    files = {
        "with space.txt": b"space", "naïve café.txt": b"unicode", "日本語/ファイル.txt": b"cjk",
        "hash#1.txt": b"hash", "100%.txt": b"percent", "100%25.txt": b"encoded-looking", "a+b.txt": b"plus",
        "semi;colon.txt": b"semi", "q?uery&x=y.txt": b"query", "emoji 🎉.txt": b"emoji",
        f"{deep}/bottom.txt": b"deep", "zero.bin": b"", "one-block.bin": b"z" * 65536,
        "one-block-plus-one.bin": b"y" * 65537, "three-blocks.bin": os.urandom(3 * 65536 - 7),
    }
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "block_size: 65536\n", files)
    os.symlink(setup.src / "three-blocks.bin", setup.src / "link to three.bin")  # a file link: followed
    os.symlink(setup.src / "日本語", setup.src / "link-to-folder")  # a folder link: skipped
    result = setup.run("load")
    assert not result.problems, result.problems
    assert any("link-to-folder" in w for w in result.warnings)
    assert_target_matches(setup, {**files, "link to three.bin": files["three-blocks.bin"]})
    assert setup.run("verify", deep=True).clean
    assert setup.run("sync").created == 0


# -- crash and resume --

def start_load(setup: AzureSetup) -> subprocess.Popen[bytes]:
    env = {**setup.env, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", RUNNER, str(setup.plan)], env=env, stderr=subprocess.PIPE)


def test_kill_9_mid_copy_then_resume(azurite: Azurite, faulty_proxy: FaultyProxy, blob_container: str,
                                     tmp_path: Path) -> None:
    files = {f"batch-{i % 20:02d}/letter {i:05d}.txt": os.urandom(4096) for i in range(800)}
    setup = AzureSetup(tmp_path, faulty_proxy.connection_string, blob_container, "concurrency: 4\n", files)
    process = start_load(setup)
    kill_when(process, lambda: faulty_proxy.count("PUT", "letter") >= 150, timeout=90)  # uploads seen by the proxy
    before = {name: (blob.etag, blob.last_modified) for name, blob in setup.blobs().items()}
    assert 100 <= len(before) < len(files)
    result = setup.run("load")
    assert not result.problems
    assert result.metrics["files_copied"] == len(files) - len(before)
    after = setup.blobs()
    assert {name: (after[name].etag, after[name].last_modified) for name in before} == before
    assert_target_matches(setup, files, read_bytes=False)
    assert setup.run("verify").clean


def test_kill_9_mid_large_file_resumes_from_uncommitted_blocks(azurite: Azurite, faulty_proxy: FaultyProxy,
                                                               blob_container: str, tmp_path: Path) -> None:
    big = os.urandom(12 * MIB)
    total_blocks = 12 * MIB // 65536
    setup = AzureSetup(tmp_path, faulty_proxy.connection_string, blob_container,
                       "block_size: 65536\nconcurrency: 2\n", {"scans/huge.tif": big})

    def staged() -> int:
        try:
            return len(setup.container.get_blob_client("scans/huge.tif").get_block_list("uncommitted")[1])
        except Exception:  # noqa: BLE001 - not there yet
            return 0

    process = start_load(setup)
    kill_when(process, lambda: staged() >= 30, timeout=90)
    assert not setup.container.get_blob_client("scans/huge.tif").exists()
    already = staged()
    sent_before = faulty_proxy.count("PUT", "comp=block&")
    result = setup.run("load")
    assert not result.problems
    assert result.metrics["blocks_reused"] == already
    assert faulty_proxy.count("PUT", "comp=block&") - sent_before == total_blocks - already
    assert_target_matches(setup, {"scans/huge.tif": big})


def test_prestaged_blocks_are_not_sent_again(azurite: Azurite, faulty_proxy: FaultyProxy,
                                             blob_container: str, tmp_path: Path) -> None:
    data = os.urandom(10 * 65536 + 100)
    setup = AzureSetup(tmp_path, faulty_proxy.connection_string, blob_container, "block_size: 65536\n",
                       {"big.bin": data})
    setup.container.create_container()
    writer = AzureBlobStore(setup.container).block_writer("big.bin", 65536)
    for index in range(4):
        chunk = data[index * 65536:(index + 1) * 65536]
        writer.stage(index, block_id(index, hashlib.md5(chunk).digest()), chunk, hashlib.md5(chunk).digest())
    sent_before = faulty_proxy.count("PUT", "comp=block&")
    result = setup.run("load")
    assert result.metrics["blocks_reused"] == 4
    assert faulty_proxy.count("PUT", "comp=block&") - sent_before == 11 - 4
    assert_target_matches(setup, {"big.bin": data})


# -- faults --


def test_injected_faults_are_retried_to_a_correct_result(azurite: Azurite, faulty_proxy: FaultyProxy,
                                                         blob_container: str, tmp_path: Path) -> None:
    files = {f"f{i:03d}.txt": os.urandom(1000 + i) for i in range(150)}
    files["big.bin"] = os.urandom(20 * 65536 + 5)
    setup = AzureSetup(tmp_path, faulty_proxy.connection_string, blob_container,
                       "block_size: 65536\ndelete: true\n", files)
    faulty_proxy.fail_every = 5  # one request in five: 500, reset before, reset after (in turn)
    result = setup.run("load")
    assert not result.problems, result.problems
    assert set(faulty_proxy.injected) == {"500", "reset", "reset-after"} and len(faulty_proxy.injected) >= 30
    (setup.src / "f000.txt").write_bytes(b"changed")
    (setup.src / "f001.txt").unlink()
    synced = setup.run("sync")
    assert not synced.problems and (synced.updated, synced.deleted) == (1, 1)
    assert setup.run("verify", deep=True).clean
    faulty_proxy.fail_every = 0
    files = {p.name: p.read_bytes() for p in setup.src.iterdir()}
    assert_target_matches(setup, files)


# -- someone else on the target --


def test_verify_catches_blobs_changed_behind_our_back(azurite: Azurite, blob_container: str,
                                                      tmp_path: Path) -> None:
    files = {"a.txt": b"alpha", "b.txt": b"bravo", "c.txt": b"charlie", "d.txt": b"delta", "e.txt": b"echo!"}
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "", files)
    setup.run("load")
    other = setup.container
    other.upload_blob("a.txt", b"ALPHA", overwrite=True)  # same size, new bytes, Content-MD5 by the SDK
    other.delete_blob("b.txt")
    other.upload_blob("z.txt", b"stray")
    liar = other.get_blob_client("d.txt")  # new bytes, old Content-MD5 (a block commit is not checked)
    liar.stage_block("000001", b"DELTA")
    liar.commit_block_list(["000001"], content_settings=ContentSettings(
        content_md5=bytearray(hashlib.md5(b"delta").digest())))
    rewritten = other.get_blob_client("e.txt")  # same bytes, but committed as blocks: no Content-MD5
    rewritten.stage_block("000001", b"echo!")
    rewritten.commit_block_list(["000001"])
    shallow = setup.run("verify").differences
    assert {(d.kind, d.key) for d in shallow} == {("different", "a.txt"), ("missing_on_target", "b.txt"),
                                                  ("missing_on_source", "z.txt"), ("different", "e.txt")}
    assert next(d.detail for d in shallow if d.key == "e.txt") == "target has no Content-MD5"
    deep = setup.run("verify", deep=True)
    assert ("different", "d.txt") in {(d.kind, d.key) for d in deep.differences}
    assert "Content-MD5" in next(d.detail for d in deep.differences if d.key == "d.txt")


def test_conditional_writes_refuse_to_overwrite_someone_elses_blob(azurite: Azurite, blob_container: str,
                                                                    tmp_path: Path) -> None:
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "delete: true\n",
                       {"ours.txt": b"v1", "gone.txt": b"bye", "keep.txt": b"k"})
    setup.container.create_container()
    setup.container.upload_blob("preexisting.txt", b"not ours")
    build_tree(setup.src, {"preexisting.txt": b"ours, different"})
    first = setup.run("load")
    assert [p for p in first.problems if p.startswith("preexisting.txt") and "not written by this migration" in p]
    assert setup.content("preexisting.txt") == b"not ours"

    setup.container.upload_blob("ours.txt", b"edited in Azure", overwrite=True)
    setup.container.upload_blob("gone.txt", b"edited too", overwrite=True)
    (setup.src / "ours.txt").write_bytes(b"v2 on premises")
    (setup.src / "gone.txt").unlink()
    synced = setup.run("sync")
    assert any(p.startswith("ours.txt") and "someone else" in p for p in synced.problems)
    assert setup.content("ours.txt") == b"edited in Azure" and setup.content("gone.txt") == b"edited too"
    assert synced.deleted == 0
    assert any(e["kind"] == "blob_conflict" for e in setup.journal.events(item="letters"))


def test_write_refused_at_the_last_moment_is_a_problem(azurite: Azurite, blob_container: str,
                                                       tmp_path: Path) -> None:
    """The race: the blob appears between our listing and our write; the service refuses (If-None-Match)."""
    from migrate.blobs.store import BlobProps, Precondition, TargetChanged

    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        blob_container)
    container.create_container()
    store = AzureBlobStore(container)
    props = BlobProps(3, hashlib.md5(b"abc").digest(), 1_600_000_000_000_000_000, "text/plain")
    etag = store.put("x.txt", b"abc", props, Precondition.absent())
    with pytest.raises(TargetChanged):
        store.put("x.txt", b"abc", props, Precondition.absent())
    container.upload_blob("x.txt", b"other", overwrite=True)
    with pytest.raises(TargetChanged):
        store.put("x.txt", b"abc", props, Precondition.matching(etag))
    with pytest.raises(TargetChanged):
        store.delete("x.txt", Precondition.matching(etag))
    assert container.download_blob("x.txt").readall() == b"other"


# -- blob to blob --


def test_blob_to_blob_copy_inside_the_account(azurite: Azurite, blob_container: str, tmp_path: Path) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    source_name = blob_container + "-src"
    source = service.create_container(source_name)
    files = {"a.txt": b"alpha", "dir/b.pdf": os.urandom(70_000), "empty": b""}
    for name, data in files.items():
        source.upload_blob(name, data, metadata={"mtime": "2020-01-02T03:04:05.123456789Z"})
    no_md5 = source.get_blob_client("no-md5.bin")  # block upload without Content-MD5
    no_md5.stage_block("000001", b"x" * 1000)
    no_md5.commit_block_list(["000001"])
    files["no-md5.bin"] = b"x" * 1000
    assert not no_md5.get_blob_properties().content_settings.content_md5
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "",
                       source=f'{{connection_string: "${{AZ_CS}}", container: {source_name}}}')
    result = setup.run("load")
    assert not result.problems and result.metrics["server_copies"] == 4
    blobs = setup.blobs()
    for name, data in files.items():
        assert setup.content(name) == data
        assert bytes(blobs[name].content_settings.content_md5) == hashlib.md5(data).digest()
    assert blobs["a.txt"].metadata["mtime"] == "2020-01-02T03:04:05.123456789Z"
    assert setup.run("verify").clean and setup.run("verify", deep=True).clean
    source.upload_blob("a.txt", b"ALPHA!", overwrite=True)
    synced = setup.run("sync")
    assert synced.updated == 1 and setup.content("a.txt") == b"ALPHA!"
    assert setup.run("verify").clean


def test_blob_to_blob_across_endpoints_streams(azurite: Azurite, faulty_proxy: FaultyProxy, blob_container: str,
                                               tmp_path: Path) -> None:
    """Another endpoint (here: the same Azurite behind the proxy) is another account: no Copy Blob, the
    bytes are streamed in blocks; a folder target works the same way."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    source_name = blob_container + "-src"
    source = service.create_container(source_name)
    files = {"a.txt": b"alpha", "big.bin": os.urandom(5 * 65536 + 3), "empty": b""}
    for name, data in files.items():
        source.upload_blob(name, data)
    setup = AzureSetup(tmp_path, faulty_proxy.connection_string, blob_container, "block_size: 65536\n",
                       source=f'{{connection_string: "${{AZ_SRC}}", container: {source_name}}}',
                       env=env_with(AZ_CS=faulty_proxy.connection_string, AZ_SRC=azurite.connection_string))
    result = setup.run("load")
    assert not result.problems and result.metrics["server_copies"] == 0 and result.metrics["files_copied"] == 3
    assert faulty_proxy.count("PUT", "comp=block&") == 6
    for name, data in files.items():
        assert setup.content(name) == data
        assert bytes(setup.blobs()[name].content_settings.content_md5) == hashlib.md5(data).digest()
    assert setup.run("verify", deep=True).clean

    local = AzureSetup(tmp_path / "to-folder", azurite.connection_string, blob_container, "block_size: 65536\n",
                       source=f'{{connection_string: "${{AZ_CS}}", container: {source_name}}}', target="{path: out}")
    assert not local.run("load").problems
    assert {p.name: p.read_bytes() for p in (tmp_path / "to-folder/out").iterdir()} == files
    assert local.run("verify").clean


# -- what the user is told --


def test_bad_key_says_authorisation_failed_and_hides_the_key(azurite: Azurite, blob_container: str,
                                                             tmp_path: Path) -> None:
    wrong = base64.b64encode(b"not the key" * 6).decode()
    setup = AzureSetup(tmp_path, connection_string(azurite.port, wrong), blob_container, "", {"a.txt": b"a"})
    with pytest.raises(EndpointError) as caught:
        setup.run("preflight")
    message = str(caught.value)
    assert "authorisation failed" in message and "account key" in message
    assert wrong not in message and wrong[:12] not in message
    with pytest.raises(EndpointError, match="authorisation failed"):
        setup.run("load")


def test_missing_source_container_and_invalid_name(azurite: Azurite, blob_container: str, tmp_path: Path) -> None:
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "",
                       source=f'{{connection_string: "${{AZ_CS}}", container: {blob_container}-nope}}')
    with pytest.raises(EndpointError, match="does not exist"):
        setup.run("preflight")
    bad = AzureSetup(tmp_path / "bad", azurite.connection_string, "Bad_Name--x", "", {"a.txt": b"a"})
    with pytest.raises(EndpointError, match="name invalid"):
        bad.run("load")


def test_unreachable_endpoint_is_reported_after_retries(blob_container: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    setup = AzureSetup(tmp_path, connection_string(port), blob_container, "", {"a.txt": b"a"})
    started = time.monotonic()
    with pytest.raises(EndpointError, match="cannot reach"):
        setup.run("preflight")
    assert time.monotonic() - started < 30


@pytest.mark.slow
def test_thousands_of_small_files_across_listing_pages(azurite: Azurite, blob_container: str,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More blobs than one listing page holds (pages of 1,000 here, the service's 5,000 in earnest: Azurite is
    the slow part); the local tests copy 20,000."""
    from migrate.blobs import azure as azure_store

    monkeypatch.setattr(azure_store, "LIST_PAGE", 1000)
    files = {f"d{i % 50:02d}/f{i:05d}.txt": b"%05d" % i for i in range(2_500)}
    setup = AzureSetup(tmp_path, azurite.connection_string, blob_container, "", files)
    result = setup.run("load")
    assert not result.problems and result.metrics["files_copied"] == 2_500
    assert sum(1 for _ in setup.container.list_blobs()) == 2_500
    assert setup.run("verify").clean
    assert setup.run("sync").created == 0
