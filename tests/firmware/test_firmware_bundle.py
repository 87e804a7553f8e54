"""Development keys and the signed update bundle, made with the tree's scripts and Debian's rauc.

board/common/mk-dev-keys is what `make dev-keys` runs; board/common/post-image.sh is
Buildroot's last post-image step. Here post-image.sh runs with Debian's rauc in place of
Buildroot's host-rauc (same tool, older release) on a small real ext4 root file system.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

COMMON = Path(__file__).resolve().parents[2] / "board/common"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development key set made by mk-dev-keys."""
    folder = tmp_path_factory.mktemp("keys") / "dev-keys"
    subprocess.run([COMMON / "mk-dev-keys", folder], check=True, capture_output=True)
    return folder


def test_dev_keys_are_named_development_only_and_private(keys: Path) -> None:
    """Every key file says it is for development; private keys are 0600; the chain verifies."""
    files = {p.name for p in keys.iterdir()}
    assert files == {
        "README",
        "development-only-ca.cert.pem",
        "development-only-ca.key.pem",
        "development-only-signing.cert.pem",
        "development-only-signing.key.pem",
    }
    for key in ("development-only-ca.key.pem", "development-only-signing.key.pem"):
        assert (keys / key).stat().st_mode & 0o777 == 0o600
    assert "DEVELOPMENT ONLY" in (keys / "README").read_text()
    subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            keys / "development-only-ca.cert.pem",
            keys / "development-only-signing.cert.pem",
        ],
        check=True,
        capture_output=True,
    )


def test_dev_keys_never_overwrite_a_key_set(keys: Path) -> None:
    """Running make dev-keys again keeps the existing keys (bundles signed with them stay valid)."""
    before = (keys / "development-only-signing.key.pem").read_bytes()
    subprocess.run([COMMON / "mk-dev-keys", keys], check=True, capture_output=True)
    assert (keys / "development-only-signing.key.pem").read_bytes() == before


def make_images(folder: Path) -> tuple[Path, Path]:
    """Return (images dir with rootfs.ext4, target dir with etc/rauc/system.conf)."""
    images, target, tree = folder / "images", folder / "target", folder / "tree"
    images.mkdir()
    (target / "etc/rauc").mkdir(parents=True)
    (target / "etc/rauc/system.conf").write_text("[system]\ncompatible=gridedge-test-board\n")
    tree.mkdir()
    (tree / "payload").write_bytes(os.urandom(200_000))  # incompressible: squashfs > 4 KiB
    subprocess.run(["mkfs.ext4", "-q", "-d", tree, images / "rootfs.ext4", "8M"], check=True)
    return images, target


def post_image(
    images: Path, target: Path, keys: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run post-image.sh as Buildroot does (images dir, then genimage's arguments)."""
    env = {
        "PATH": os.environ["PATH"],
        "TARGET_DIR": str(target),
        "GRIDEDGE_VERSION": "v2.0.0-test",
        "GRIDEDGE_RAUC_KEYRING": str(keys / "development-only-ca.cert.pem"),
        "GRIDEDGE_RAUC_CERT": str(keys / "development-only-signing.cert.pem"),
        "GRIDEDGE_RAUC_KEY": str(keys / "development-only-signing.key.pem"),
        **extra,
    }
    return subprocess.run(
        [COMMON / "post-image.sh", images, "-c", "genimage.cfg"],
        env=env,
        capture_output=True,
        text=True,
    )


def test_bundle_is_signed_and_carries_compatible_and_version(keys: Path, tmp_path: Path) -> None:
    """The bundle verifies against the keyring and names the image's compatible and version."""
    images, target = make_images(tmp_path)
    result = post_image(images, target, keys)
    assert result.returncode == 0, result.stderr
    bundle = images / "gridedge-update.raucb"
    info = subprocess.run(
        ["rauc", "info", f"--keyring={keys / 'development-only-ca.cert.pem'}", bundle],
        capture_output=True,
        text=True,
    )
    assert info.returncode == 0, info.stderr
    assert "Compatible: \t'gridedge-test-board'" in info.stdout
    assert "Version:    \t'v2.0.0-test'" in info.stdout
    assert "Bundle Format: \tverity" in info.stdout
    assert "Filename:  rootfs.ext4" in info.stdout
    assert not (images / "rauc-bundle").exists()


def test_bundle_fails_verification_with_another_keyring(keys: Path, tmp_path: Path) -> None:
    """A unit with a different CA refuses the bundle: the signature is what makes it trusted."""
    images, target = make_images(tmp_path)
    assert post_image(images, target, keys).returncode == 0
    other = tmp_path / "other"
    subprocess.run([COMMON / "mk-dev-keys", other], check=True, capture_output=True)
    info = subprocess.run(
        [
            "rauc",
            "info",
            f"--keyring={other / 'development-only-ca.cert.pem'}",
            images / "gridedge-update.raucb",
        ],
        capture_output=True,
        text=True,
    )
    assert info.returncode != 0
    assert "signature" in (info.stderr + info.stdout).lower()


def test_bundle_step_needs_the_signing_key(keys: Path, tmp_path: Path) -> None:
    """Without GRIDEDGE_RAUC_KEY the step stops, names the variable and writes no bundle."""
    images, target = make_images(tmp_path)
    result = post_image(images, target, keys, GRIDEDGE_RAUC_KEY="")
    assert result.returncode == 1 and "GRIDEDGE_RAUC_KEY is not set" in result.stderr
    assert not (images / "gridedge-update.raucb").exists()
