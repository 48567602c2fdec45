"""Shared fixtures. Service fixtures (PostgreSQL, Azurite) live in their own plugin modules."""

from __future__ import annotations

pytest_plugins = ["fixtures_postgres", "fixtures_azurite"]
