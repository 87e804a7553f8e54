"""Structure of the Buildroot external tree: packages, Config.in, defconfigs, board values.

What Buildroot itself would reject or silently get wrong, checked without Buildroot. The same
tree is checked against a real Buildroot by tests/firmware/buildroot_check.py.
"""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from support.firmware_tree import (
    BOARD,
    BUILDROOT_BOARDS,
    DEFCONFIGS,
    EXTERNAL,
    EXTERNAL_VAR,
    PACKAGES,
    REPO,
    config_in_selects,
    genimage_partitions,
    parse_defconfig,
    read_assignments,
)

PACKAGE_DIRS = sorted(p for p in PACKAGES.iterdir() if p.is_dir())
# Files a defconfig may name inside Buildroot itself (not in this repository).
BUILDROOT_FILES = {"support/scripts/genimage.sh"}
# PyPI distribution name -> the Buildroot symbol that provides it.
PYPI_TO_SYMBOL = {
    "attrs": "BR2_PACKAGE_PYTHON_ATTRS",
    "gridradio": "BR2_PACKAGE_PYTHON_GRIDRADIO",
    "gridwire": "BR2_PACKAGE_PYTHON_GRIDWIRE",
    "hyperlink": "BR2_PACKAGE_PYTHON_HYPERLINK",
    "incremental": "BR2_PACKAGE_PYTHON_INCREMENTAL",
    "klein": "BR2_PACKAGE_PYTHON_KLEIN",
    "pyserial": "BR2_PACKAGE_PYTHON_SERIAL",
    "six": "BR2_PACKAGE_PYTHON_SIX",
    "tubes": "BR2_PACKAGE_PYTHON_TUBES",
    "twisted": "BR2_PACKAGE_PYTHON_TWISTED",
    "typing-extensions": "BR2_PACKAGE_PYTHON_TYPING_EXTENSIONS",
    "werkzeug": "BR2_PACKAGE_PYTHON_WERKZEUG",
    "zope-interface": "BR2_PACKAGE_PYTHON_ZOPE_INTERFACE",
}
# Extras -> the sub-option of the Buildroot package that provides them.
EXTRA_TO_SYMBOL = {("twisted", "tls"): "BR2_PACKAGE_PYTHON_TWISTED_TLS"}
TARGET_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.13"}


def mk_variables(package: Path) -> dict[str, str]:
    """Return the VAR = value assignments of a package's .mk file."""
    text = (package / f"{package.name}.mk").read_text()
    return dict(re.findall(r"^([A-Z0-9_]+) = (.*)$", text, re.MULTILINE))


def prefix(package: Path) -> str:
    """Return the variable prefix of a package: python-klein -> PYTHON_KLEIN."""
    return package.name.upper().replace("-", "_")


def test_expected_packages_exist() -> None:
    """The tree packages both apps and the Python modules Buildroot 2025.02 lacks."""
    names = {p.name for p in PACKAGE_DIRS}
    assert {
        "python-gridradio",
        "python-gridwire",
        "python-gridedge",
        "python-klein",
        "python-tubes",
    } <= names


@pytest.mark.parametrize("package", PACKAGE_DIRS, ids=lambda p: p.name)
def test_package_has_config_in_and_mk(package: Path) -> None:
    """Every package folder has a Config.in and a <name>.mk that ends in $(eval $(...-package))."""
    assert (package / "Config.in").is_file()
    mk = (package / f"{package.name}.mk").read_text()
    assert mk.rstrip().endswith("$(eval $(python-package))")


@pytest.mark.parametrize("package", PACKAGE_DIRS, ids=lambda p: p.name)
def test_mk_follows_buildroot_conventions(package: Path) -> None:
    """The .mk has the 80-column banner and the variables an upstream reviewer expects."""
    lines = (package / f"{package.name}.mk").read_text().splitlines()
    rule = "#" * 80
    assert lines[:6] == [rule, "#", f"# {package.name}", "#", rule, ""]
    variables = mk_variables(package)
    pre = prefix(package)
    for suffix in ("VERSION", "SITE", "SETUP_TYPE", "LICENSE"):
        assert f"{pre}_{suffix}" in variables, f"{pre}_{suffix} missing"
    assert variables[f"{pre}_SETUP_TYPE"] in {"setuptools", "pep517"}
    if variables.get(f"{pre}_SITE_METHOD") == "local":
        site = Path(variables[f"{pre}_SITE"].replace(EXTERNAL_VAR, str(EXTERNAL)))
        assert (site / "pyproject.toml").is_file(), f"{site} is not a Python project"
    else:
        assert f"{pre}_SOURCE" in variables
        # No download host in the repository: the builder passes GRIDEDGE_PYPI_FILES.
        assert re.fullmatch(r"\$\(GRIDEDGE_PYPI_FILES\)/[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{60}",
                            variables[f"{pre}_SITE"])
        assert f"{pre}_LICENSE_FILES" in variables


@pytest.mark.parametrize(
    "package",
    [p for p in PACKAGE_DIRS if f"{prefix(p)}_SITE_METHOD" not in mk_variables(p)],
    ids=lambda p: p.name,
)
def test_downloaded_package_hashes_source_and_license(package: Path) -> None:
    """A downloaded package's .hash says where the hashes came from and covers sdist and licence."""
    variables = mk_variables(package)
    pre = prefix(package)
    source = variables[f"{pre}_SOURCE"].replace(f"$({pre}_VERSION)", variables[f"{pre}_VERSION"])
    hash_text = (package / f"{package.name}.hash").read_text()
    entries = re.findall(r"^sha256  ([0-9a-f]{64})  (\S+)$", hash_text, re.MULTILINE)
    files = {name for _, name in entries}
    assert source in files
    assert set(variables[f"{pre}_LICENSE_FILES"].split()) <= files
    assert hash_text.startswith("# sha256 from PyPI's JSON API")
    assert "# Locally computed" in hash_text


@pytest.mark.parametrize("package", PACKAGE_DIRS, ids=lambda p: p.name)
def test_config_in_style(package: Path) -> None:
    """Config.in: one symbol named after the package, runtime selects marked, help within 62."""
    text = (package / "Config.in").read_text()
    symbol = "BR2_PACKAGE_" + prefix(package)
    assert text.startswith(f'config {symbol}\n\tbool "{package.name}"\n')
    for selected, comment in config_in_selects(package / "Config.in").items():
        assert comment == "runtime", f"{selected}: a Python dependency is a '# runtime' select"
    help_lines = text.split("\thelp\n", 1)[1].splitlines()
    assert help_lines, "no help text"
    for line in help_lines:
        assert line == "" or (line.startswith("\t  ") and len(line) - 3 <= 62), repr(line)


def test_every_config_in_is_sourced_and_exists() -> None:
    """br2-external/Config.in sources exactly the packages of package/, each file existing."""
    text = (EXTERNAL / "Config.in").read_text()
    sourced = re.findall(r'^source "\$BR2_EXTERNAL_GRIDEDGE_PATH/(.+)"$', text, re.MULTILINE)
    paths = [(EXTERNAL / s).resolve() for s in sourced]
    assert all(p.is_file() for p in paths)
    assert sorted(paths) == sorted((p / "Config.in").resolve() for p in PACKAGE_DIRS)
    assert sourced == sorted(sourced), "keep the source lines sorted"


def test_external_desc_and_mk() -> None:
    """external.desc names the tree GRIDEDGE; external.mk includes every package's .mk."""
    assert (EXTERNAL / "external.desc").read_text().startswith("name: GRIDEDGE\n")
    mk = (EXTERNAL / "external.mk").read_text()
    assert "include $(sort $(wildcard $(BR2_EXTERNAL_GRIDEDGE_PATH)/../package/*/*.mk))" in mk


@pytest.mark.parametrize("defconfig", DEFCONFIGS, ids=lambda p: p.name)
def test_defconfig_forces_hash_checks_and_keeps_root_read_only(defconfig: Path) -> None:
    """Every download is hash-checked; root stays read-only; no root login; our app is in."""
    symbols = parse_defconfig(defconfig)
    assert symbols["BR2_DOWNLOAD_FORCE_CHECK_HASHES"] == "y"
    assert symbols["BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW"] is None
    assert symbols["BR2_TARGET_ENABLE_ROOT_LOGIN"] is None
    assert symbols["BR2_PACKAGE_PYTHON_GRIDEDGE"] == "y"
    assert symbols["BR2_PACKAGE_RAUC"] == "y"
    assert "BR2_PACKAGE_DROPBEAR" not in symbols and "BR2_PACKAGE_OPENSSH" not in symbols


@pytest.mark.parametrize("defconfig", DEFCONFIGS, ids=lambda p: p.name)
def test_every_file_a_defconfig_names_exists(defconfig: Path) -> None:
    """Every path in the defconfig goes through $(BR2_EXTERNAL_GRIDEDGE_PATH) and exists."""
    named = 0
    for symbol, value in parse_defconfig(defconfig).items():
        for word in (value or "").split():
            if EXTERNAL_VAR in word:
                path = Path(word.replace(EXTERNAL_VAR, str(EXTERNAL))).resolve()
                assert path.exists(), f"{symbol}: {word}"
                assert REPO in path.parents
                named += 1
            elif "/" in word and not word.startswith("ti/omap/") and not word.startswith("arm/"):
                assert word in BUILDROOT_FILES, f"{symbol}: {word} is neither ours nor Buildroot's"
    assert named >= 6


@pytest.mark.parametrize("board", BUILDROOT_BOARDS)
def test_board_partitions_match_platform_conf_and_rootfs_size(board: str) -> None:
    """genimage.cfg, platform.conf (RAUC slots, /data) and the rootfs size agree."""
    parts = [p for p in genimage_partitions(BOARD / board / "genimage.cfg") if p.in_partition_table]
    assert [p.name for p in parts] == ["boot", "rootfs-a", "rootfs-b", "data"]
    platform = read_assignments(BOARD / board / "rootfs-overlay/etc/gridedge/platform.conf")
    disk = platform["GRIDEDGE_DATA_DISK"]
    assert platform["GRIDEDGE_ROOTFS_A_DEVICE"] == f"{disk}p2"
    assert platform["GRIDEDGE_ROOTFS_B_DEVICE"] == f"{disk}p3"
    assert platform["GRIDEDGE_DATA_DEVICE"] == f"{disk}p{platform['GRIDEDGE_DATA_PARTITION']}"
    assert platform["GRIDEDGE_DATA_PARTITION"] == "4"
    defconfig = next(d for d in DEFCONFIGS if f"/board/{board}/genimage.cfg" in d.read_text())
    rootfs_size = parse_defconfig(defconfig)["BR2_TARGET_ROOTFS_EXT2_SIZE"]
    assert parts[1].size == parts[2].size == int(rootfs_size.rstrip("M")) * 1024 * 1024
    assert parts[1].image == "rootfs.ext4" and parts[2].image is None and parts[3].image is None


def test_python_gridedge_selects_every_runtime_dependency() -> None:
    """Each dependency in apps/edge/pyproject.toml (extras included) is selected by its package."""
    project = tomllib.loads((REPO / "apps/edge/pyproject.toml").read_text())["project"]
    selects = config_in_selects(PACKAGES / "python-gridedge/Config.in")
    for dep in map(Requirement, project["dependencies"]):
        assert PYPI_TO_SYMBOL[dep.name.lower()] in selects, dep
        for extra in dep.extras:
            assert EXTRA_TO_SYMBOL[(dep.name.lower(), extra)] in selects, dep


@pytest.mark.parametrize("name", ["klein", "tubes"])
def test_new_python_package_matches_pinned_version_and_dependencies(name: str) -> None:
    """Our python-klein/-tubes ship the version the tests run with, selecting all it requires."""
    package = PACKAGES / f"python-{name}"
    assert mk_variables(package)[f"{prefix(package)}_VERSION"] == metadata.version(name)
    selects = config_in_selects(package / "Config.in")
    for raw in metadata.requires(name) or []:
        req = Requirement(raw)
        if req.marker and not req.marker.evaluate(TARGET_PYTHON | {"extra": ""}):
            continue
        assert PYPI_TO_SYMBOL[req.name.lower().replace("_", "-").replace(".", "-")] in selects, raw


def test_unit_pins_name_the_buildroot_series_and_ship_our_packages_versions() -> None:
    """board/qemu-ci/unit-python.txt (the unit's libraries for the CI image and .venv-unit)
    says which Buildroot release it follows, names a package on each line, and pins klein and
    Tubes at the versions of our package/ (tests/firmware/buildroot_check.py checks the rest
    against a Buildroot tree)."""
    text = (BOARD / "qemu-ci/unit-python.txt").read_text()
    series = re.search(r"^BUILDROOT_SERIES := (\S+)", (REPO / "mk/firmware.mk").read_text(), re.M)
    assert series and f"Buildroot {series.group(1)}." in text
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    pins = {}
    for line in lines:
        m = re.fullmatch(r"([\w.-]+)==(\S+)\s+#\s*(this tree: )?package/([\w-]+)", line)
        assert m, line
        pins[m.group(4)] = (m.group(2), bool(m.group(3)))
    ours = {package for package, (_, here) in pins.items() if here}
    assert ours == {"python-klein", "python-tubes"}
    for package in ours:
        directory = PACKAGES / package
        assert pins[package][0] == mk_variables(directory)[f"{prefix(directory)}_VERSION"]


def test_gridedge_user_cannot_log_in_and_reaches_serial_ports_but_not_the_console() -> None:
    """The app's user: no login, home on /data, in dialout; mdev gives dialout the UARTs only."""
    mk = (PACKAGES / "python-gridedge/python-gridedge.mk").read_text()
    users = mk.split("define PYTHON_GRIDEDGE_USERS\n", 1)[1].split("\nendef", 1)[0].split()
    name, _uid, group, _gid, password, home, shell, groups = users[:8]
    assert (name, group, password, home, shell) == (
        "gridedge",
        "gridedge",
        "*",
        "/data/gridedge",
        "-",
    )
    assert "dialout" in groups.split(",")
    rules = [
        line.split()[:2]
        for line in (BOARD / "common/rootfs-overlay/etc/mdev.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]

    def owner(device: str) -> str:
        """The owner:group of the first rule matching `device`, as mdev picks it."""
        return next(o for pattern, o in rules if re.fullmatch(pattern, device))

    for console in ("ttyS0", "ttyAMA0"):
        assert owner(console) == "root:tty"
    for port in ("ttyS1", "ttyS4", "ttyAMA1", "ttyUSB2", "ttyACM0"):
        assert owner(port) == "root:dialout"
