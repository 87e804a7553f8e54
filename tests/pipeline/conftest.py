"""The pipeline tests' fixtures: a fresh database per module (support.api_fixtures.module_dsn)."""

from __future__ import annotations

from support.api_fixtures import module_dsn

__all__ = ["module_dsn"]
