"""Configuration of ``gridcloud api``: a TOML file, overridable by flags.

Same reader and rules as ``gridcloud serve`` (gridcloud.config.read_sections):
the record's field defaults are the only defaults, unknown sections and keys are
refused, errors name the file, section and key.  Documented in docs/api.md.

Tests: tests/cloud/test_api_config.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..config import (
    RELEASES_KEYS,
    RELEASES_TYPES,
    ConfigError,
    ReleasesConfig,
    read_sections,
    split_releases,
)

_SECTIONS: dict[str, frozenset[str]] = {
    "api": frozenset(
        {"listen", "max_body_bytes", "max_page", "rate_limit", "rate_burst", "public_url",
         "access_log", "metrics_listen"}
    ),
    "database": frozenset({"dsn", "pool_size", "migrate"}),
    "releases": RELEASES_KEYS,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiConfig:
    """Everything ``gridcloud api`` needs; see docs/api.md for each key."""

    #: Twisted server endpoint of the HTTP listener (plain HTTP: TLS ends at the load balancer).
    listen: str = "tcp:8080"
    #: The URL clients use, for the OpenAPI document's ``servers`` (empty: relative).
    public_url: str = ""
    dsn: str | None = None
    pool_size: int = 4
    #: Apply pending schema migrations before listening (else refuse to start).
    migrate: bool = False
    #: Largest request body accepted; a larger one is a 413 problem.
    max_body_bytes: int = 64 * 1024
    #: Largest ``limit`` of a page.
    max_page: int = 1000
    #: Requests per second each key may make (a token bucket per key, per process).
    rate_limit: float = 50.0
    #: Requests a key may make at once before the rate applies.
    rate_burst: int = 100
    #: One log line per request (twisted.web's combined log format), written after the answer
    #: has been sent; can be off behind a load balancer that logs requests already (it is
    #: about a tenth of the API process's CPU time per request in bench/bench_api.py's
    #: profile of the edge list).
    access_log: bool = True
    #: Twisted endpoint serving /metrics and /healthz (keep it private); empty: none.
    metrics_listen: str = ""
    #: The ``[releases]`` section: where uploaded bundles go, which are accepted.
    releases: ReleasesConfig = field(default_factory=ReleasesConfig)

    def validate(self) -> ApiConfig:
        """Return self if complete and sensible, else raise ConfigError naming the key."""
        if not self.dsn:
            raise ConfigError("missing setting: dsn (--dsn, the config file or $GRIDCLOUD_DSN)")
        for name in ("pool_size", "max_body_bytes", "max_page", "rate_limit", "rate_burst"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")
        self.releases.validate()
        return self

    def with_overrides(self, **values: Any) -> ApiConfig:
        """A copy with the given non-None values replaced (command-line flags)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


_TYPES = {f.name: str(f.type) for f in fields(ApiConfig)}


def load_api_config(path: Path) -> ApiConfig:
    """Read a ``gridcloud api`` TOML config file."""
    values = read_sections(path, _SECTIONS, {**_TYPES, **RELEASES_TYPES})
    return ApiConfig(**split_releases(values))
