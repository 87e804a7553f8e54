#!/usr/bin/env python3
"""Build the CI firmware image from Debian 12 armhf packages (docs/firmware.md, "The CI image").

CI cannot download Buildroot's sources, so this assembles an image with the Buildroot image's
layout and boot, init and update logic from Debian's armhf binary packages instead:

1. Debian packages pinned in packages.lock (debian.py), unpacked without maintainer scripts;
2. the Python libraries at the versions the Buildroot image ships (unit-python.txt, beside this
   file: Buildroot 2025.02's, not the newest ones of requirements/constraints.txt) from PyPI
   wheels (armv7l wheels where PyPI has them, e.g. cryptography), the compiled modules PyPI has
   no armv7l wheel for from Debian, then gridwire, gridradio and gridedge themselves; .pyc
   compiled here;
3. overlays stacked like Buildroot's: skeleton/ (stands in for Buildroot's skeleton), then
   board/common/rootfs-overlay (shared with the BeagleBone image), then rootfs-overlay/;
4. a small initramfs (Debian's armmp kernel has virtio, ext4 and vfat as modules);
5. rootfs.ext4, boot.scr, the A/B variable area and genimage's disk.img.

Downloads are cached under --cache, keyed by the package lists, so a rebuild is quick.
Every ELF file is checked for libraries the image lacks before the image is written.

Usage:  board/qemu-ci/build.py [--out output/ci-image] [--cache output/cache]
        board/qemu-ci/build.py --lock     (re-resolve packages.txt into packages.lock)
Tests:  tests/qemu/ boot what this builds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import debian

BOARD = Path(__file__).resolve().parent
ROOT = BOARD.parent.parent
COMMON_OVERLAY = ROOT / "board" / "common" / "rootfs-overlay"
VENV_PY = ROOT / ".venv" / "bin" / "python"
#: The unit's Python libraries: Buildroot's versions (the file's header says why and whence).
UNIT_PINS = BOARD / "unit-python.txt"
#: .venv-unit (mk/unit-libs.mk) has exactly those installed, under gridedge.
UNIT_VENV_PY = ROOT / ".venv-unit" / "bin" / "python"
# The host's own Python 3.11 writes the .pyc files: same version, same bytecode as the guest's.
HOST_PY311 = "/usr/bin/python3.11"

# Modules the initramfs loads, with their dependencies: disks, network, entropy, the file
# systems of the disk layout and RAUC's verity bundle mount (loop, squashfs, dm-verity).
MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "crc32c_generic",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "squashfs",
    "loop",
    "dm_mod",
    "dm_verity",
)
# PyPI has no armv7l wheel for these (at the pinned version): Debian's armhf build is used.
FROM_DEBIAN = {"cffi": "python3-cffi-backend"}
# No armv7l wheel at the pinned version: built from the pinned sdist and installed without
# their C speed-ups, which they only use when present (both fall back to pure Python).
PURE_FROM_SDIST = {"zope-interface", "markupsafe"}
# Needed only to build cffi modules, never at run time.
BUILD_ONLY = {"pycparser"}
# Declared by incremental and zope.interface, imported by neither at run time; Buildroot
# installs none on the target, so neither image has it.
NOT_ON_UNIT = {"setuptools"}
WHEEL_PLATFORMS = (
    "manylinux_2_36_armv7l",
    "manylinux_2_31_armv7l",
    "manylinux_2_28_armv7l",
    "manylinux_2_17_armv7l",
    "manylinux2014_armv7l",
    "linux_armv7l",
)
#: pip options that pick wheels for the image's interpreter (CPython 3.11 on armv7l), not ours.
TARGET_WHEELS = (
    "--only-binary=:all:",
    "--python-version", "3.11",
    "--implementation", "cp",
    "--abi", "cp311", "--abi", "abi3", "--abi", "none",
    *(arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)),
)
PRUNE = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/gdb",
    "usr/share/menu",
    "usr/share/pixmaps",
    "usr/share/applications",
    "usr/lib/arm-linux-gnueabihf/gconv",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "etc/init.d",
    "etc/rc0.d",
    "etc/rc1.d",
    "etc/rc2.d",
    "etc/rc3.d",
    "etc/rc4.d",
    "etc/rc5.d",
    "etc/rc6.d",
    "etc/rcS.d",
    "etc/cron.daily",
    "etc/logrotate.d",
    "lib/systemd",
    "usr/lib/systemd",
    # skeleton/ makes these links into the tmpfs /run and /tmp (the root is read-only).
    "var/run",
    "var/lock",
    "var/log",
    "var/tmp",
    "var/cache",
    # Need PAM, which the image leaves out: nothing logs in, the console is a root shell.
    "usr/bin/su",
    "usr/sbin/runuser",
)
# Mount points and empty folders of the root (git keeps no empty folders in skeleton/).
MOUNT_POINTS = ("dev", "proc", "sys", "run", "tmp", "data", "root", "var/lib", "boot")
ROOTFS_SIZE = "256M"
DATA_SIZE = "128M"


def step(message: str) -> None:
    """Progress on stdout: the build takes a while and should say what it is doing."""
    print(f"ci-image: {message}", flush=True)


def run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], check=True, text=True, **kwargs)  # type: ignore[call-overload]


# --- Debian packages --------------------------------------------------------------------------


def lock(cache: Path) -> None:
    apt = debian.Apt(cache / "apt")
    apt.update()
    wanted, excluded = debian.read_package_list(BOARD / "packages.txt")
    pairs = apt.resolve(wanted, excluded)
    header = (
        "# Generated by 'make ci-image-lock' from packages.txt: exact versions of the CI image.\n"
    )
    (BOARD / "packages.lock").write_text(header + "".join(f"{n}={v}\n" for n, v in pairs))
    step(f"locked {len(pairs)} packages in {BOARD / 'packages.lock'}")


def fetch_debs(cache: Path) -> list[Path]:
    lock_file = BOARD / "packages.lock"
    pairs = debian.read_lock(lock_file)
    # apt names each file by package and version, so one folder serves every lock.
    dest = cache / "debs"
    step(f"Debian armhf packages: {len(pairs)} (cache {dest})")
    return debian.Apt(cache / "apt").download(pairs, dest)


# --- Python packages ------------------------------------------------------------------------


def normalized(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def unit_pins() -> dict[str, str]:
    """unit-python.txt: normalized name -> version."""
    pins = {}
    for raw in UNIT_PINS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalized(name)] = version.strip()
    return pins


def python_requirements() -> dict[str, str]:
    """The pinned unit libraries, checked against gridedge's run-time dependency closure.

    The closure is read in .venv-unit, installed with the same pins: a library gridedge (or a
    library of it) needs that the file lacks, or a version that differs, stops the build here
    rather than as an ImportError in a booted image.
    """
    probe = r"""
import importlib.metadata as md, json
from packaging.requirements import Requirement
seen = {}
def walk(name, extras):
    dist = md.distribution(name)
    key = dist.metadata["Name"].lower().replace("_", "-").replace(".", "-")
    if key in seen:
        return
    seen[key] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        env = {"python_version": "3.11", "python_full_version": "3.11.2",
               "platform_machine": "armv7l", "sys_platform": "linux",
               "platform_system": "Linux", "platform_python_implementation": "CPython",
               "implementation_name": "cpython", "os_name": "posix"}
        markers = [dict(env, extra=e) for e in (extras or ("",))]
        if req.marker and not any(req.marker.evaluate(m) for m in markers):
            continue
        walk(req.name, tuple(req.extras))
walk("gridedge", ())
print(json.dumps(seen))
"""
    if not UNIT_VENV_PY.exists():
        raise SystemExit(f"ci-image: {UNIT_VENV_PY.parent.parent} is missing: make venv-unit")
    out = run(UNIT_VENV_PY, "-c", probe, stdout=subprocess.PIPE).stdout
    closure: dict[str, str] = json.loads(out)
    for own in ("gridedge", "gridradio", "gridwire", *NOT_ON_UNIT):
        closure.pop(own, None)
    pins = unit_pins()
    problems = [f"{n} {v} is needed but not pinned" for n, v in closure.items() if n not in pins]
    problems += [
        f"{n} is pinned at {pins[n]} but .venv-unit has {v}"
        for n, v in closure.items()
        if n in pins and pins[n] != v
    ]
    problems += [f"{n} is pinned but gridedge does not need it" for n in pins.keys() - closure]
    if problems:
        raise SystemExit(f"ci-image: {UNIT_PINS.name} and gridedge's dependencies disagree:\n  "
                         + "\n  ".join(problems))
    return pins


def fetch_wheels(cache: Path, requirements: dict[str, str]) -> Path:
    skip = FROM_DEBIAN.keys() | BUILD_ONLY | PURE_FROM_SDIST
    pins = sorted(f"{n}=={v}" for n, v in requirements.items() if n not in skip)
    pure = sorted(f"{n}=={v}" for n, v in requirements.items() if n in PURE_FROM_SDIST)
    key = hashlib.sha256("\n".join(pins + pure).encode()).hexdigest()[:12]
    dest = cache / f"wheels-{key}"
    stamp = dest / ".complete"
    step(f"Python wheels: {len(pins)} pinned (cache {dest})")
    if not stamp.exists():
        run(
            VENV_PY,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            *TARGET_WHEELS,
            "-d",
            dest,
            *pins,
        )
        run(
            VENV_PY,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-w",
            dest / "pure",
            *pure,
        )
        stamp.write_text("\n".join(pins + pure) + "\n")
    return dest


def install_python(rootfs: Path, wheels: Path, work: Path) -> None:
    site = rootfs / "usr/lib/python3/dist-packages"
    own = work / "own-wheels"
    shutil.rmtree(own, ignore_errors=True)
    step("building gridwire, gridradio and gridedge wheels")
    # From copies: setuptools leaves build/ folders in the project it builds.
    sources = work / "own-sources"
    shutil.rmtree(sources, ignore_errors=True)
    for app in ("wire", "radio", "edge"):
        skip = shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        shutil.copytree(ROOT / "apps" / app, sources / app, ignore=skip)
    run(
        VENV_PY,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "-w",
        own,
        sources / "wire",
        sources / "radio",
        sources / "edge",
    )
    files = sorted(wheels.glob("*.whl")) + sorted(own.glob("*.whl"))
    step(f"installing {len(files)} wheels into {site.relative_to(rootfs)}")
    run(
        VENV_PY,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        "--no-compile",
        *TARGET_WHEELS,
        "--target",
        site,
        *files,
    )
    for wheel in sorted((wheels / "pure").glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(site, [n for n in z.namelist() if not n.endswith((".so", ".c", ".h"))])
    # pip's console scripts carry the host's interpreter path; the image has its own below.
    shutil.rmtree(site / "bin", ignore_errors=True)
    script = rootfs / "usr/bin/gridedge"
    script.write_text(
        "#!/usr/bin/python3\n"
        '"""gridedge, the unit\'s application (installed by board/qemu-ci/build.py)."""\n'
        "import sys\n\nfrom gridedge.cli import main\n\nsys.exit(main())\n"
    )
    script.chmod(0o755)


def compile_python(rootfs: Path) -> None:
    """Write .pyc files now: the root is read-only, and cold imports are 2-3 times slower
    without them. unchecked-hash: the guest never compares them with the sources."""
    step("compiling .pyc files")
    dirs = [rootfs / "usr/lib/python3.11", rootfs / "usr/lib/python3/dist-packages"]
    run(
        HOST_PY311,
        "-m",
        "compileall",
        "-q",
        "-j",
        "0",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
        rootfs,
        "-p",
        "/",
        *dirs,
        stdout=subprocess.DEVNULL,
    )


# --- root file system -----------------------------------------------------------------------


def merge_usr(rootfs: Path) -> None:
    """Give the tree Debian 12's merged /usr: /bin, /sbin and /lib become links into /usr."""
    for name in ("bin", "sbin", "lib"):
        top, usr = rootfs / name, rootfs / "usr" / name
        usr.mkdir(parents=True, exist_ok=True)
        if top.is_dir() and not top.is_symlink():
            run("cp", "-a", f"{top}/.", usr)
            shutil.rmtree(top)
        if not top.is_symlink():
            top.symlink_to(f"usr/{name}")


def busybox_links(rootfs: Path) -> None:
    """Link busybox's applets, where no real program of that name exists.

    The armhf busybox cannot run here to list its applets; Debian builds every architecture's
    busybox from one configuration, so the host's busybox (same Debian version) lists them.
    """
    listing = run("busybox", "--list-full", stdout=subprocess.PIPE).stdout.split()
    for rel in listing:
        name = Path(rel).name
        target = rootfs / "usr" / Path(rel).parent.name / name
        if any((rootfs / d / name).exists() for d in ("usr/bin", "usr/sbin")):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to("/bin/busybox")


def apply_overlay(src: Path, rootfs: Path) -> None:
    step(f"overlay {src.relative_to(ROOT)}")
    run("cp", "-a", "--remove-destination", f"{src}/.", rootfs)


def write_users(rootfs: Path) -> None:
    """/etc/passwd, group and shadow: Buildroot's base accounts and groups, the D-Bus daemon's,
    and the users the project's Buildroot packages declare (package/*/*.mk, '<PKG>_USERS'
    blocks in makeusers format), so both images create the same gridedge user."""
    groups = {"root": 0, "tty": 5, "dialout": 20, "messagebus": 101}
    members: dict[str, list[str]] = {}
    users = [
        ("root", 0, 0, "/root", "/bin/sh"),
        ("messagebus", 100, 101, "/nonexistent", "/bin/false"),
    ]
    next_id = 1000
    for mk in sorted((ROOT / "package").glob("*/*.mk")):
        for block in re.findall(r"^define \w+_USERS\n(.*?)^endef", mk.read_text(), re.M | re.S):
            for line in block.splitlines():
                fields = line.split(None, 8)
                if len(fields) < 8:
                    continue
                name, uid, group, gid, _password, home, shell, extra = fields[:8]
                user_id = next_id if uid == "-1" else int(uid)
                next_id = max(next_id, user_id) + 1
                groups.setdefault(group, user_id if gid == "-1" else int(gid))
                users.append(
                    (name, user_id, groups[group], home, "/bin/false" if shell == "-" else shell)
                )
                for other in extra.split(",") if extra != "-" else []:
                    groups.setdefault(other, next_id)
                    members.setdefault(other, []).append(name)
    etc = rootfs / "etc"
    (etc / "passwd").write_text(
        "".join(f"{n}:x:{uid}:{gid}:{n}:{home}:{shell}\n" for n, uid, gid, home, shell in users)
    )
    (etc / "group").write_text(
        "".join(f"{g}:x:{gid}:{','.join(members.get(g, []))}\n" for g, gid in groups.items())
    )
    # Locked passwords: the console is a root shell, nothing else logs in.
    (etc / "shadow").write_text("".join(f"{u[0]}:*:19000:0:99999:7:::\n" for u in users))
    (etc / "shadow").chmod(0o600)


def git_version() -> str:
    return run(
        "git", "-C", ROOT, "describe", "--always", "--dirty", stdout=subprocess.PIPE
    ).stdout.strip()


def post_build(rootfs: Path, version: str, keyring: Path) -> None:
    """Run the Buildroot image's shared post-build step on this tree, as Buildroot would.

    It writes /etc/gridedge/version, RAUC's system.conf (from platform.conf), the keyring, the
    gridedge respawn line of /etc/inittab, and refuses private keys in the image. Then the
    os-release it wrote is replaced: this image is not built by Buildroot.
    """
    script = ROOT / "board/common/post-build.sh"
    step(f"{script.relative_to(ROOT)} (shared with the Buildroot image)")
    env = dict(os.environ, GRIDEDGE_VERSION=version, GRIDEDGE_RAUC_KEYRING=str(keyring))
    run("sh", script, rootfs, env=env)
    release = rootfs / "usr/lib/os-release"
    release.unlink(missing_ok=True)
    release.write_text(
        'NAME="gridedge CI image"\nID=gridedge-ci\nID_LIKE=debian\n'
        f'VERSION_ID="{version}"\nPRETTY_NAME="gridedge CI image {version} (Debian 12 armhf)"\n'
    )


def ci_signing_keys(out: Path) -> Path:
    """The throwaway RAUC CA and signing key of the CI image (made once, kept under out/)."""
    keys = out / "test-keys"
    if not (keys / "signing.key.pem").exists():
        step(f"making a throwaway RAUC CA and signing key in {keys}")
        run(BOARD / "mk-test-keys", keys)
    return keys


def prune(rootfs: Path) -> None:
    for rel in PRUNE:
        path = rootfs / rel
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    for tk in (rootfs / "usr/lib/python3.11/lib-dynload").glob("_tkinter*"):
        tk.unlink()


def check_libraries(rootfs: Path) -> None:
    """Fail the build if any ELF file needs a shared library the image lacks."""
    step("checking shared libraries of every ELF file")
    elves = []
    for path in rootfs.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.name.endswith(".ko"):
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    elves.append(path)
    search = [rootfs / d for d in ("usr/lib/arm-linux-gnueabihf", "usr/lib")]
    missing: list[str] = []
    for i in range(0, len(elves), 200):
        batch = elves[i : i + 200]
        out = run(
            "readelf", "-d", "-W", *batch, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        ).stdout
        current: Path | None = None
        needed: dict[Path, list[str]] = {}
        rpaths: dict[Path, list[Path]] = {}
        for line in out.splitlines():
            m = re.match(r"File: (.*)", line)
            if m:
                current = Path(m.group(1))
                continue
            if current is None:
                current = batch[0]
            m = re.search(r"\(NEEDED\)\s+Shared library: \[(.*)\]", line)
            if m:
                needed.setdefault(current, []).append(m.group(1))
            m = re.search(r"\((?:RPATH|RUNPATH)\)\s+Library r(?:un)?path: \[(.*)\]", line)
            if m:
                rpaths[current] = [
                    Path(p.replace("$ORIGIN", str(current.parent))) for p in m.group(1).split(":")
                ]
        for elf, libs in needed.items():
            dirs = [*rpaths.get(elf, []), *search]
            for lib in libs:
                if not any((d / lib).exists() for d in dirs):
                    missing.append(f"{elf.relative_to(rootfs)} needs {lib}")
    # Python's optional extension modules may link libraries the image leaves out on purpose.
    missing = [m for m in missing if "/lib-dynload/" not in m or "_ssl" in m or "_hashlib" in m]
    if missing:
        raise SystemExit("ci-image: missing shared libraries:\n  " + "\n  ".join(missing))


# --- kernel and initramfs -------------------------------------------------------------------


def install_kernel(kernel_tree: Path, rootfs: Path, work: Path) -> str:
    """Copy the kernel and the MODULES closure into the rootfs; build the initramfs."""
    (version,) = [p.name for p in (kernel_tree / "lib/modules").iterdir()]
    step(f"kernel {version}: modules and initramfs")
    src = kernel_tree / "lib/modules" / version
    run("depmod", "-b", kernel_tree, version)
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (src / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[Path(mod).name.removesuffix(".ko").replace("-", "_")] = mod
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in reversed(deps[mod]):
            visit(dep)
        order.append(mod)

    for name in MODULES:
        if name in by_name:
            visit(by_name[name])
        elif not (src / "modules.builtin").read_text().count(f"/{name}.ko"):
            raise SystemExit(f"ci-image: kernel {version} has no module {name}")

    initramfs = work / "initramfs"
    shutil.rmtree(initramfs, ignore_errors=True)
    for tree in (initramfs, rootfs):
        for mod in order:
            dest = tree / "lib/modules" / version / mod
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / mod, dest)
        for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            shutil.copy2(src / meta, tree / "lib/modules" / version / meta)
    run("depmod", "-b", rootfs, version)

    # The initramfs: busybox and the libraries it links, the modules, and init.
    for d in ("bin", "dev", "proc", "sys", "newroot", "etc"):
        (initramfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(rootfs / "usr/bin/busybox", initramfs / "bin/busybox")
    for link in ("sh", "mount", "umount", "insmod", "switch_root", "sleep", "cat", "echo", "mkdir"):
        (initramfs / "bin" / link).symlink_to("busybox")
    out = run(
        "readelf", "-d", "-l", "-W", rootfs / "usr/bin/busybox", stdout=subprocess.PIPE
    ).stdout
    libs = re.findall(r"Shared library: \[(.*)\]", out)
    interp = re.search(r"interpreter: (\S+)\]", out)
    assert interp
    libdir = initramfs / "lib"
    libdir.mkdir(exist_ok=True)
    for lib in [*libs, Path(interp.group(1)).name]:
        for cand in (rootfs / "usr/lib/arm-linux-gnueabihf" / lib, rootfs / "usr/lib" / lib):
            if cand.exists():
                shutil.copy2(cand.resolve(), libdir / lib)
                break
        else:
            raise SystemExit(f"ci-image: busybox needs {lib}, not in the image")
    (initramfs / "lib/arm-linux-gnueabihf").symlink_to(".")
    (initramfs / "etc/modules").write_text("".join(f"/lib/modules/{version}/{m}\n" for m in order))
    shutil.copy2(BOARD / "initramfs-init", initramfs / "init")
    (initramfs / "init").chmod(0o755)

    boot = rootfs / "boot"
    boot.mkdir(exist_ok=True)
    shutil.copy2(kernel_tree / "boot" / f"vmlinuz-{version}", boot / "vmlinuz")
    files = run("find", ".", "-print0", cwd=initramfs, stdout=subprocess.PIPE).stdout
    cpio = subprocess.run(
        ["cpio", "--null", "-o", "-H", "newc", "--quiet", "-R", "0:0"],
        input=files.encode(),
        cwd=initramfs,
        check=True,
        stdout=subprocess.PIPE,
    ).stdout
    (boot / "initrd.img").write_bytes(
        subprocess.run(["gzip", "-9n"], input=cpio, check=True, stdout=subprocess.PIPE).stdout
    )
    return version


# --- images ---------------------------------------------------------------------------------


def env_area() -> tuple[int, int]:
    """(offset, size) of the A/B variable area, from fw_env.config: the one place they live."""
    for raw in (BOARD / "rootfs-overlay/etc/fw_env.config").read_text().splitlines():
        fields = raw.split("#", 1)[0].split()
        if len(fields) >= 3:
            return int(fields[1], 0), int(fields[2], 0)
    raise SystemExit("ci-image: fw_env.config names no environment area")


def size_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def make_rootfs_image(rootfs: Path, image: Path) -> None:
    """An ext4 image just big enough for the tree (RAUC copies less), checked against the slot."""
    used = int(
        run("du", "-s", "-B1", "--apparent-size", rootfs, stdout=subprocess.PIPE).stdout.split()[0]
    )
    inodes = sum(1 for _ in rootfs.rglob("*")) + 1024
    size = (int(used * 1.25) + 16 * (1 << 20)) // (1 << 20) * (1 << 20)
    if size > size_bytes(ROOTFS_SIZE):
        raise SystemExit(
            f"ci-image: root file system ({size >> 20} MiB) does not fit its {ROOTFS_SIZE} slot"
        )
    step(
        f"rootfs.ext4: {used >> 20} MiB of files, {size >> 20} MiB file system, {ROOTFS_SIZE} slot"
    )
    image.unlink(missing_ok=True)
    run(
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        "rootfs",
        "-N",
        str(inodes),
        "-O",
        "^has_journal",
        "-E",
        "root_owner=0:0",
        "-d",
        rootfs,
        image,
        str(size >> 10),
    )


def make_boot_files(out: Path, extra_bootargs: str) -> None:
    offset, size = env_area()
    script = (BOARD / "boot.cmd").read_text()
    for key, value in {
        "@ENV_BLOCK@": hex(offset // 512), "@ENV_BLOCKS@": hex(size // 512),
        "@ENV_SIZE@": hex(size), "@EXTRA_BOOTARGS@": extra_bootargs,
    }.items():  # fmt: skip
        script = script.replace(key, value)
    (out / "boot.cmd").write_text(script)
    run(
        "mkimage",
        "-q",
        "-A",
        "arm",
        "-T",
        "script",
        "-C",
        "none",
        "-n",
        "gridedge A/B",
        "-d",
        out / "boot.cmd",
        out / "boot.scr",
        stdout=subprocess.DEVNULL,
    )
    env = out / "uboot-env.txt"
    env.write_text("BOOT_ORDER=A B\nBOOT_A_LEFT=3\nBOOT_B_LEFT=3\n")
    run("mkenvimage", "-s", str(size), "-o", out / "uboot-env.bin", env)
    host_cfg = out / "fw_env.config"
    host_cfg.write_text(
        f"# fw_printenv -c {host_cfg} : the A/B variables of disk.img\n"
        f"{out / 'disk.img'}\t{offset:#x}\t{size:#x}\n"
    )


def make_disk(out: Path) -> None:
    offset, _ = env_area()
    tmp = out / "genimage.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    empty = out / "genimage.root"
    empty.mkdir(exist_ok=True)
    env = dict(os.environ, ENV_OFFSET=str(offset), ROOTFS_SIZE=ROOTFS_SIZE, DATA_SIZE=DATA_SIZE)
    run(
        "genimage",
        "--config",
        BOARD / "genimage.cfg",
        "--rootpath",
        empty,
        "--tmppath",
        tmp,
        "--inputpath",
        out,
        "--outputpath",
        out,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    shutil.rmtree(tmp, ignore_errors=True)
    # genimage stops the file at the last written byte; the data partition must exist in full.
    total = 20 * (1 << 20) + 2 * size_bytes(ROOTFS_SIZE) + size_bytes(DATA_SIZE)
    os.truncate(out / "disk.img", total)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "output/ci-image")
    parser.add_argument("--cache", type=Path, default=ROOT / "output/cache")
    parser.add_argument("--lock", action="store_true", help="re-resolve packages.lock")
    parser.add_argument("--bootargs", default="quiet", help="extra kernel command line")
    # GRIDEDGE_RAUC_KEYRING (environment): a CA certificate to trust instead of test-keys/.
    args = parser.parse_args()
    args.cache = args.cache.resolve()
    started = time.monotonic()
    if args.lock:
        lock(args.cache)
        return 0
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    debs = fetch_debs(args.cache)
    wheels = fetch_wheels(args.cache, python_requirements())

    rootfs, kernel_tree = out / "rootfs", out / "kernel"
    for tree in (rootfs, kernel_tree):
        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir()
    step(f"unpacking {len(debs)} packages")
    for deb in debs:
        debian.unpack(deb, kernel_tree if deb.name.startswith("linux-image-") else rootfs)
    merge_usr(rootfs)
    prune(rootfs)
    busybox_links(rootfs)
    install_python(rootfs, wheels, out)
    for mount_point in MOUNT_POINTS:
        (rootfs / mount_point).mkdir(parents=True, exist_ok=True)
    apply_overlay(BOARD / "skeleton", rootfs)
    if COMMON_OVERLAY.is_dir():
        apply_overlay(COMMON_OVERLAY, rootfs)
    else:
        step(f"no {COMMON_OVERLAY.relative_to(ROOT)} yet: the image has only the CI skeleton")
    apply_overlay(BOARD / "rootfs-overlay", rootfs)
    write_users(rootfs)
    version = git_version()
    keyring = Path(os.environ.get("GRIDEDGE_RAUC_KEYRING") or ci_signing_keys(out) / "ca.cert.pem")
    post_build(rootfs, version, keyring)
    install_kernel(kernel_tree, rootfs, out)
    compile_python(rootfs)
    check_libraries(rootfs)

    make_rootfs_image(rootfs, out / "rootfs.ext4")
    make_boot_files(out, args.bootargs)
    step("genimage: disk.img")
    make_disk(out)
    (out / "version").write_text(version + "\n")
    step(f"done in {time.monotonic() - started:.0f} s: {out / 'disk.img'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
