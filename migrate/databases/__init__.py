"""Databases: schema mapping, chunked load with per-dialect fast paths, checksum verification, sync."""

from __future__ import annotations

from migrate.databases.engine import DatabaseEngine

__all__ = ["DatabaseEngine"]
