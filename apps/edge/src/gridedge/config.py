"""The unit's configuration file (TOML), read once at start into frozen records.

Why strict: the file is edited by hand on a unit in the field, so a typo must
stop the start with a message naming the file, the section, the key and what
was expected, rather than be ignored and surface as a mystery hours later.
Unknown keys are errors for the same reason.

Example (docs/edge.md has the reference)::

    data_dir = "/data/gridedge"

    [edge]
    # firmware_version defaults to the gridedge package version,
    # boot_slot to rauc.slot= from /proc/cmdline.

    [radio]
    port = "/dev/ttyS1"
    baudrate = 115200
    poll_rate = 5.0        # the radio link's tuning: gridedge.radio.LinkSettings

    [uplink]
    host = "cloud.example.net"
    port = 7400
    server_name = "cloud.example.net"
    heartbeat = 60

    [journal]
    max_size = "64 MiB"

Tests: tests/edge/test_config.py.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from gridedge.radio.settings import LinkSettings, SettingError

T = TypeVar("T")


class ConfigError(Exception):
    """The configuration file is missing, unreadable or wrong; the message says where and why."""


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    """What the unit says about itself in Hello."""

    firmware_version: str
    boot_slot: str


@dataclass(frozen=True, slots=True)
class RadioConfig:
    """The UART to the radio module (None in [radio] port: no radio, e.g. a bench unit),
    and the radio link's tuning (every other [radio] key)."""

    port: str | None
    baudrate: int = 115200
    link: LinkSettings = field(default_factory=LinkSettings)


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """Where the cloud is and how to talk to it over a metered, flaky cellular link."""

    host: str
    port: int
    server_name: str
    tls_dir: Path
    heartbeat: float = 60.0
    dead_after: float = 180.0
    connect_timeout: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    backoff_factor: float = 2.0
    max_in_flight: int = 4
    batch_records: int = 500
    batch_linger: float = 1.0


@dataclass(frozen=True, slots=True)
class JournalConfig:
    """The journal's file and its bound."""

    path: Path
    max_bytes: int = 64 << 20
    synchronous: str = "FULL"


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Where `gridedge health` asks, and the windows of its rule (seconds)."""

    socket: Path
    radio_window: float = 300.0
    uplink_window: float = 900.0


@dataclass(frozen=True, slots=True)
class Config:
    """The whole file."""

    source: Path
    data_dir: Path
    edge: EdgeConfig
    radio: RadioConfig
    uplink: UplinkConfig
    journal: JournalConfig
    health: HealthConfig
    log_level: str = "info"
    extra: Mapping[str, Any] = field(default_factory=dict)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2,
          "gb": 1000**3, "gib": 1024**3}


def parse_size(value: object) -> int:
    """Bytes from an int or a string like "64 MiB" / "500kB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(float(m.group(1)) * _UNITS[(m.group(2) or "B").lower()])
    raise ValueError(f"expected a size such as 64 MiB or a number of bytes, got {value!r}")


def boot_slot_from_cmdline(cmdline: Path = Path("/proc/cmdline")) -> str:
    """RAUC's rauc.slot= kernel argument (set by the U-Boot script), or "unknown"."""
    try:
        words = cmdline.read_text().split()
    except OSError:
        return "unknown"
    for word in words:
        if word.startswith("rauc.slot="):
            return word.split("=", 1)[1] or "unknown"
    return "unknown"


def _package_version() -> str:
    try:
        return metadata.version("gridedge")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class _Section:
    """Typed reads from one table of the file, remembering which keys were used."""

    def __init__(self, source: Path, name: str, table: object) -> None:
        self.source = source
        self.name = name
        if table is None:
            table = {}
        if not isinstance(table, dict):
            raise self.error(None, "must be a table")
        self.table: dict[str, Any] = table
        self.used: set[str] = set()

    def error(self, key: str | None, why: str) -> ConfigError:
        where = f"[{self.name}]" if self.name else "top level"
        if key:
            where += f" {key}"
        return ConfigError(f"{self.source}: {where}: {why}")

    def get(self, key: str, kind: type[T], default: T | None = None, *,
            required: bool = False) -> T:
        self.used.add(key)
        if key not in self.table:
            if required:
                raise self.error(key, "is required")
            return default  # type: ignore[return-value]
        value = self.table[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {kind.__name__}, got {value!r}")
        return value

    def positive(self, key: str, default: float) -> float:
        value = self.get(key, float, default)
        if value <= 0:
            raise self.error(key, f"must be > 0, got {value}")
        return value

    def check_unknown(self, allowed_tables: tuple[str, ...] = ()) -> None:
        unknown = set(self.table) - self.used - set(allowed_tables)
        if unknown:
            raise self.error(
                None, f"unknown key(s) {', '.join(sorted(unknown))} (typo? see docs/edge.md)"
            )


def _link_settings(s: _Section) -> LinkSettings:
    """The radio link's tuning from [radio]: one key per LinkSettings field, which holds the
    defaults and the range checks (its SettingError names the key)."""
    defaults = LinkSettings()
    values: dict[str, Any] = {}
    for f in fields(LinkSettings):
        default = getattr(defaults, f.name)
        values[f.name] = s.get(f.name, float if isinstance(default, float) else int, default)
    try:
        return LinkSettings(**values)
    except SettingError as exc:
        raise s.error(exc.key, exc.why) from None


_SECTIONS = ("edge", "radio", "uplink", "journal", "health", "web", "log")


def load(path: Path, *, cmdline: Path = Path("/proc/cmdline")) -> Config:
    """Read and check ``path``; raises ConfigError with a precise message on any problem."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (give the file with --config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None

    top = _Section(path, "", raw)
    data_dir = Path(top.get("data_dir", str, required=True))
    if not data_dir.is_absolute():
        data_dir = (path.parent / data_dir).resolve()
    top.check_unknown(_SECTIONS)

    s = _Section(path, "edge", raw.get("edge"))
    edge = EdgeConfig(
        firmware_version=s.get("firmware_version", str, None) or _package_version(),
        boot_slot=s.get("boot_slot", str, None) or boot_slot_from_cmdline(cmdline),
    )
    # The limits of Hello's text fields (docs/protocol.md).
    for key, limit in (("firmware_version", 64), ("boot_slot", 8)):
        if len(getattr(edge, key).encode()) > limit:
            raise s.error(key, f"at most {limit} bytes of UTF-8")
    s.check_unknown()

    s = _Section(path, "radio", raw.get("radio"))
    baud = s.get("baudrate", int, 115200)
    if baud <= 0:
        raise s.error("baudrate", f"must be > 0, got {baud}")
    radio = RadioConfig(port=s.get("port", str, None), baudrate=baud, link=_link_settings(s))
    s.check_unknown()

    s = _Section(path, "uplink", raw.get("uplink"))
    host = s.get("host", str, required=True)
    port = s.get("port", int, required=True)
    if not 1 <= port <= 65535:
        raise s.error("port", f"must be 1..65535, got {port}")
    heartbeat = s.positive("heartbeat", 60.0)
    tls_dir = Path(s.get("tls_dir", str, str(data_dir / "tls")))
    uplink = UplinkConfig(
        host=host,
        port=port,
        server_name=s.get("server_name", str, host),
        tls_dir=tls_dir if tls_dir.is_absolute() else data_dir / tls_dir,
        heartbeat=heartbeat,
        dead_after=s.positive("dead_after", 3 * heartbeat),
        connect_timeout=s.positive("connect_timeout", 30.0),
        backoff_initial=s.positive("backoff_initial", 1.0),
        backoff_max=s.positive("backoff_max", 300.0),
        backoff_factor=s.positive("backoff_factor", 2.0),
        max_in_flight=int(s.positive("max_in_flight", 4)),
        batch_records=int(s.positive("batch_records", 500)),
        batch_linger=s.get("batch_linger", float, 1.0),
    )
    if uplink.dead_after <= uplink.heartbeat:
        raise s.error("dead_after", f"must be longer than heartbeat ({uplink.heartbeat} s)")
    if uplink.backoff_max < uplink.backoff_initial:
        raise s.error("backoff_max", "must be >= backoff_initial")
    s.check_unknown()

    s = _Section(path, "journal", raw.get("journal"))
    try:
        max_bytes = parse_size(s.get("max_size", object, "64 MiB"))
    except ValueError as exc:
        raise s.error("max_size", str(exc)) from None
    if max_bytes < 128 * 1024:
        raise s.error("max_size", f"must be at least 128 KiB, got {max_bytes} bytes")
    sync = s.get("synchronous", str, "full").upper()
    if sync not in ("FULL", "NORMAL", "EXTRA"):
        raise s.error("synchronous", f"must be full, normal or extra, got {sync.lower()!r}")
    journal = JournalConfig(
        path=data_dir / s.get("file", str, "journal.db"), max_bytes=max_bytes, synchronous=sync
    )
    s.check_unknown()

    s = _Section(path, "health", raw.get("health"))
    health = HealthConfig(
        socket=Path(s.get("socket", str, str(data_dir / "health.sock"))),
        radio_window=s.positive("radio_window", 300.0),
        uplink_window=s.positive("uplink_window", 900.0),
    )
    if len(str(health.socket).encode()) > 107:  # sun_path holds 108 bytes with the NUL
        raise s.error("socket", f"path longer than 107 bytes: {health.socket}")
    s.check_unknown()

    s = _Section(path, "log", raw.get("log"))
    level = s.get("level", str, "info").lower()
    if level not in ("debug", "info", "warn", "error"):
        raise s.error("level", f"must be debug, info, warn or error, got {level!r}")
    s.check_unknown()

    return Config(
        source=path,
        data_dir=data_dir,
        edge=edge,
        radio=radio,
        uplink=uplink,
        journal=journal,
        health=health,
        log_level=level,
        extra={"web": raw.get("web", {})},
    )
