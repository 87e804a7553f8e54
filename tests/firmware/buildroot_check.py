"""Check the Buildroot external tree against a real Buildroot tree; builds nothing.

Usage: python tests/firmware/buildroot_check.py BUILDROOT_DIR
   or: make firmware-check BUILDROOT=DIR

Not part of `make test`, because CI has no Buildroot tree (and cannot download one); run it
whenever a Buildroot 2025.02.x tree is at hand. It checks, in a scratch output directory:

1. `make BR2_EXTERNAL=br2-external <defconfig>` succeeds for every defconfig of the tree, and
   every line of the defconfig survives into `.config` unchanged. Kconfig silently drops a
   symbol whose dependencies are unmet, renames nothing, and warns about nothing, so this is
   the only way to know the image has what the defconfig asks for. It also checks that the
   defconfig is minimal: `make savedefconfig` gives back the same lines, and that no legacy
   (renamed or removed) option is in use.
2. Buildroot's `utils/check-package -b` reports no warning on any file of the tree
   (br2-external/, package/ and the board folders the defconfigs use).
3. `make show-info` lists each of our packages, with its build dependencies, and every package
   its Config.in selects at runtime is in the same build.
4. `board/qemu-ci/unit-python.txt`, the Python libraries the CI image and `make test-unit-libs`
   install as the unit's, pins the version that the `.mk` file named on each line gives (the
   Buildroot tree's package/, or this tree's).

Every check prints what it ran and what it found; any failure makes the exit status 1.
Nothing is skipped: a missing tool (shellcheck, python3-magic, flake8) is a failure.

The offline tests of the same tree are the other files of tests/firmware/.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXTERNAL = REPO / "br2-external"
# The parts of the repository that make up the Buildroot tree. board/qemu-ci belongs to the
# CI image (Debian packages), which Buildroot never reads.
TREE_DIRS = ("br2-external", "package", "board/common", "board/beaglebone", "board/qemu-vexpress")
OUR_PACKAGES = (
    "python-gridedge",
    "python-gridradio",
    "python-gridwire",
    "python-klein",
    "python-tubes",
)


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it, and return its result (never raises on failure)."""
    print("$ " + " ".join(cmd), flush=True)
    # Run from 'make firmware-check', the outer make's flags and level would leak into
    # Buildroot's make: it would then print "Entering directory" into show-info's JSON.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, check=False, env=env)


def defconfig_lines(path: Path) -> list[str]:
    """Return the meaningful lines of a defconfig: assignments and '# X is not set'."""
    return [
        line
        for line in path.read_text().splitlines()
        if line.startswith("BR2_") or re.fullmatch(r"# BR2_\w+ is not set", line)
    ]


def check_defconfig(buildroot: Path, defconfig: Path, scratch: Path) -> list[str]:
    """Configure with the defconfig and compare it with .config and savedefconfig."""
    problems: list[str] = []
    out = scratch / defconfig.name
    result = run(["make", f"O={out}", f"BR2_EXTERNAL={EXTERNAL}", defconfig.name], cwd=buildroot)
    if result.returncode != 0:
        return [f"{defconfig.name}: 'make {defconfig.name}' failed:\n{result.stderr[-2000:]}"]
    config = set((out / ".config").read_text().splitlines())
    wanted = defconfig_lines(defconfig)
    dropped = [line for line in wanted if line not in config]
    for line in dropped:
        problems.append(f"{defconfig.name}: not in .config as written: {line}")
    if "BR2_LEGACY=y" in config:
        legacy = [
            line
            for line in (out / ".config")
            .read_text()
            .split("Legacy config options")[-1]
            .splitlines()
            if line.endswith("=y") and line != "BR2_LEGACY=y"
        ]
        problems.append(f"{defconfig.name}: uses legacy options: {legacy}")
    saved = scratch / f"{defconfig.name}.saved"
    result = run(["make", f"O={out}", "savedefconfig", f"BR2_DEFCONFIG={saved}"], cwd=buildroot)
    if result.returncode != 0:
        problems.append(f"{defconfig.name}: savedefconfig failed:\n{result.stderr[-2000:]}")
    elif defconfig_lines(saved) != wanted:
        problems.append(
            f"{defconfig.name}: not minimal or not in Kconfig order; savedefconfig gives:\n"
            + saved.read_text()
        )
    print(
        f"  {defconfig.name}: {len(wanted)} lines, {len(wanted) - len(dropped)} survive into"
        f" .config unchanged; savedefconfig {'differs' if problems else 'identical'}"
    )
    return problems


def tree_files() -> list[Path]:
    """Every file of the Buildroot tree, tracked or new (git's ignore rules apply)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *TREE_DIRS],
        cwd=REPO,
        text=True,
        capture_output=True,
        check=True,
    ).stdout.split()
    return sorted({REPO / name for name in listed if (REPO / name).is_file()})


def check_package(buildroot: Path) -> list[str]:
    """Run check-package -b on every file of the tree; any warning is a problem."""
    files = tree_files()
    result = run(["/usr/bin/python3", "utils/check-package", "-b", *map(str, files)], cwd=buildroot)
    output = (result.stdout + result.stderr).strip()
    print(f"  {len(files)} files given to check-package")
    print("  " + output.replace("\n", "\n  "))
    match = re.search(r"^(\d+) warnings generated$", output, re.MULTILINE)
    if result.returncode != 0 or match is None or match.group(1) != "0":
        return [f"check-package: {output[-3000:]}"]
    return []


def selected_packages(config_in: Path) -> set[str]:
    """Return the package names a Config.in selects (BR2_PACKAGE_PYTHON_X -> python-x)."""
    names = set()
    for symbol in re.findall(r"^\tselect BR2_PACKAGE_(\w+)", config_in.read_text(), re.MULTILINE):
        names.add(symbol.lower().replace("_", "-"))
    return names


def check_show_info(buildroot: Path, scratch: Path) -> list[str]:
    """make show-info: our packages are in the build, and so is everything they select.

    show-info's "dependencies" are build dependencies (<PKG>_DEPENDENCIES). Runtime-only
    dependencies are, by Buildroot's convention, only `select ... # runtime` lines in
    Config.in, so they are checked as packages present in the same build.
    """
    out = scratch / "gridedge_beaglebone_defconfig"
    result = run(["make", f"O={out}", "show-info"], cwd=buildroot)
    if result.returncode != 0:
        return [f"show-info failed:\n{result.stderr[-2000:]}"]
    info = json.loads(result.stdout)
    problems = []
    for name in OUR_PACKAGES:
        if name not in info:
            problems.append(f"show-info: {name} missing")
            continue
        selected = selected_packages(REPO / "package" / name / "Config.in")
        # Sub-options (python-twisted-tls, python3-sqlite) are not packages of their own.
        runtime = sorted(dep for dep in selected if dep in info)
        missing = sorted(
            dep
            for dep in selected
            if dep not in info and not dep.startswith(("python3-", "python-twisted-"))
        )
        print(f"  {name} {info[name].get('version')}:")
        print(f"    build dependencies: {sorted(info[name].get('dependencies', []))}")
        print(f"    runtime (selected, in the build): {runtime}")
        if missing:
            problems.append(f"show-info: {name} selects {missing}, which are not in the build")
    return problems


def check_unit_pins(buildroot: Path) -> list[str]:
    """unit-python.txt pins what the Buildroot tree (or this tree, for its own packages) ships.

    Each line names its package in a comment ("# package/python-attrs", "# this tree:
    package/python-klein"); the version is the .mk file's <PKG>_VERSION.
    """
    problems = []
    pins = REPO / "board/qemu-ci/unit-python.txt"
    for line in pins.read_text().splitlines():
        m = re.fullmatch(r"([\w.-]+)==(\S+)\s+#\s*(this tree: )?package/([\w-]+)", line)
        if not m:
            if line.strip() and not line.startswith("#"):
                problems.append(f"{pins.name}: names no package: {line}")
            continue
        name, pinned, ours, package = m.groups()
        mk = (REPO if ours else buildroot) / "package" / package / f"{package}.mk"
        prefix = package.upper().replace("-", "_")
        found = re.search(rf"^{prefix}_VERSION\s*=\s*(\S+)", mk.read_text(), re.MULTILINE)
        shipped = found.group(1) if found else None
        print(f"  {name}: pinned {pinned}, {mk.relative_to(REPO if ours else buildroot)} {shipped}")
        if shipped != pinned:
            problems.append(f"{pins.name}: {name}=={pinned}, but {package} ships {shipped}")
    return problems


def main() -> int:
    """Run every check against the Buildroot tree given on the command line."""
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "support/scripts/genimage.sh").is_file():
        print(__doc__)
        print("error: give the path of a Buildroot tree")
        return 2
    buildroot = Path(sys.argv[1]).resolve()
    version = run(["make", "--no-print-directory", "print-version"], cwd=buildroot).stdout.strip()
    print(f"Buildroot {version} at {buildroot}")
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="br2-check-") as tmp:
        scratch = Path(tmp)
        print("== defconfigs")
        for defconfig in sorted((EXTERNAL / "configs").glob("*_defconfig")):
            problems += check_defconfig(buildroot, defconfig, scratch)
        print("== check-package -b")
        problems += check_package(buildroot)
        print("== show-info")
        problems += check_show_info(buildroot, scratch)
    print("== unit-python.txt")
    problems += check_unit_pins(buildroot)
    print("== result")
    for problem in problems:
        print("FAIL: " + problem)
    print("all checks passed" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
