"""The unit's /metrics: rendered from a health report in Prometheus' text format (parsed back
by prometheus-client's own parser where it is installed), and refused on any interface but
loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gridedge.config import ConfigError, load
from gridedge.metrics import check_local, render

BASE = """
data_dir = "/data/gridedge"
[edge]
firmware_version = "2026.11.1"
[uplink]
host = "cloud.example.net"
port = 7400
"""

REPORT: dict[str, Any] = {
    "healthy": True,
    "snapshot": {
        "now": 1_796_000_100.0,
        "started_at": 1_796_000_000.0,
        "parts": {"journal": {"running": True, "restarts": 0},
                  "radio": {"running": True, "restarts": 2},
                  "uplink": {"running": False, "restarts": 5}},
        "radio_last_frame_at": 1_796_000_090.0,
        "details": {
            "firmware_version": "2026.11.1", "boot_slot": "A",
            "journal_oldest_pending_at": 1_796_000_100 - 3600,
            "journal": {"pending": 17, "size_bytes": 4096, "max_bytes": 1 << 25,
                        "evicted_total": 0, "disk_full": False},
            "uplink": {"connected": True, "last_connected_at": 1_796_000_040.0,
                       "full_handshakes": 1, "resumed_handshakes": 9},
            "traffic_per_day": {"2026-11-30": (10, 20), "2026-12-01": (1234, 567)},
            "radio": {"frames_ok": 900, "dropped_crc": 3, "dropped_length": 1, "meters": 12,
                      "intervals_owed": 4},
        },
    },
}


def test_render_gives_every_unit_metric() -> None:
    """Frames good/bad, meters, journal backlog, uplink state, bytes today, restarts by part."""
    text = render(REPORT, today="2026-12-01")
    for line in (
        'gridedge_part_restarts_total{part="radio"} 2',
        'gridedge_part_restarts_total{part="uplink"} 5',
        'gridedge_part_running{part="uplink"} 0',
        "gridedge_journal_pending 17",
        "gridedge_journal_oldest_pending_age_seconds 3600",
        "gridedge_uplink_connected 1",
        "gridedge_uplink_last_connected_seconds 60",
        'gridedge_uplink_handshakes_total{kind="resumed"} 9',
        'gridedge_uplink_bytes_today{direction="up"} 1234',
        'gridedge_uplink_bytes_today{direction="down"} 567',
        "gridedge_radio_frames_ok_total 900",
        'gridedge_radio_frames_dropped_total{reason="crc"} 3',
        "gridedge_radio_meters 12",
        "gridedge_radio_last_frame_seconds 10",
        "gridedge_uptime_seconds 100",
        'gridedge_info{boot_slot="A",firmware_version="2026.11.1"} 1',
    ):
        assert line in text.splitlines(), line


def test_render_is_valid_exposition_format() -> None:
    """prometheus-client's parser reads it back (skipped where it is not installed, e.g. in the
    unit's library set)."""
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(
        render(REPORT, today="2026-12-01"))}
    assert families["gridedge_radio_frames_ok"].type == "counter"
    assert families["gridedge_journal_pending"].type == "gauge"


@pytest.mark.parametrize("listen", ["tcp:9100:interface=127.0.0.1", r"tcp6:9100:interface=\:\:1",
                                    "unix:/run/gridedge/metrics.sock"])
def test_loopback_endpoints_are_accepted(tmp_path: Path, listen: str) -> None:
    """A loopback interface or a Unix socket is fine."""
    path = tmp_path / "g.toml"
    path.write_text(BASE + f"[health]\nmetrics_listen = '{listen}'\n")
    assert load(path, cmdline=tmp_path / "none").health.metrics_listen == listen


@pytest.mark.parametrize("listen", ["tcp:9100", "tcp:9100:interface=0.0.0.0",
                                    "tcp:9100:interface=192.168.7.2", "ssl:9100"])
def test_other_interfaces_are_refused(tmp_path: Path, listen: str) -> None:
    """Every interface, or a non-loopback one, is a configuration error naming the key."""
    assert check_local(listen) is not None
    path = tmp_path / "g.toml"
    path.write_text(BASE + f'[health]\nmetrics_listen = "{listen}"\n')
    with pytest.raises(ConfigError, match=r"\[health\] metrics_listen"):
        load(path, cmdline=tmp_path / "none")
