"""Small real RAUC bundles for the cloud's release and rollout tests, made on the host.

A bundle here carries a tiny ext4 image made with ``mkfs.ext4 -d`` from a temporary
folder (not the CI image: these tests check the cloud, not a boot), signed by
Debian's ``rauc bundle`` with keys from board/qemu-ci/mk-test-keys, through
tests/support/qemu_bundle.py's BundleJob.  The image holds 1 MiB of fixed random
bytes and a version file, so two versions differ in one squashfs block and a
``zstd --patch-from`` delta between them is small, as on a real fleet.

Tests: a helper of tests/cloud/test_cloud_releases.py, tests/cloud/test_cloud_rollouts.py,
tests/cloud/test_cloud_firmware_serving.py.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

from support.qemu_bundle import BundleJob, SigningKeys

COMPATIBLE = "gridedge-qemu-ci"

#: The same "application" in every version: what a delta does not need to send again.
_PAYLOAD = random.Random(15).randbytes(1 << 20)


def tiny_rootfs(folder: Path, version: str) -> Path:
    """A 4 MiB ext4 image with a version file and 1 MiB of fixed random bytes."""
    src = folder / f"rootfs-{version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "etc").mkdir(exist_ok=True)
    (src / "etc" / "gridedge-version").write_text(version + "\n")
    (src / "app.bin").write_bytes(_PAYLOAD)
    image = folder / f"rootfs-{version}.ext4"
    image.unlink(missing_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-d", str(src),
                    "-U", "00000000-0000-4000-8000-000000000015", "-E",
                    "hash_seed=00000000-0000-4000-8000-000000000015", str(image), "4M"],
                   check=True, capture_output=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                    "E2FSPROGS_FAKE_TIME": "1795000000"})
    return image


def bundle(folder: Path, keys: SigningKeys, version: str, compatible: str = COMPATIBLE,
           name: str | None = None) -> Path:
    """A signed verity bundle of ``tiny_rootfs(version)``."""
    out = folder / "bundles" / (name or f"{compatible}-{version}.raucb")
    rootfs = tiny_rootfs(folder / "rootfs", version)
    return BundleJob(out, rootfs, keys, version=version, compatible=compatible).path()


def keys(folder: Path) -> SigningKeys:
    """A new signing CA and key (mk-test-keys), trusted by nothing else."""
    folder.mkdir(parents=True, exist_ok=True)
    return SigningKeys.make(folder)


def releases_section(folder: Path, signing: SigningKeys, **overrides: object) -> dict[str, object]:
    """The ``[releases]`` settings of a test API: ``folder``, trusting ``signing``'s CA."""
    section: dict[str, object] = {
        "folder": folder, "keyring": signing.ca, "compatible": [COMPATIBLE],
        "max_bundle_mb": 8, "deltas_from": 3,
    }
    section.update(overrides)
    return section
