"""The firmware targets of mk/firmware.mk stop early, with directions, when something is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make(*args: str) -> subprocess.CompletedProcess[str]:
    """Run make in the repository and return the result."""
    return subprocess.run(
        ["make", "--no-print-directory", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("target", ["image", "image-qemu", "firmware-check"])
def test_without_buildroot_the_target_says_how_to_get_it(target: str) -> None:
    """No BUILDROOT: make stops, says which Buildroot and where from, and that it needs the net."""
    result = make(target, "BUILDROOT=")
    assert result.returncode != 0
    assert "BUILDROOT is not set" in result.stderr
    assert "2025.02" in result.stderr and "internet" in result.stderr


def test_image_stops_without_keys(tmp_path: Path) -> None:
    """With a Buildroot tree but no RAUC keyring the build stops before Buildroot runs."""
    fake = tmp_path / "buildroot"
    (fake / "support/scripts").mkdir(parents=True)
    (fake / "support/scripts/genimage.sh").write_text("")
    result = make(
        "image",
        f"BUILDROOT={fake}",
        "GRIDEDGE_RAUC_KEYRING=",
        "GRIDEDGE_RAUC_CERT=",
        "GRIDEDGE_RAUC_KEY=",
    )
    assert result.returncode != 0
    assert "GRIDEDGE_RAUC_KEYRING='' is not a readable file" in result.stderr
    assert "make dev-keys" in result.stderr
    assert not (fake / "output").exists() and "make -C" not in result.stdout
