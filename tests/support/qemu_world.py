"""The world around a unit in the boot tests: gridsim as its radio, gridcloud with its
PostgreSQL database on the host, and the unit's provisioning (configuration and certificate).

Tests: a helper of tests/qemu/test_qemu_*.py (fixture 'world' in tests/qemu/conftest.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from support import edge_harness
from support.qemu_unit import Unit, run_qemu

#: What the unit's gridedge.toml calls the cloud; the guest reaches the host's loopback here.
HOST_FROM_GUEST = "10.0.2.2"
#: The radio module's UART in the guest: a PCI 16550 (board/qemu-ci/run_qemu.py), /dev/ttyS1
#: as on the BeagleBone.
GUEST_RADIO = "/dev/ttyS1"
DATA = "/data/gridedge"
#: The local web page: on the guest's network address (the CI image has no Wi-Fi access
#: point; this address plays its part), reached from the host through QEMU's forwarded port.
GUEST_ADDRESS = run_qemu.GUEST_ADDRESS
GUEST_WEB_PORT = 8443


@dataclass
class World:
    """What surrounds the unit: its radio (gridsim), the cloud and the cloud's database."""

    root: Path
    pki: edge_harness.Pki
    cloud: edge_harness.Cloud
    sim: edge_harness.Sim
    dsn: str

    def stored_rows(self) -> int:
        return edge_harness.stored_rows(self.dsn)

    def provision(self, unit: Unit) -> None:
        """Give a booted unit its configuration and certificate on /data, over the console,
        as the factory would; the gridedge service starts on its own once the file is there."""
        provision_unit(unit, self.pki.edge_tls, edge_config(self.cloud.port))


def provision_unit(unit: Unit, tls: Path, config: str) -> None:
    """Write ``tls`` (ca.pem, edge.pem, edge.key) and the gridedge.toml ``config`` to the
    unit's /data over its console."""
    for name, mode in (("ca.pem", "0644"), ("edge.pem", "0644"), ("edge.key", "0600")):
        unit.write_file(f"{DATA}/tls/{name}", (tls / name).read_bytes(), mode=mode,
                        owner="gridedge")
    unit.check(f"chown gridedge:gridedge {DATA}/tls && chmod 0750 {DATA}/tls")
    unit.write_file(f"{DATA}/gridedge.toml", config.encode(), owner="gridedge")


def edge_config(cloud_port: int) -> str:
    """The unit's gridedge.toml: radio on the PCI UART, the cloud on the host, short windows.

    firmware_version and boot_slot are left to gridedge (package version, rauc.slot=)."""
    return f"""\
data_dir = "{DATA}"

[radio]
port = "{GUEST_RADIO}"
baudrate = 115200

[uplink]
host = "{HOST_FROM_GUEST}"
port = {cloud_port}
server_name = "{edge_harness.SERVER_NAME}"
heartbeat = 10
dead_after = 30
connect_timeout = 20
backoff_initial = 0.5
backoff_max = 5
batch_records = 200
batch_linger = 0.5
upload_deadline = 0

[health]
radio_window = 120
uplink_window = 120

[web]
enabled = true
address = "{GUEST_ADDRESS}"
port = {GUEST_WEB_PORT}
"""


def wait_until_healthy(unit: Unit, timeout: float) -> None:
    """Wait until 'gridedge health' passes on the unit, run as mark-good runs it."""
    unit.wait_until(
        "start-stop-daemon -S -c gridedge:gridedge -x /usr/bin/gridedge -- "
        f"health --config {DATA}/gridedge.toml",
        timeout,
        "gridedge health to pass",
    )


def wait_until_marked_good(unit: Unit, timeout: float) -> None:
    """Wait until this boot's mark-good has confirmed the slot (its syslog line)."""
    unit.wait_until(
        "grep -q 'mark-good: healthy after .* slot marked good' /var/log/messages",
        timeout,
        "mark-good to mark the slot good",
    )


#: PIDs of 'gridedge run' (BusyBox has no pgrep): the console script runs as
#: "/usr/bin/python3 /usr/bin/gridedge run ...".
GRIDEDGE_PIDS = (
    "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '"
    " | grep -q '^/usr/bin/python3 /usr/bin/gridedge run' && echo ${p#/proc/}; done"
)
