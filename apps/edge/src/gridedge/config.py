"""The unit's configuration file (TOML), read once at start into frozen records.

Why strict: the file is edited by hand on a unit in the field, so a typo must
stop the start with a message naming the file, the section, the key and what
was expected, rather than be ignored and surface as a mystery hours later.
Unknown sections and keys are errors for the same reason.

How it is laid out (gridcloud.config follows the same pattern): one frozen
record per section, whose field defaults are the only place a default is
written; one small reader per section (``_read_<section>``) that type-checks
the keys present and passes only those on, so an absent key takes the record's
default; and ``_SECTIONS``, the list of sections, which is also what makes an
unknown section an error.  A default that depends on another value (a path
under ``data_dir``, ``server_name`` from ``host``, ``dead_after`` from
``heartbeat``) is worked out in its section's reader.  Adding a section: write
its record, its reader, add both to ``Config`` and ``_SECTIONS``, and document
its keys in docs/edge.md.

Example (docs/edge.md has the reference)::

    data_dir = "/data/gridedge"

    [edge]
    # firmware_version defaults to the image's /etc/gridedge/version (else the
    # gridedge package version), boot_slot to rauc.slot= from /proc/cmdline.

    [radio]
    port = "/dev/ttyS1"
    baudrate = 115200
    poll_rate = 5.0        # the radio link's tuning: gridedge.radio.LinkSettings

    [uplink]
    host = "cloud.example.net"
    port = 7400
    server_name = "cloud.example.net"
    heartbeat = 1200

    [journal]
    max_size = "64 MiB"

    [web]
    enabled = true
    address = "192.168.73.1"  # the access point's; never every interface

Tests: tests/edge/test_config.py.
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from gridwire import MAX_BOOT_SLOT, MAX_FIRMWARE_VERSION

from gridedge.commands import settings as saved_settings
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

    port: str | None = None
    baudrate: int = 115200
    link: LinkSettings = field(default_factory=LinkSettings)


@dataclass(frozen=True, slots=True, kw_only=True)
class UplinkConfig:
    """Where the cloud is and how to talk to it over a metered, flaky cellular link.

    The one home of the uplink's defaults: the reader below and the uplink
    (gridedge.uplink) both take them from here.
    """

    host: str
    port: int
    server_name: str
    tls_dir: Path
    #: Seconds without sending before a Ping keeps the carrier's NAT mapping: above the
    #: 15-minute upload cycle, so no Pings while data flows (docs/edge.md: lower it for
    #: carriers whose NAT forgets idle TCP sooner).
    heartbeat: float = 1200.0
    #: Seconds of silence before the cloud is taken for dead.  The file's default is
    #: three heartbeats (the reader works it out, as it depends on ``heartbeat``); 3600
    #: is that for the default heartbeat, for records made in code.
    dead_after: float = 3600.0
    #: TCP connect, and TLS + Hello -> Welcome.
    connect_timeout: float = 30.0
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    backoff_factor: float = 2.0
    #: Wait after the cloud said the unit is revoked (docs/edge.md, "Backoff policy").
    backoff_revoked: float = 21600.0
    max_in_flight: int = 4
    #: Readings per ReadingBatch at most: above the meters of one interval, so that an
    #: interval is one upload (the cloud's Welcome may lower it).
    batch_records: int = 4000
    #: Used only with upload_deadline = 0: how long a partial batch waits for more.
    batch_linger: float = 1.0
    #: Seconds a reading may wait for the rest of its interval before it is uploaded anyway
    #: (gridedge.uplink.schedule); 0: upload within batch_linger, as before.
    upload_deadline: float = 600.0
    #: Megabytes (10**6 bytes, both directions, TLS included) the link may use per UTC
    #: month; 0: no budget (gridedge.uplink.budget).
    budget_mb_per_month: float = 0.0
    #: "1.3" (default) or "1.2": TLS 1.2 resumes by session id in about 350 bytes instead of
    #: about 650, at the cost of forward secrecy per resumed connection and of sending the
    #: unit's certificate in clear in full handshakes (gridedge.uplink.tls, docs/edge.md).
    tls_version: str = "1.3"


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
    #: Twisted endpoint of the Prometheus /metrics page, loopback only; empty: none
    #: (gridedge.metrics).
    metrics_listen: str = ""
    #: Seconds between health summaries journalled for the cloud (gridedge.summary);
    #: 0: none.
    summary_interval: float = 3600.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """How much the unit logs."""

    level: str = "info"


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """The local web page for technicians (gridedge.web): off unless ``enabled``; bound to one
    address, loopback unless the file names the access point's, never every interface by
    default."""

    enabled: bool = False
    address: str = "127.0.0.1"
    port: int = 8443
    #: Certificate, accounts, sessions, the provisioning token and uploads (on /data).
    state_dir: Path = Path("web")
    #: Seconds a login lasts without activity.
    session_ttl: float = 43200.0
    #: Failed logins from one address within ``login_window`` seconds before it is refused.
    login_attempts: int = 5
    login_window: float = 300.0
    #: Largest request body, bytes (forms); firmware bundles have ``max_upload``.
    max_body: int = 16 << 10
    max_upload: int = 256 << 20
    #: Seconds between two gatherings of the dashboard's numbers for open pages (Server-Sent
    #: Events); meter changes are pushed at once, at most once per ``live_gap`` seconds.
    live_every: float = 1.0
    live_gap: float = 0.25
    #: RAUC's slot status file (board/common/rauc/system.conf.in): the other slot's version.
    rauc_status: Path = Path("/data/rauc/status.raucs")


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """What the command executor needs from the file (gridedge.commands)."""

    #: run after the clean stop that a reboot (a command, an installed update) causes.
    #: Empty, the default: exit with status ``EXIT_REBOOT`` (gridedge.cli) and let the
    #: service wrapper, which runs as root, reboot the unit (gridedge runs unprivileged
    #: and may not); a supervisor that restarts gridedge treats it as any exit.
    reboot_command: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class FirmwareConfig:
    """Over-the-air updates (gridedge.firmware): the agent that takes offers from the cloud
    and bundles from the local page, and installs them with RAUC."""

    #: False: offers from the cloud are logged and ignored (a unit updated by hand only).
    enabled: bool = True
    #: The CA certificates a bundle's signature must chain to (RAUC's own keyring).
    keyring: Path = Path("/etc/rauc/keyring.pem")
    #: "now": reboot into the new slot once installed; "window": wait for ``window``.
    reboot: str = "now"
    #: Local-time maintenance window (minutes since midnight, start and end; end < start
    #: spans midnight), used when ``reboot = "window"``.
    window: tuple[int, int] = (120, 240)
    #: Room kept free on the data partition beyond the download itself, bytes.
    min_free_bytes: int = 64 << 20
    #: Chunk requests per second at most (the link budget; one chunk in flight at a time).
    max_chunk_rate: float = 4.0


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """Renewal of the unit's certificate over the uplink (gridedge.uplink.renewal)."""

    #: Days before the certificate expires that the unit asks the cloud for a new one
    #: (fractions allowed; 0: never ask).
    renew_before_days: float = 30.0
    #: Seconds to wait before asking again after the cloud refused.
    refused_wait: float = 86400.0


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
    log: LogConfig
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    web: WebConfig = field(default_factory=WebConfig)
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    certificate: CertificateConfig = field(default_factory=CertificateConfig)


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


#: The firmware image's version (board/common/post-build.sh): what a release's RAUC manifest
#: says, so the cloud can tell which units run a release (docs/updates.md).
IMAGE_VERSION = Path("/etc/gridedge/version")


def _image_version() -> str | None:
    try:
        return IMAGE_VERSION.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


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
        """The key's value checked against ``kind``; ``default`` when it is absent."""
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

    def given(self, out: dict[str, Any], key: str, kind: type[Any], *,
              positive: bool = False) -> None:
        """Put the key's checked value into ``out`` only if the file gives it (so that the
        section record's default applies otherwise)."""
        if key not in self.table:
            self.used.add(key)
            return
        value = self.get(key, kind)
        if positive and value <= 0:
            raise self.error(key, f"must be > 0, got {value}")
        out[key] = value

    def path(self, key: str, base: Path, default: str) -> Path:
        """A path; a relative one is taken from ``base``."""
        value = Path(self.get(key, str, default))
        return value if value.is_absolute() else base / value

    def check_unknown(self) -> None:
        unknown = set(self.table) - self.used
        if unknown:
            raise self.error(
                None, f"unknown key(s) {', '.join(sorted(unknown))} (typo? see docs/edge.md)"
            )


def _read_edge(s: _Section, data_dir: Path, cmdline: Path) -> EdgeConfig:
    edge = EdgeConfig(
        firmware_version=(s.get("firmware_version", str, None) or _image_version()
                          or _package_version()),
        boot_slot=s.get("boot_slot", str, None) or boot_slot_from_cmdline(cmdline),
    )
    # Hello's text fields are bounded by gridwire (docs/protocol.md).
    for key, limit in (("firmware_version", MAX_FIRMWARE_VERSION), ("boot_slot", MAX_BOOT_SLOT)):
        if len(getattr(edge, key).encode()) > limit:
            raise s.error(key, f"at most {limit} bytes of UTF-8")
    return edge


def _read_radio(s: _Section, data_dir: Path, cmdline: Path) -> RadioConfig:
    given: dict[str, Any] = {}
    s.given(given, "port", str)
    s.given(given, "baudrate", int, positive=True)
    return RadioConfig(link=_link_settings(s), **given)


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


def _read_uplink(s: _Section, data_dir: Path, cmdline: Path) -> UplinkConfig:
    host = s.get("host", str, required=True)
    port = s.get("port", int, required=True)
    if not 1 <= port <= 65535:
        raise s.error("port", f"must be 1..65535, got {port}")
    given: dict[str, Any] = {}
    for key in ("heartbeat", "dead_after", "connect_timeout", "backoff_initial",
                "backoff_max", "backoff_factor", "backoff_revoked"):
        s.given(given, key, float, positive=True)
    for key in ("max_in_flight", "batch_records"):
        s.given(given, key, int, positive=True)
    s.given(given, "batch_linger", float)
    s.given(given, "upload_deadline", float)
    s.given(given, "budget_mb_per_month", float)
    if given.get("budget_mb_per_month", 0.0) < 0:
        raise s.error("budget_mb_per_month", "must be >= 0 (0: no budget)")
    if given.get("upload_deadline", 0.0) < 0:
        raise s.error("upload_deadline", "must be >= 0 (0: upload within batch_linger)")
    s.given(given, "tls_version", str)
    if given.get("tls_version", "1.3") not in ("1.3", "1.2"):
        raise s.error("tls_version", '"1.3" (default) or "1.2"')
    uplink = UplinkConfig(
        host=host,
        port=port,
        server_name=s.get("server_name", str, host),
        tls_dir=s.path("tls_dir", data_dir, "tls"),
        **given,
    )
    if "dead_after" not in given:
        uplink = replace(uplink, dead_after=3 * uplink.heartbeat)
    if uplink.dead_after <= uplink.heartbeat:
        raise s.error("dead_after", f"must be longer than heartbeat ({uplink.heartbeat} s)")
    if uplink.backoff_max < uplink.backoff_initial:
        raise s.error("backoff_max", "must be >= backoff_initial")
    if uplink.backoff_revoked < uplink.backoff_max:
        raise s.error("backoff_revoked", "must be >= backoff_max")
    return uplink


def _read_journal(s: _Section, data_dir: Path, cmdline: Path) -> JournalConfig:
    given: dict[str, Any] = {}
    if "max_size" in s.table:
        try:
            given["max_bytes"] = parse_size(s.get("max_size", object))
        except ValueError as exc:
            raise s.error("max_size", str(exc)) from None
        if given["max_bytes"] < 128 * 1024:
            raise s.error("max_size",
                          f"must be at least 128 KiB, got {given['max_bytes']} bytes")
    s.used.add("max_size")
    if "synchronous" in s.table:
        sync = s.get("synchronous", str).upper()
        if sync not in ("FULL", "NORMAL", "EXTRA"):
            raise s.error("synchronous", f"must be full, normal or extra, got {sync.lower()!r}")
        given["synchronous"] = sync
    s.used.add("synchronous")
    return JournalConfig(path=s.path("file", data_dir, "journal.db"), **given)


def _read_health(s: _Section, data_dir: Path, cmdline: Path) -> HealthConfig:
    given: dict[str, Any] = {}
    s.given(given, "radio_window", float, positive=True)
    s.given(given, "uplink_window", float, positive=True)
    s.given(given, "metrics_listen", str)
    s.given(given, "summary_interval", float)
    if given.get("summary_interval", 0.0) < 0:
        raise s.error("summary_interval", "must be >= 0 (0: no health summaries)")
    if given.get("metrics_listen"):
        from gridedge.metrics import check_local

        why = check_local(given["metrics_listen"])
        if why is not None:
            raise s.error("metrics_listen", why)
    health = HealthConfig(socket=s.path("socket", data_dir, "health.sock"), **given)
    if len(str(health.socket).encode()) > 107:  # sun_path holds 108 bytes with the NUL
        raise s.error("socket", f"path longer than 107 bytes: {health.socket}")
    return health


def _read_log(s: _Section, data_dir: Path, cmdline: Path) -> LogConfig:
    given: dict[str, Any] = {}
    s.given(given, "level", str)
    if "level" in given:
        given["level"] = given["level"].lower()
        if given["level"] not in ("debug", "info", "warn", "error"):
            raise s.error("level",
                          f"must be debug, info, warn or error, got {given['level']!r}")
    return LogConfig(**given)


def _read_commands(s: _Section, data_dir: Path, cmdline: Path) -> CommandsConfig:
    given: dict[str, Any] = {}
    s.given(given, "reboot_command", list)
    if "reboot_command" in given:
        argv = given["reboot_command"]
        if not all(isinstance(a, str) and a for a in argv):
            raise s.error("reboot_command", "must be a list of non-empty strings")
        given["reboot_command"] = tuple(argv)
    return CommandsConfig(**given)


def _read_certificate(s: _Section, data_dir: Path, cmdline: Path) -> CertificateConfig:
    given: dict[str, Any] = {}
    s.given(given, "renew_before_days", float)
    s.given(given, "refused_wait", float, positive=True)
    if given.get("renew_before_days", 0.0) < 0:
        raise s.error("renew_before_days", "must be >= 0 (0: never renew)")
    return CertificateConfig(**given)


def _read_web(s: _Section, data_dir: Path, cmdline: Path) -> WebConfig:
    given: dict[str, Any] = {}
    s.given(given, "enabled", bool)
    s.given(given, "address", str)
    if "address" in given and given["address"].strip() in ("", "0.0.0.0", "::", "*"):
        raise s.error("address", "must name one address (the access point's), "
                      f"not every interface ({given['address']!r})")
    s.given(given, "port", int)
    if "port" in given and not 1 <= given["port"] <= 65535:
        raise s.error("port", f"must be 1..65535, got {given['port']}")
    for key in ("session_ttl", "login_window", "live_every", "live_gap"):
        s.given(given, key, float, positive=True)
    s.given(given, "login_attempts", int, positive=True)
    for key in ("max_body", "max_upload"):
        if key in s.table:
            try:
                given[key] = parse_size(s.get(key, object))
            except ValueError as exc:
                raise s.error(key, str(exc)) from None
            if given[key] < 1024:
                raise s.error(key, f"must be at least 1 KiB, got {given[key]} bytes")
        s.used.add(key)
    return WebConfig(state_dir=s.path("state_dir", data_dir, "web"),
                     rauc_status=s.path("rauc_status", data_dir, "/data/rauc/status.raucs"),
                     **given)


_WINDOW = re.compile(r"^(\d{2}):(\d{2})-(\d{2}):(\d{2})$")


def parse_window(value: str) -> tuple[int, int]:
    """Minutes since midnight of "HH:MM-HH:MM" (start, end); ValueError when malformed."""
    m = _WINDOW.match(value.strip())
    if m is None:
        raise ValueError(f"expected HH:MM-HH:MM, got {value!r}")
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
        raise ValueError(f"not a time of day in {value!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"an empty window: {value!r}")
    return start, end


def _read_firmware(s: _Section, data_dir: Path, cmdline: Path) -> FirmwareConfig:
    given: dict[str, Any] = {}
    s.given(given, "enabled", bool)
    s.given(given, "reboot", str)
    if "reboot" in given and given["reboot"] not in ("now", "window"):
        raise s.error("reboot", f"must be \"now\" or \"window\", got {given['reboot']!r}")
    if "window" in s.table:
        try:
            given["window"] = parse_window(s.get("window", str))
        except ValueError as exc:
            raise s.error("window", str(exc)) from None
    s.used.add("window")
    if "min_free_mb" in s.table:
        mb = s.get("min_free_mb", int)
        if mb < 0:
            raise s.error("min_free_mb", f"must be >= 0, got {mb}")
        given["min_free_bytes"] = mb << 20
    s.used.add("min_free_mb")
    s.given(given, "max_chunk_rate", float, positive=True)
    return FirmwareConfig(keyring=s.path("keyring", data_dir, "/etc/rauc/keyring.pem"), **given)


#: Every section of the file, in the order they are checked, with its reader.
_SECTIONS = {
    "edge": _read_edge,
    "radio": _read_radio,
    "uplink": _read_uplink,
    "journal": _read_journal,
    "health": _read_health,
    "log": _read_log,
    "commands": _read_commands,
    "web": _read_web,
    "firmware": _read_firmware,
    "certificate": _read_certificate,
}


def _lay_saved_settings(raw: dict[str, Any], data_dir: Path) -> None:
    """Lay the settings changed by commands (``data_dir``/settings.toml, see
    gridedge.commands.settings) over ``raw``; a damaged file is reported and ignored,
    so a bad command can never keep the unit from starting."""
    path = data_dir / saved_settings.FILE_NAME
    try:
        saved = saved_settings.read(path)
    except ValueError as exc:
        print(f"gridedge: ignoring the saved settings: {exc}", file=sys.stderr)
        return
    for name, value in saved.items():
        section, key = name.split(".", 1)
        table = raw.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value


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
    for name, value in raw.items():
        if isinstance(value, dict) and name not in _SECTIONS:
            raise ConfigError(
                f"{path}: [{name}]: unknown section (typo? see docs/edge.md)")
    _lay_saved_settings(raw, data_dir)
    sections: dict[str, Any] = {}
    for name, read in _SECTIONS.items():
        top.used.add(name)
        s = _Section(path, name, raw.get(name))
        sections[name] = read(s, data_dir, cmdline)
        s.check_unknown()
    top.check_unknown()
    return Config(source=path, data_dir=data_dir, **sections)
