"""Debian armhf packages for the CI image: locking, downloading and unpacking them.

apt runs with a state folder of its own (APT_CONFIG pointing at a generated apt.conf with
APT::Architecture=armhf), so the host's apt set-up, package lists and dpkg database are never
touched. Only bookworm and bookworm-updates are used: the bookworm-security armhf index has been
seen failing to download here with size mismatches.

Tests: tests/qemu/ (every boot test runs what this unpacks).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SUITES = ("bookworm", "bookworm-updates")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def debian_mirror() -> str:
    """The Debian archive this machine's own apt uses (GRIDEDGE_DEBIAN_MIRROR overrides it).

    The project names no download host: it takes the one the host is already set up with,
    from deb822 .sources files or one-line sources.list entries, skipping security archives.
    """
    override = os.environ.get("GRIDEDGE_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, sep, value in (line.partition(":") for line in stanza.splitlines())
                if sep and not key.startswith("#")
            )
            if "deb" in fields.get("types", "").split() and "bookworm" in fields.get("suites", ""):
                candidates += fields.get("uris", "").split()
    sources_list = Path("/etc/apt/sources.list")
    if sources_list.exists():
        for line in sources_list.read_text().splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()
            if len(words) >= 3 and words[0] == "deb" and words[2].startswith("bookworm"):
                candidates.append(words[1])
    for uri in candidates:
        if "security" not in uri:
            return uri.rstrip("/")
    raise SystemExit(
        "no Debian bookworm archive found in /etc/apt/sources.list(.d): "
        "set GRIDEDGE_DEBIAN_MIRROR to the URL of a Debian archive"
    )


def read_package_list(path: Path) -> tuple[list[str], set[str]]:
    """Return (wanted, excluded) names from packages.txt ('-NAME' lines are exclusions)."""
    wanted: list[str] = []
    excluded: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            excluded.add(line[1:])
        else:
            wanted.append(line)
    return wanted, excluded


def read_lock(path: Path) -> list[tuple[str, str]]:
    """Return the (name, version) pairs of packages.lock."""
    pairs = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("=")
            pairs.append((name, version))
    return pairs


class Apt:
    """apt-get and apt-cache confined to a state folder under the cache."""

    def __init__(self, state: Path) -> None:
        # apt reads relative Dir:: settings against its own root, not our working directory.
        state = state.resolve()
        self.state = state
        for sub in ("lists/partial", "archives/partial", "etc/apt.conf.d", "etc/preferences.d"):
            (state / sub).mkdir(parents=True, exist_ok=True)
        (state / "status").touch()
        mirror = debian_mirror()
        (state / "sources.list").write_text(
            "".join(
                f"deb [arch=armhf signed-by={KEYRING}] {mirror} {suite} main\n" for suite in SUITES
            )
        )
        settings = {
            "APT::Architecture": "armhf",
            "APT::Architectures": "armhf",
            "APT::Install-Recommends": "false",
            "APT::Sandbox::User": "root",
            "Acquire::Languages": "none",
            "Dir::State": state,
            "Dir::State::Lists": state / "lists",
            "Dir::State::status": state / "status",
            "Dir::Cache": state / "cache",
            "Dir::Cache::archives": state / "archives",
            "Dir::Etc::SourceList": state / "sources.list",
            "Dir::Etc::SourceParts": "/nonexistent",
            "Dir::Etc::Parts": state / "etc/apt.conf.d",
            "Dir::Etc::Preferences": state / "etc/preferences",
            "Dir::Etc::PreferencesParts": state / "etc/preferences.d",
            "Debug::NoLocking": "1",
        }
        self.config = state / "apt.conf"
        self.config.write_text("".join(f'{k} "{v}";\n' for k, v in settings.items()))

    def run(self, *args: str, cwd: Path | None = None) -> str:
        env = dict(os.environ, APT_CONFIG=str(self.config), DEBIAN_FRONTEND="noninteractive")
        done = subprocess.run(args, env=env, cwd=cwd, check=True, stdout=subprocess.PIPE, text=True)
        return done.stdout

    def update(self) -> None:
        self.run("apt-get", "-q", "update")

    def resolve(self, wanted: list[str], excluded: set[str]) -> list[tuple[str, str]]:
        """Resolve wanted names with their dependencies, less the excluded ones."""
        out = self.run("apt-get", "install", "-s", "-q", *wanted)
        pairs = re.findall(r"^Inst (\S+) \((\S+)", out, re.MULTILINE)
        return sorted((n, v) for n, v in pairs if n not in excluded)

    def download(self, pairs: list[tuple[str, str]], dest: Path) -> list[Path]:
        """Download the exact versions into dest (kept: dest is the cache), return the files."""
        dest.mkdir(parents=True, exist_ok=True)
        missing = [(n, v) for n, v in pairs if not _deb_in(dest, n, v)]
        if missing:
            if not any((self.state / "lists").glob("*Packages*")):
                self.update()
            try:
                self.run("apt-get", "-q", "download", *(f"{n}={v}" for n, v in missing), cwd=dest)
            except subprocess.CalledProcessError:
                # A stale package list misses the newest point-release versions: refresh once.
                self.update()
                self.run("apt-get", "-q", "download", *(f"{n}={v}" for n, v in missing), cwd=dest)
        files = []
        for n, v in pairs:
            found = _deb_in(dest, n, v)
            if found is None:
                raise SystemExit(f"ci-image: {n}={v} was not downloaded; run 'make ci-image-lock'")
            files.append(found)
        return files


def _deb_in(folder: Path, name: str, version: str) -> Path | None:
    # apt names files NAME_VERSION_ARCH.deb with ':' in the version written as %3a.
    quoted = version.replace(":", "%3a")
    for arch in ("armhf", "all"):
        path = folder / f"{name}_{quoted}_{arch}.deb"
        if path.exists():
            return path
    return None


def unpack(deb: Path, root: Path) -> None:
    """Unpack a .deb's files (no maintainer scripts: nothing runs for the foreign architecture)."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
