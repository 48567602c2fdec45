"""Blob items: stores (a local folder, an Azure Blob container), inventory, copy, verify and sync.

The stage runner uses `migrate.blobs.engine.BlobEngine`; `open_store` opens one plan connection as a
`BlobStore`. Modules: store (the interface), local, azure, endpoints (open_store), filters, retry,
records (journal rows), inventory (what to do per path), copy, verify, engine.
"""

from __future__ import annotations

from migrate.blobs.endpoints import open_store
from migrate.blobs.store import BlobEntry, BlobStore, Listing

__all__ = ["BlobEntry", "BlobStore", "Listing", "open_store"]
