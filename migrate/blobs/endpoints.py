"""Open the store a plan connection names: a local folder (`path:`) or an Azure Blob container."""

from __future__ import annotations

from migrate.blobs.store import BlobStore
from migrate.errors import UsageError
from migrate.plan.loader import LoadedPlan
from migrate.plan.model import Connection

DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024


def normalise_prefix(prefix: str) -> str:
    """A plan's `prefix` as a folder: no leading slash, one trailing slash ("" stays "")."""
    cleaned = prefix.strip().strip("/")
    return f"{cleaned}/" if cleaned else ""


def open_store(connection: Connection, loaded: LoadedPlan, *, prefix: str = "", concurrency: int = 16,
               block_size: int = DEFAULT_BLOCK_SIZE) -> BlobStore:
    """The BlobStore for `connection`; local paths are relative to the plan's folder.

    `prefix` narrows the store to the names under it (used for targets); `concurrency` sizes the HTTP
    connection pool.
    """
    prefix = normalise_prefix(prefix)
    if connection.kind == "folder":
        from migrate.blobs.local import LocalFolderStore

        assert connection.path is not None
        root = loaded.resolve(connection.path)
        return LocalFolderStore(root.joinpath(*prefix.strip("/").split("/")) if prefix else root)
    if connection.kind == "blob":
        from migrate.blobs.azure import AzureBlobStore

        return AzureBlobStore.from_connection(connection, prefix=prefix, concurrency=concurrency,
                                              block_size=block_size)
    raise UsageError("a database connection cannot be the source or target of a blob item")
