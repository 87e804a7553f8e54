"""Configuration of ``gridcloud pipeline``: a TOML file, overridable by flags.

Same reader and rules as ``gridcloud serve`` and ``gridcloud api``
(gridcloud.config.read_sections): the record's field defaults are the only
defaults, unknown sections and keys are refused, errors name the file, section
and key.  Documented in docs/pipeline.md ("Configuration").

Tests: tests/pipeline/test_pipeline_service.py.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..config import ConfigError, read_sections

_SECTIONS: dict[str, frozenset[str]] = {
    "pipeline": frozenset(
        {
            "concurrency",
            "batch_size",
            "batch_edges",
            "poll_interval",
            "max_attempts",
            "retry_backoff",
            "voltage_min",
            "voltage_max",
            "silent_intervals",
            "offline_minutes",
            "sweep_interval",
            "report_interval",
            "feed_days",
            "alarm_days",
            "demand_days",
            "trim_batch",
            "metrics_listen",
        }
    ),
    "database": frozenset({"dsn", "pool_size", "migrate"}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    """Everything ``gridcloud pipeline`` needs; see docs/pipeline.md for each key."""

    dsn: str | None = None
    #: PostgreSQL connections; 0: concurrency + 1 (one per processor and one for sweeps)
    pool_size: int = 0
    #: Apply pending schema migrations before starting (else refuse to start).
    migrate: bool = False
    #: Transactions this process runs at once (each claims its own edges).
    concurrency: int = 2
    #: Records of one edge processed per transaction, at most.
    batch_size: int = 2000
    #: Edges claimed per transaction, at most.
    batch_edges: int = 16
    #: Seconds between looks for work when no NOTIFY arrives (the fallback).
    poll_interval: float = 2.0
    #: Failed attempts at one record before it is set aside (pipeline_dead_letters).
    max_attempts: int = 3
    #: Seconds before the first retry of a failed batch; doubled each time, at most 300.
    retry_backoff: float = 1.0
    #: Voltage alarm limits, volts (230 V +10 % / -15 % by default).
    voltage_min: float = 195.5
    voltage_max: float = 253.0
    #: A meter silent this many 15-minute intervals (its unit online) raises meter_silent.
    silent_intervals: int = 4
    #: A unit offline this many minutes raises unit_offline.
    offline_minutes: int = 60
    #: Seconds between sweeps for the alarms of time passing (silent meters, offline units).
    sweep_interval: float = 30.0
    #: Seconds between the counter log lines.
    report_interval: float = 60.0
    #: Retention, applied by the sweeper (0: keep all).  feed_log rows older than this many
    #: days (a live-feed client can resume at most this far back) ...
    feed_days: int = 7
    #: ... alarms cleared this many days ago (open ones are kept; at least feed_days) ...
    alarm_days: int = 90
    #: ... and per-edge interval demand this many days older than the edge's newest interval
    #: (a reading later than that no longer counts in its edge's coincident peak).
    demand_days: int = 62
    #: Rows of each table deleted per sweep, at most (short transactions).
    trim_batch: int = 10_000
    #: Twisted endpoint serving /metrics and /healthz (plain HTTP; keep it on a private
    #: interface, as serve's and api's); empty: none.
    metrics_listen: str = ""

    def validate(self) -> PipelineConfig:
        """Return self if complete and sensible, else raise ConfigError naming the key."""
        if not self.dsn:
            raise ConfigError("missing setting: dsn (--dsn, the config file or $GRIDCLOUD_DSN)")
        for name in ("concurrency", "batch_size", "batch_edges", "poll_interval",
                     "max_attempts", "retry_backoff", "silent_intervals", "offline_minutes",
                     "sweep_interval", "report_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, not {getattr(self, name)!r}")
        for name in ("feed_days", "alarm_days", "demand_days"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, not {getattr(self, name)!r}")
        if self.trim_batch <= 0:
            raise ConfigError(f"trim_batch must be positive, not {self.trim_batch!r}")
        if self.alarm_days and (self.feed_days == 0 or self.alarm_days < self.feed_days):
            # feed_log rows name alarms: an alarm must not go before the rows naming it
            raise ConfigError("alarm_days must be at least feed_days (and 0 when feed_days is 0)")
        if self.pool_size < 0:
            raise ConfigError(f"pool_size must not be negative, not {self.pool_size!r}")
        if not 0 <= self.voltage_min < self.voltage_max:
            raise ConfigError("voltage_min must be below voltage_max (volts)")
        return self

    @property
    def connections(self) -> int:
        return self.pool_size or self.concurrency + 1

    def with_overrides(self, **values: Any) -> PipelineConfig:
        """A copy with the given non-None values replaced (command-line flags)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


_TYPES = {f.name: str(f.type) for f in fields(PipelineConfig)}


def load_pipeline_config(path: Path) -> PipelineConfig:
    """Read a ``gridcloud pipeline`` TOML config file."""
    return PipelineConfig(**read_sections(path, _SECTIONS, _TYPES))
