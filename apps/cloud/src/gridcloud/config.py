"""Configuration of ``gridcloud serve``: a TOML file, overridable by flags.

Why TOML: it is in the standard library (``tomllib``), has comments, and an
operator can read it.  Every key has a default except the ones that must be
chosen on purpose (certificate, key, CA and the database), so a missing one is
a clear error at start, never a surprise later.  The format is documented in
docs/cloud.md ("Configuration").

Same pattern as the edge's gridedge.config (the two apps share no code, so
each keeps its own small reader): the record's field defaults are the only
defaults, the reader passes on only the keys the file gives, unknown sections
and keys are refused, and every error names the file, the section and the key
("FILE: [server] listen: must be a string, got 7400").

Tests: tests/cloud/test_cloud_config.py.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

#: The keys each TOML section may hold (each is a ServerConfig attribute).
_SECTIONS: dict[str, frozenset[str]] = {
    "server": frozenset(
        {
            "listen",
            "cert",
            "key",
            "ca",
            "hello_timeout",
            "heartbeat_interval",
            "max_in_flight",
            "max_frame_size",
            "max_batch_records",
            "tls_resumption",
            "tls_session_lifetime",
            "tls_groups",
            "traffic_flush_interval",
            "metrics_listen",
            "db_metrics_interval",
            "issuing_ca_cert",
            "issuing_ca_key",
            "certificate_days",
        }
    ),
    "database": frozenset({"dsn", "pool_size", "migrate"}),
    "ingest": frozenset(
        {"max_pending_uploads", "partition_days_ahead", "partition_check_interval",
         "command_window", "command_expiry_interval"}
    ),
}

#: The ``[releases]`` section, read by both ``gridcloud serve`` and ``gridcloud api``.
RELEASES_KEYS = frozenset({"folder", "keyring", "compatible", "max_bundle_mb", "deltas_from"})


class ConfigError(Exception):
    """The configuration is incomplete or invalid; the message names the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReleasesConfig:
    """Where update bundles live and which ones are accepted (docs/updates.md, "Releases").

    The folder is shared by every ``gridcloud api`` (which writes bundles and deltas into
    it) and every ``gridcloud serve`` (which reads chunks from it): one machine, or a
    shared file system.  ``folder`` unset: releases are off (the API answers 501).
    """

    folder: Path | None = None
    #: The CA certificate(s) a bundle's signature must chain to (``rauc info --keyring``).
    keyring: Path | None = None
    #: The RAUC ``compatible`` strings accepted; any other is refused with the reason.
    compatible: tuple[str, ...] = ()
    #: Largest bundle accepted, MiB (a larger upload is a 413, never written whole to disk).
    max_bundle_mb: int = 512
    #: Deltas are made from this many earlier releases of the same compatible (0: none).
    deltas_from: int = 3

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    @property
    def max_bytes(self) -> int:
        return self.max_bundle_mb * 1024 * 1024

    def validate(self) -> ReleasesConfig:
        """Return self if sensible, else raise ConfigError naming the key."""
        if self.folder is None:
            return self
        if self.keyring is None:
            raise ConfigError("[releases] keyring: required when folder is set")
        if not self.compatible:
            raise ConfigError("[releases] compatible: name at least one compatible string")
        if self.max_bundle_mb <= 0:
            raise ConfigError(f"max_bundle_mb must be positive, not {self.max_bundle_mb!r}")
        if self.deltas_from < 0:
            raise ConfigError(f"deltas_from must be 0 or more, not {self.deltas_from!r}")
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything the cloud server needs; see docs/cloud.md for each key."""

    #: Twisted server endpoint for the plain TCP socket; TLS is layered on top by gridcloud.
    listen: str = "tcp:7400"
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    #: The online issuing CA (``gridcloud pki issuing-ca``) that signs renewed edge
    #: certificates (gridcloud.renewal); both or neither.  Its certificate is also added
    #: to the trust store, so edges present renewed certificates without the chain.
    issuing_ca_cert: Path | None = None
    issuing_ca_key: Path | None = None
    #: Lifetime of a renewed edge certificate, days (fractions allowed: tests use minutes).
    certificate_days: float = 365.0
    #: "cache" (server-side session cache, small tickets) or "tickets" (stateless).
    tls_resumption: str = "cache"
    tls_session_lifetime: int = 86400
    #: TLS key-exchange groups, OpenSSL names separated by ':'.
    tls_groups: str = "X25519:P-256"
    dsn: str | None = None
    pool_size: int = 4
    #: Apply pending schema migrations before listening (else refuse to start).
    migrate: bool = False
    #: Seconds a new connection has to finish TLS and say Hello.
    hello_timeout: float = 30.0
    #: Told to edges in Welcome (an edge pings at the shorter of this and its own
    #: [uplink] heartbeat); the server drops a connection silent for 3 intervals.  Above
    #: the edges' 15-minute upload cycle, so edges whose uploads keep the NAT mapping
    #: alive send no Pings at all; an edge behind a stricter NAT lowers its own.
    heartbeat_interval: int = 1200
    max_in_flight: int = 8
    max_frame_size: int = 256 * 1024
    max_batch_records: int = 8192
    #: Uploads received but not yet committed, per connection, before the server
    #: stops reading that socket (back-pressure).
    max_pending_uploads: int = 4
    partition_days_ahead: int = 7
    partition_check_interval: float = 3600.0
    #: Seconds between writes of the per-edge byte counts (gridcloud.traffic); a node that is
    #: killed loses at most this much of its connections' counts.
    traffic_flush_interval: float = 60.0
    #: Twisted endpoint serving /metrics and /healthz (plain HTTP; keep it on a private
    #: interface); empty: none.
    metrics_listen: str = ""
    #: Seconds between samples of the database-wide gauges (commands by state, pipeline lag)
    #: that /metrics shows (gridcloud.metrics.DatabaseGauges).
    db_metrics_interval: float = 30.0
    #: Commands sent to one session and not yet accepted by the unit (gridcloud.commands).
    command_window: int = 32
    #: Seconds between sweeps that expire commands no unit executed in time.
    command_expiry_interval: float = 30.0
    #: The ``[releases]`` section: bundles served to units (gridcloud.firmware).
    releases: ReleasesConfig = field(default_factory=ReleasesConfig)

    def validate(self) -> ServerConfig:
        """Return self if complete and sensible, else raise ConfigError naming the key."""
        for name in ("cert", "key", "ca", "dsn"):
            if getattr(self, name) in (None, ""):
                raise ConfigError(f"missing setting: {name} (flag --{name} or the config file)")
        positive = (
            "pool_size",
            "hello_timeout",
            "heartbeat_interval",
            "max_in_flight",
            "max_frame_size",
            "max_batch_records",
            "max_pending_uploads",
            "partition_check_interval",
            "tls_session_lifetime",
            "traffic_flush_interval",
            "command_window",
            "command_expiry_interval",
            "certificate_days",
            "db_metrics_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")
        if (self.issuing_ca_cert is None) != (self.issuing_ca_key is None):
            raise ConfigError("issuing_ca_cert and issuing_ca_key go together (or neither)")
        if self.tls_resumption not in ("cache", "tickets"):
            raise ConfigError('tls_resumption must be "cache" or "tickets"')
        if self.partition_days_ahead < 1:
            raise ConfigError("partition_days_ahead must be at least 1")
        self.releases.validate()
        return self

    def with_overrides(self, **values: Any) -> ServerConfig:
        """A copy with the given non-None values replaced (command-line flags)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


_TYPES = {f.name: str(f.type) for f in fields(ServerConfig)}
RELEASES_TYPES = {f.name: str(f.type) for f in fields(ReleasesConfig)}


def _coerce(kind: str, value: Any, base: Path) -> Any:
    """``value`` checked against a config field's type ``kind``; ValueError says why not."""
    if "Path" in kind:
        if not isinstance(value, str):
            raise ValueError("must be a path string")
        path = Path(value)
        return path if path.is_absolute() else base / path
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value
    if kind.startswith("tuple[str"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("must be a list of strings")
        return tuple(value)
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("must be a number")
        if kind == "int" and not isinstance(value, int):
            raise ValueError("must be a whole number")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def read_sections(
    path: Path, sections: dict[str, frozenset[str]], types: dict[str, str]
) -> dict[str, Any]:
    """The keys of a TOML config file, checked: ``sections`` lists the keys each section may
    hold, ``types`` the type of each key; relative paths are relative to the file's folder.
    Shared by ``gridcloud serve`` (load_config) and ``gridcloud api`` (gridcloud.api.config).
    """
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (give the file with --config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for section, table in data.items():
        keys = sections.get(section)
        if keys is None:
            raise ConfigError(f"{path}: [{section}]: unknown section (typo? see docs/cloud.md)")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}]: must be a table")
        unknown = set(table) - keys
        if unknown:
            raise ConfigError(f"{path}: [{section}]: unknown key(s) "
                              f"{', '.join(sorted(unknown))} (typo? see docs/cloud.md)")
        for key, value in table.items():
            try:
                values[key] = _coerce(types[key], value, path.parent)
            except ValueError as exc:
                raise ConfigError(f"{path}: [{section}] {key}: {exc}, got {value!r}") from None
    return values


def split_releases(values: dict[str, Any]) -> dict[str, Any]:
    """Move the ``[releases]`` keys of ``values`` (read_sections' answer) into a ReleasesConfig
    under ``releases``: the section's keys are its own record, shared by serve and api."""
    releases = {k: values.pop(k) for k in list(values) if k in RELEASES_KEYS}
    if releases:
        values["releases"] = ReleasesConfig(**releases)
    return values


def load_config(path: Path) -> ServerConfig:
    """Read a TOML config file; relative paths in it are relative to the file's folder."""
    values = read_sections(path, {**_SECTIONS, "releases": RELEASES_KEYS},
                           {**_TYPES, **RELEASES_TYPES})
    return ServerConfig(**split_releases(values))
