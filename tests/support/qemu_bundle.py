"""RAUC update bundles for the boot tests, made on the host with Debian's rauc.

A bundle carries a root file system image: the CI image's own rootfs.ext4, or a copy changed
with debugfs (the image has no ext4 journal, so an offline edit is safe), e.g. a new version
string or a gridedge that never becomes healthy. Bundles are verity bundles, the only format
the image's system.conf accepts, signed with a key from board/qemu-ci/mk-test-keys.

The cloud of the OTA test serves them to the units over gridwire; for the updates by hand, a
plain HTTP server on the host's loopback (10.0.2.2 in the guest) serves them to the console,
as a technician's laptop would.

Tests: this is a helper of tests/qemu/test_qemu_ota.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPATIBLE = "gridedge-qemu-ci"


@dataclass(frozen=True)
class SigningKeys:
    """A RAUC signing certificate and key, and the CA that issued them."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_folder(cls, folder: Path) -> SigningKeys:
        return cls(folder / "signing.cert.pem", folder / "signing.key.pem", folder / "ca.cert.pem")

    @classmethod
    def make(cls, folder: Path) -> SigningKeys:
        """A new CA and signing key, trusted by nothing."""
        subprocess.run([str(ROOT / "board/qemu-ci/mk-test-keys"), str(folder)], check=True)
        return cls.in_folder(folder)


def changed_rootfs(src: Path, dest: Path, files: dict[str, tuple[bytes, int]]) -> Path:
    """A copy of the ext4 image ``src`` with ``files`` ({path: (content, mode)}) replaced."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True)
    staging = dest.parent / f"{dest.name}.files"
    staging.mkdir(exist_ok=True)
    commands = []
    for i, (path, (content, mode)) in enumerate(files.items()):
        local = staging / str(i)
        local.write_bytes(content)
        folder, name = path.rsplit("/", 1)
        commands += [
            f"cd {folder or '/'}",
            f"rm {name}",
            f"write {local} {name}",
            f"sif {name} mode 0{0o100000 | mode:o}",
            f"sif {name} uid 0",
            f"sif {name} gid 0",
        ]
    script = staging / "debugfs.cmds"
    script.write_text("\n".join(commands) + "\n")
    out = subprocess.run(
        ["debugfs", "-w", "-f", str(script), str(dest)], capture_output=True, text=True, check=True
    )
    errors = [
        line
        for line in out.stderr.splitlines()
        if "debugfs 1." not in line and "File not found by ext2_lookup" not in line
    ]
    if errors:
        raise AssertionError(f"debugfs on {dest}: {errors}")
    shutil.rmtree(staging)
    return dest


class BundleJob:
    """'rauc bundle' running in the background (it takes seconds: the unit boots meanwhile)."""

    def __init__(
        self, out: Path, rootfs: Path, keys: SigningKeys, *, version: str, compatible: str
    ) -> None:
        self.out = out
        self.content = out.parent.parent / f"{out.name}.content"
        shutil.rmtree(self.content, ignore_errors=True)
        self.content.mkdir(parents=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = self.content / "rootfs.ext4"
        try:
            os.link(rootfs, image)
        except OSError:
            shutil.copyfile(rootfs, image)
        (self.content / "manifest.raucm").write_text(
            f"[update]\ncompatible={compatible}\nversion={version}\n\n"
            "[bundle]\nformat=verity\n\n[image.rootfs]\nfilename=rootfs.ext4\n"
        )
        out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                "rauc",
                "bundle",
                f"--cert={keys.cert}",
                f"--key={keys.key}",
                str(self.content),
                str(out),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def path(self) -> Path:
        """Wait for the bundle; fail with rauc's output if it could not be made."""
        output, _ = self.proc.communicate(timeout=300)
        shutil.rmtree(self.content, ignore_errors=True)
        if self.proc.returncode != 0:
            raise AssertionError(
                f"rauc bundle {self.out} failed:\n{output.decode(errors='replace')}"
            )
        return self.out


def start_bundle(
    out: Path, rootfs: Path, keys: SigningKeys, *, version: str, compatible: str = COMPATIBLE
) -> BundleJob:
    """Start signing a verity bundle that installs ``rootfs`` into the inactive rootfs slot."""
    return BundleJob(out, rootfs, keys, version=version, compatible=compatible)


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[int]:
    """Serve ``folder`` on a free loopback port (10.0.2.2:PORT from the guest)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
