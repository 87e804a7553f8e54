"""The pipeline tests' fixtures: a fresh database per module, and for the API tests a seeded
world with a running ``gridcloud api`` (support.api_fixtures)."""

from __future__ import annotations

from support.api_fixtures import api, module_dsn, world

__all__ = ["api", "module_dsn", "world"]
