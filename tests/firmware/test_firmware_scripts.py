"""The shell scripts of board/: lint, parse under BusyBox and dash, and what can run on a host.

The scripts that need the unit (data-setup, gridedge-service, mark-good, the init scripts) are
linted and parsed here and run for real by the QEMU boot tests (tests/qemu/). What runs on a
build host — platform.sh's helpers, mk-system-conf and the common post-build step — runs here,
under BusyBox sh as on the unit where it matters.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support.firmware_tree import BOARD, BUILDROOT_BOARDS, read_assignments

COMMON = BOARD / "common"
PLATFORM_SH = COMMON / "rootfs-overlay/usr/lib/gridedge/platform.sh"
SHELL_SCRIPTS = sorted(
    path
    for folder in ("common", *BUILDROOT_BOARDS)
    for path in (BOARD / folder).rglob("*")
    if path.is_file()
    and not path.is_symlink()
    and (path.read_bytes().startswith(b"#!/bin/sh") or path == PLATFORM_SH)
)


def test_the_shared_scripts_are_all_found() -> None:
    """The script list holds the init scripts and helpers (a glob finding nothing would pass)."""
    names = {p.name for p in SHELL_SCRIPTS}
    assert {
        "S00data-setup",
        "S15watchdog",
        "S95mark-good",
        "data-setup",
        "mark-good",
        "gridedge-service",
        "platform.sh",
        "post-build.sh",
        "post-image.sh",
    } <= names


def test_init_scripts_named_in_comments_exist() -> None:
    """Every /etc/init.d/SNNname the board's files mention is an init script of an overlay
    (a renamed script would leave the comments that explain the boot order pointing nowhere)."""
    scripts = {p.name for p in BOARD.glob("*/*/etc/init.d/S*")}
    named = {
        (path.relative_to(BOARD), name)
        for path in BOARD.rglob("*")
        if path.is_file() and not path.is_symlink()
        for name in re.findall(r"/etc/init\.d/(S\d\d[\w-]+)", path.read_text(errors="replace"))
    }
    assert named, "no init script is named anywhere: is the pattern right?"
    assert not [(str(where), name) for where, name in named if name not in scripts]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(BOARD)))
def test_shellcheck_clean(script: Path) -> None:
    """shellcheck (as Buildroot's check-package runs it) finds nothing."""
    result = subprocess.run(
        ["shellcheck", "--external-sources", "--shell=sh", script], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("shell", [["busybox", "sh"], ["dash"]], ids=["busybox", "dash"])
@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(BOARD)))
def test_parses_under_busybox_and_dash(script: Path, shell: list[str]) -> None:
    """Each script parses under BusyBox ash (the unit) and dash (a POSIX shell without bashisms)."""
    result = subprocess.run([*shell, "-n", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def busybox_sh(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `code` under BusyBox sh with platform.sh sourced."""
    return subprocess.run(
        ["busybox", "sh", "-c", f". {PLATFORM_SH}\n{code}"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_load_platform_fills_defaults(tmp_path: Path) -> None:
    """A board's platform.conf loads; optional values get their defaults; /data is fixed."""
    conf = tmp_path / "platform.conf"
    lines = (BOARD / "qemu-vexpress/rootfs-overlay/etc/gridedge/platform.conf").read_text()
    conf.write_text(lines)
    result = busybox_sh(
        'gridedge_load_platform && echo "$GRIDEDGE_WATCHDOG_DEVICE $GRIDEDGE_DATA_DEVICE'
        ' $GRIDEDGE_DATA_MOUNT $GRIDEDGE_CONFIG"',
        {"GRIDEDGE_PLATFORM_CONF": str(conf)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "/dev/watchdog",
        "/dev/mmcblk0p4",
        "/data",
        "/data/gridedge/gridedge.toml",
    ]


def test_load_platform_refuses_missing_values(tmp_path: Path) -> None:
    """Without the data device the scripts stop (and say why) instead of guessing a disk."""
    conf = tmp_path / "platform.conf"
    lines = (BOARD / "beaglebone/rootfs-overlay/etc/gridedge/platform.conf").read_text()
    conf.write_text("\n".join(x for x in lines.splitlines() if "DATA_DEVICE" not in x))
    result = busybox_sh(
        "gridedge_load_platform || echo refused", {"GRIDEDGE_PLATFORM_CONF": str(conf)}
    )
    assert result.stdout.strip() == "refused"
    assert "does not set GRIDEDGE_DATA_DEVICE" in result.stderr
    missing = busybox_sh(
        "gridedge_load_platform || echo refused",
        {"GRIDEDGE_PLATFORM_CONF": str(tmp_path / "absent")},
    )
    assert missing.stdout.strip() == "refused" and "missing" in missing.stderr


def test_conf_get_reads_values_and_never_runs_them(tmp_path: Path) -> None:
    """Per-unit files on /data are data: a value with $(...) comes back as text, unexecuted."""
    marker = tmp_path / "ran"
    conf = tmp_path / "cellular.conf"
    conf.write_text(
        f'CELLULAR_APN="old"\nCELLULAR_APN=internet.example\nCELLULAR_DEVICE=$(touch {marker})\n'
    )
    result = busybox_sh(
        f"gridedge_conf_get {conf} CELLULAR_APN; gridedge_conf_get {conf} CELLULAR_DEVICE;"
        f" gridedge_conf_get {conf} CELLULAR_PIN; echo end"
    )
    assert result.stdout.splitlines() == ["internet.example", f"$(touch {marker})", "end"]
    assert not marker.exists()


def render_system_conf(platform_conf: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """Run board/common/mk-system-conf under BusyBox sh."""
    return subprocess.run(
        ["busybox", "sh", COMMON / "mk-system-conf", platform_conf, out],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("board", BUILDROOT_BOARDS)
def test_system_conf_matches_the_board(board: str, tmp_path: Path) -> None:
    """RAUC's system.conf: U-Boot backend, the board's slots and compatible, state on /data."""
    platform = BOARD / board / "rootfs-overlay/etc/gridedge/platform.conf"
    result = render_system_conf(platform, tmp_path / "system.conf")
    assert result.returncode == 0, result.stderr
    values = read_assignments(platform)
    conf = configparser.ConfigParser()
    conf.read(tmp_path / "system.conf")
    assert conf["system"]["compatible"] == values["GRIDEDGE_RAUC_COMPATIBLE"]
    assert conf["system"]["bootloader"] == "uboot"
    assert conf["system"]["statusfile"].startswith("/data/")
    assert conf["system"]["bundle-formats"] == "-plain"
    assert conf["keyring"]["path"] == "/etc/rauc/keyring.pem"
    assert dict(conf["slot.rootfs.0"]) == {
        "device": values["GRIDEDGE_ROOTFS_A_DEVICE"],
        "type": "ext4",
        "bootname": "A",
    }
    assert dict(conf["slot.rootfs.1"]) == {
        "device": values["GRIDEDGE_ROOTFS_B_DEVICE"],
        "type": "ext4",
        "bootname": "B",
    }
    assert "@" not in (tmp_path / "system.conf").read_text()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("GRIDEDGE_ROOTFS_B_DEVICE=", "does not set GRIDEDGE_ROOTFS_B_DEVICE"),
        ("GRIDEDGE_RAUC_COMPATIBLE=a|b", "only letters"),
    ],
)
def test_system_conf_refuses_bad_values(line: str, message: str, tmp_path: Path) -> None:
    """A missing slot device or a value that would break the file stops the build."""
    conf = tmp_path / "platform.conf"
    base = (BOARD / "beaglebone/rootfs-overlay/etc/gridedge/platform.conf").read_text()
    conf.write_text(base + line + "\n")
    result = render_system_conf(conf, tmp_path / "system.conf")
    assert result.returncode == 1 and message in result.stderr


def make_cert(folder: Path) -> tuple[Path, Path]:
    """Return (certificate, key) of a throwaway self-signed CA."""
    cert, key = folder / "ca.cert.pem", folder / "ca.key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test",
            "-keyout",
            key,
            "-out",
            cert,
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A stand-in Buildroot target: a BusyBox-like inittab, then the overlays, as Buildroot does."""
    target = tmp_path / "target"
    (target / "etc").mkdir(parents=True)
    (target / "etc/inittab").write_text("::sysinit:/etc/init.d/rcS\n::shutdown:/etc/init.d/rcK\n")
    for overlay in (COMMON / "rootfs-overlay", BOARD / "beaglebone/rootfs-overlay"):
        shutil.copytree(overlay, target, symlinks=True, dirs_exist_ok=True)
    return target


def post_build(target: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run board/common/post-build.sh as Buildroot does: target directory first, then the args."""
    return subprocess.run(
        [COMMON / "post-build.sh", target, "-c", "genimage.cfg"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "BR2_VERSION": "2025.02.16", **env},
    )


def test_post_build_installs_version_rauc_and_service(target: Path, tmp_path: Path) -> None:
    """post-build writes os-release and system.conf, installs the keyring, adds the service once."""
    cert, _ = make_cert(tmp_path)
    env = {"GRIDEDGE_VERSION": "v1.2.3-4-gabcdef", "GRIDEDGE_RAUC_KEYRING": str(cert)}
    for _ in range(2):  # a rebuild runs it again on the same target
        result = post_build(target, **env)
        assert result.returncode == 0, result.stderr
    os_release = dict(
        line.split("=", 1) for line in (target / "usr/lib/os-release").read_text().splitlines()
    )
    assert os_release["VERSION_ID"] == "v1.2.3-4-gabcdef"
    assert os_release["VERSION"] == '"v1.2.3-4-gabcdef (Buildroot 2025.02.16)"'
    assert (target / "etc/os-release").resolve() == (target / "usr/lib/os-release").resolve()
    assert (target / "etc/gridedge/version").read_text() == "v1.2.3-4-gabcdef\n"
    assert (target / "etc/rauc/keyring.pem").read_bytes() == cert.read_bytes()
    assert "compatible=gridedge-beaglebone-black" in (target / "etc/rauc/system.conf").read_text()
    inittab = (target / "etc/inittab").read_text()
    assert inittab.count("::respawn:/usr/libexec/gridedge/gridedge-service\n") == 1
    assert (target / "data").is_dir()


def test_post_build_refuses_a_private_key_as_keyring(target: Path, tmp_path: Path) -> None:
    """Handing the signing key (or any private key) as the keyring stops the build."""
    cert, key = make_cert(tmp_path)
    bundle = tmp_path / "both.pem"
    bundle.write_bytes(cert.read_bytes() + key.read_bytes())
    result = post_build(target, GRIDEDGE_VERSION="v1", GRIDEDGE_RAUC_KEYRING=str(bundle))
    assert result.returncode == 1 and "holds a private key" in result.stderr
    assert not (target / "etc/rauc/keyring.pem").exists()


def test_post_build_needs_the_keyring(target: Path) -> None:
    """Without GRIDEDGE_RAUC_KEYRING the build stops and says how to get one."""
    result = post_build(target, GRIDEDGE_VERSION="v1")
    assert result.returncode == 1
    assert "GRIDEDGE_RAUC_KEYRING is not set" in result.stderr and "make dev-keys" in result.stderr


def test_post_build_finds_private_keys_in_the_image(target: Path, tmp_path: Path) -> None:
    """A private key left in /etc by a package or overlay fails the build."""
    cert, key = make_cert(tmp_path)
    shutil.copy(key, target / "etc/leftover.pem")
    result = post_build(target, GRIDEDGE_VERSION="v1", GRIDEDGE_RAUC_KEYRING=str(cert))
    assert result.returncode == 1 and "private keys in the image" in result.stderr
    assert "leftover.pem" in result.stderr
