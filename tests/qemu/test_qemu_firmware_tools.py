"""The update agent's tools on the CI image, as the unit's unprivileged gridedge user: what the
host tests of gridedge.firmware cannot show (RAUC's service and U-Boot backend, armhf zstd).

One unit, no cloud: bundles come from a host HTTP server straight into the agent's folder on
/data, and a Python snippet runs gridedge.firmware's BundleTools and RaucSlots in the unit.
The cloud-driven update (offer, chunks, reboot, report) is tested with the cloud elsewhere.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from support.qemu_bundle import SigningKeys, changed_rootfs, http_server, start_bundle
from support.qemu_unit import Unit

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

FOLDER = "/data/gridedge/firmware"
SNIPPET = """\
import os, sys
os.setgid(1000); os.setgroups([]); os.setuid(1000)  # the gridedge user, as gridedge runs
from pathlib import Path
from twisted.internet import defer, task
from gridedge.firmware.rauc import BundleTools, RaucSlots
F = Path("/data/gridedge/firmware")
async def main(reactor):
    tools = BundleTools(Path("/etc/rauc/keyring.pem"))
    slots = RaucSlots(lambda: None)
    if sys.argv[1] == "check":
        print("INFO", await tools.info(F / "rebuilt.raucb"))
        print("STATUS", await slots.status())
    elif sys.argv[1] == "delta":
        await tools.patch(F / "base.raucb", F / "delta.zst", F / "rebuilt.raucb")
        print("REBUILT", await tools.sha256(F / "rebuilt.raucb"))
    else:
        await slots.install(F / "rebuilt.raucb")
        print("INSTALLED")
task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
"""


def test_agent_tools_on_the_unit(make_unit: Callable[..., Unit], ci_image: Path,
                                 tmp_path: Path) -> None:
    """As the gridedge user: `rauc info` and `rauc status` (good only with mark-good's file),
    a delta rebuilt by zstd into exactly the target bundle, and `rauc install` of it from
    /data, which makes slot B the next boot."""
    keys = SigningKeys.in_folder(ci_image / "test-keys")
    v1_job = start_bundle(tmp_path / "bundles" / "v1.raucb", ci_image / "rootfs.ext4", keys,
                          version="tools-v1")
    rootfs = changed_rootfs(ci_image / "rootfs.ext4", tmp_path / "rootfs-v2.ext4",
                            {"/etc/gridedge/version": (b"tools-v2\n", 0o644)})
    v2 = start_bundle(tmp_path / "bundles" / "v2.raucb", rootfs, keys, version="tools-v2").path()
    v1 = v1_job.path()
    delta = tmp_path / "bundles" / "delta.zst"
    subprocess.run(["zstd", "-q", "-f", "-19", "--long=27", f"--patch-from={v1}", str(v2),
                    "-o", str(delta)], check=True)
    assert delta.stat().st_size < v2.stat().st_size * 0.05

    unit = make_unit()
    assert unit.boot() == "A"
    unit.check(f"mkdir -p {FOLDER}")
    with http_server(v1.parent) as port:
        # The CI image's /data holds the base, the delta and the rebuilt bundle, not a fourth.
        for remote, name in (("base.raucb", "v1.raucb"), ("delta.zst", "delta.zst")):
            unit.check(f"wget -q -O {FOLDER}/{remote} http://10.0.2.2:{port}/{name}",
                       timeout=300)
    unit.check(f"chown -R gridedge:gridedge /data/gridedge && chmod 0600 {FOLDER}/*")
    unit.write_file("/tmp/tools.py", SNIPPET.encode())
    out = unit.check("python3 /tmp/tools.py delta 2>&1", timeout=300)
    assert f"REBUILT {hashlib.sha256(v2.read_bytes()).hexdigest()}" in out, out

    unit.check("rm -f /run/gridedge/slot-good")
    out = unit.check("python3 /tmp/tools.py check 2>&1", timeout=120)
    assert "version='tools-v2'" in out and "gridedge CI bundle signer" in out, out
    assert "SlotStatus(compatible='gridedge-qemu-ci', booted='A', good=False)" in out, \
        "RAUC's U-Boot backend says good; without mark-good's word the agent does not"
    unit.check("echo 'slot A marked good after 0 s' >/run/gridedge/slot-good")
    assert "booted='A', good=True" in unit.check("python3 /tmp/tools.py check 2>&1", 120)
    out = unit.check("python3 /tmp/tools.py install 2>&1", timeout=600)
    assert "INSTALLED" in out, out
    env = unit.check("fw_printenv BOOT_ORDER BOOT_B_LEFT")
    assert "BOOT_ORDER=B A" in env and "BOOT_B_LEFT=3" in env
