"""The configuration file: a full example loads with the documented defaults, and every
kind of mistake gives a message naming the file, the section and the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from gridedge.config import ConfigError, boot_slot_from_cmdline, load, parse_size
from gridedge.radio import LinkSettings

DOCS = Path(__file__).resolve().parents[2] / "docs" / "edge.md"

EXAMPLE = """
data_dir = "/data/gridedge"

[edge]
firmware_version = "2026.11.1"

[radio]
port = "/dev/ttyS1"
baudrate = 115200

[uplink]
host = "cloud.example.net"
port = 7400
heartbeat = 45

[journal]
max_size = "32 MiB"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gridedge.toml"
    p.write_text(text)
    return p


def test_example_loads_with_defaults(tmp_path: Path) -> None:
    """The documented example loads; defaults fill the rest; rauc.slot comes from cmdline."""
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyO0 root=/dev/mmcblk0p2 rauc.slot=B ro\n")
    c = load(write(tmp_path, EXAMPLE), cmdline=cmdline)
    assert c.edge.firmware_version == "2026.11.1" and c.edge.boot_slot == "B"
    assert c.radio.port == "/dev/ttyS1"
    assert c.radio.link == LinkSettings()
    assert c.uplink.server_name == "cloud.example.net"
    assert c.uplink.heartbeat == 45.0 and c.uplink.dead_after == 135.0
    assert c.uplink.tls_dir == Path("/data/gridedge/tls")
    assert c.journal.max_bytes == 32 << 20 and c.journal.synchronous == "FULL"
    assert c.journal.path == Path("/data/gridedge/journal.db")
    assert c.health.socket == Path("/data/gridedge/health.sock")
    assert c.uplink.upload_deadline == 600.0 and c.uplink.budget_mb_per_month == 0.0
    assert c.uplink.batch_records == 4000


def test_boot_slot_unknown_without_rauc(tmp_path: Path) -> None:
    """No rauc.slot= (or no /proc/cmdline) gives 'unknown', not a crash."""
    assert boot_slot_from_cmdline(tmp_path / "missing") == "unknown"
    (tmp_path / "c").write_text("quiet")
    assert boot_slot_from_cmdline(tmp_path / "c") == "unknown"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('data_dir = "/d"\n[uplink]\nport = 1\n', r"\[uplink\] host: is required"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = "x"\n',
         r"\[uplink\] port: expected int, got 'x'"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 70000\n', r"port: must be 1\.\.65535"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\nheartbeet = 5\n',
         r"\[uplink\]: unknown key\(s\) heartbeet"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\n[journal]\nmax_size = "lots"\n',
         r"\[journal\] max_size: expected a size"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\nheartbeat = 60\ndead_after = 30\n',
         r"dead_after: must be longer than heartbeat"),
        ('[uplink]\nhost = "h"\nport = 1\n', r"top level data_dir: is required"),
        ('data_dir = "/d"\n[uplink\n', r"not valid TOML"),
        (f'data_dir = "/{"d" * 120}"\n[uplink]\nhost = "h"\nport = 1\n',
         r"\[health\] socket: path longer than 107 bytes"),
        ('data_dir = "/d"\n[edge]\nboot_slot = "slot-number-nine"\n[uplink]\nhost = "h"\n'
         'port = 1\n', r"\[edge\] boot_slot: at most 8 bytes"),
        ('data_dir = "/d"\nradio = 3\n[uplink]\nhost = "h"\nport = 1\n',
         r"\[radio\]: must be a table"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\n[wbe]\nport = 80\n',
         r"\[wbe\]: unknown section"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\n[web]\naddress = "0.0.0.0"\n',
         r"\[web\] address: must name one address"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\n[web]\nenabled = "yes"\n',
         r"\[web\] enabled: expected bool"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\n[web]\nmax_body = "1 B"\n',
         r"\[web\] max_body: must be at least 1 KiB"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\n[web]\npassword = "x"\n',
         r"\[web\]: unknown key\(s\) password"),
        ('data_dir = "/d"\n[radio]\npoll_window = 17\n[uplink]\nhost = "h"\nport = 1\n',
         r"\[radio\] poll_window: must be 1\.\.16"),
        ('data_dir = "/d"\n[radio]\npoll_rate = "fast"\n[uplink]\nhost = "h"\nport = 1\n',
         r"\[radio\] poll_rate: expected float, got 'fast'"),
        ('data_dir = "/d"\n[radio]\nmax_held_total = 1.5\n[uplink]\nhost = "h"\nport = 1\n',
         r"\[radio\] max_held_total: expected int, got 1\.5"),
        ('data_dir = "/d"\n[radio]\nmax_held_total = 0\n[uplink]\nhost = "h"\nport = 1\n',
         r"\[radio\] max_held_total: must be >= 1, got 0"),
        ('data_dir = "/d"\n[radio]\nbackoff_max = 1\n[uplink]\nhost = "h"\nport = 1\n',
         r"\[radio\] backoff_max: must be >= backoff_initial"),
        ('data_dir = "/d"\n[radio]\npol_rate = 5\n[uplink]\nhost = "h"\nport = 1\n',
         r"\[radio\]: unknown key\(s\) pol_rate"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\nbudget_mb_per_month = -5\n',
         r"\[uplink\] budget_mb_per_month: must be >= 0"),
        ('data_dir = "/d"\n[uplink]\nhost = "h"\nport = 1\nupload_deadline = -1\n',
         r"\[uplink\] upload_deadline: must be >= 0"),
    ],
)
def test_mistakes_are_named(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake is a ConfigError that names the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file says so and hints at --config."""
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "nope.toml")


def test_sizes() -> None:
    """Sizes accept bytes and binary/decimal units."""
    assert parse_size(1000) == 1000
    assert parse_size("64 MiB") == 64 << 20
    assert parse_size("500kB") == 500_000
    with pytest.raises(ValueError):
        parse_size("-1 MiB")


def test_radio_link_settings_from_the_file(tmp_path: Path) -> None:
    """Every [radio] tuning key reaches LinkSettings; keys not given keep its defaults."""
    text = EXAMPLE.replace(
        "baudrate = 115200\n",
        "baudrate = 115200\npoll_rate = 20\npoll_window = 8\nmax_held_total = 10000\n"
        "overdue_after = 300\n",
    )
    link = load(write(tmp_path, text)).radio.link
    assert link == dataclasses.replace(
        LinkSettings(), poll_rate=20.0, poll_window=8, max_held_total=10_000, overdue_after=300
    )
    assert isinstance(link.poll_rate, float)


def test_docs_list_every_radio_key_with_its_default() -> None:
    """docs/edge.md's table has a row per LinkSettings field, with the dataclass's default."""
    rows = dict(re.findall(r"^\| `\[radio\] (\w+)` \| ([^|]+?) \|", DOCS.read_text(), re.M))
    for f in dataclasses.fields(LinkSettings):
        assert f.name in rows, f"docs/edge.md has no row for [radio] {f.name}"
        assert rows[f.name] == repr(f.default), f"[radio] {f.name}: docs say {rows[f.name]}"


def test_web_section(tmp_path: Path) -> None:
    """[web] is off by default and on loopback when enabled without an address; its paths
    are under data_dir and sizes take units."""
    c = load(write(tmp_path, EXAMPLE))
    assert not c.web.enabled and c.web.address == "127.0.0.1"
    text = EXAMPLE + '\n[web]\nenabled = true\nport = 9443\nmax_upload = "64 MiB"\n'
    web = load(write(tmp_path, text)).web
    assert web.enabled and web.address == "127.0.0.1" and web.port == 9443
    assert web.max_upload == 64 << 20 and web.state_dir == Path("/data/gridedge/web")


def test_firmware_section(tmp_path: Path) -> None:
    """[firmware]: the defaults of docs/updates.md, the window as minutes, and every mistake
    named with its key."""
    fw = load(write(tmp_path, EXAMPLE)).firmware
    assert fw.enabled and fw.reboot == "now" and fw.window == (120, 240)
    assert fw.keyring == Path("/etc/rauc/keyring.pem") and fw.min_free_bytes == 64 << 20
    assert fw.max_chunk_rate == 4.0
    text = EXAMPLE + ('\n[firmware]\nenabled = false\nreboot = "window"\nwindow = "23:30-01:15"\n'
                      'min_free_mb = 10\nmax_chunk_rate = 1\nkeyring = "keys/ca.pem"\n')
    fw = load(write(tmp_path, text)).firmware
    assert not fw.enabled and fw.reboot == "window" and fw.window == (1410, 75)
    assert fw.min_free_bytes == 10 << 20 and fw.max_chunk_rate == 1.0
    assert fw.keyring == Path("/data/gridedge/keys/ca.pem")
    for bad, message in (('reboot = "later"', r"\[firmware\] reboot: must be"),
                         ('window = "2-4"', r"\[firmware\] window: expected HH:MM-HH:MM"),
                         ('window = "25:00-01:00"', "not a time of day"),
                         ('window = "02:00-02:00"', "an empty window"),
                         ("min_free_mb = -1", r"min_free_mb: must be >= 0"),
                         ("max_chunk_rate = 0", r"max_chunk_rate: must be > 0"),
                         ("chunk_rate = 1", "unknown key")):
        with pytest.raises(ConfigError, match=message):
            load(write(tmp_path, EXAMPLE + f"\n[firmware]\n{bad}\n"))


def test_docs_list_every_firmware_key() -> None:
    text = DOCS.read_text()
    for key in ("enabled", "keyring", "reboot", "window", "min_free_mb", "max_chunk_rate"):
        assert f"`[firmware] {key}`" in text, key


def test_firmware_version_is_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without [edge] firmware_version, Hello says the image's /etc/gridedge/version: the
    version its RAUC bundle carries (docs/updates.md)."""
    import gridedge.config

    image = tmp_path / "version"
    image.write_text("2026.12-3-gabcdef\n")
    monkeypatch.setattr(gridedge.config, "IMAGE_VERSION", image)
    text = EXAMPLE.replace('firmware_version = "2026.11.1"\n', "")
    assert load(write(tmp_path, text)).edge.firmware_version == "2026.12-3-gabcdef"
    image.unlink()
    assert load(write(tmp_path, text)).edge.firmware_version != ""
    assert load(write(tmp_path, EXAMPLE)).edge.firmware_version == "2026.11.1"
