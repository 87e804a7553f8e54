"""Readers for the files of the Buildroot external tree, shared by the tests in tests/firmware/.

Small parsers for what the tests compare: defconfigs, genimage.cfg partitions, the partition
table of docs/firmware.md, Config.in selects, platform.conf. They read only the subset of each
format the tree uses and fail loudly on anything else, so a test cannot pass on a misread file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXTERNAL = REPO / "br2-external"
PACKAGES = REPO / "package"
BOARD = REPO / "board"
EXTERNAL_VAR = "$(BR2_EXTERNAL_GRIDEDGE_PATH)"
DEFCONFIGS = sorted((EXTERNAL / "configs").glob("*_defconfig"))
# Board folders used by the Buildroot defconfigs (board/qemu-ci is the Debian-based CI image).
BUILDROOT_BOARDS = ("beaglebone", "qemu-vexpress")
MIB = 1024 * 1024


def parse_defconfig(path: Path) -> dict[str, str | None]:
    """Return symbol -> value (strings unquoted; None for '# X is not set')."""
    symbols: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"# (BR2_\w+) is not set", line):
            symbols[match.group(1)] = None
        elif match := re.fullmatch(r"(BR2_\w+)=(.*)", line):
            value = match.group(2)
            if value.startswith('"'):
                assert value.endswith('"'), line
                value = value[1:-1]
            symbols[match.group(1)] = value
        else:
            raise AssertionError(f"{path.name}: unexpected line {line!r}")
    return symbols


def size_bytes(text: str) -> int:
    """Parse a genimage size or offset: 512M, 4M, 16K, 2G, 0x260000, 1234."""
    text = text.strip().strip('"')
    if text.startswith("0x"):
        return int(text, 16)
    units = {"K": 1024, "M": MIB, "G": 1024 * MIB}
    if text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition of genimage.cfg's hdimage, as written (offset None: after the previous)."""

    name: str
    offset: int | None
    size: int | None
    image: str | None
    partition_type: int | None
    bootable: bool
    in_partition_table: bool


def genimage_partitions(path: Path, image: str = "sdcard.img") -> list[Partition]:
    """Return the partitions of `image` in genimage.cfg, in order."""
    text = path.read_text()
    start = text.index(f"image {image} {{")
    body = text[start:]
    partitions = []
    for match in re.finditer(r"partition ([\w-]+) \{(.*?)\n\t\}", body, re.DOTALL):
        fields = dict(re.findall(r"^\t\t([\w-]+) = (.+)$", match.group(2), re.MULTILINE))
        partitions.append(
            Partition(
                name=match.group(1),
                offset=size_bytes(fields["offset"]) if "offset" in fields else None,
                size=size_bytes(fields["size"]) if "size" in fields else None,
                image=fields.get("image", "").strip('"') or None,
                partition_type=int(fields["partition-type"], 16)
                if "partition-type" in fields
                else None,
                bootable=fields.get("bootable", '"false"').strip('"') == "true",
                in_partition_table=fields.get("in-partition-table", "true").strip('"') != "false",
            )
        )
    assert partitions, f"no partitions in {path}"
    return partitions


def docs_partition_map() -> dict[str, tuple[int, int]]:
    """Return device -> (offset, size) from the "Partition map" table of docs/firmware.md."""
    text = (REPO / "docs" / "firmware.md").read_text()
    section = text[text.index("### Partition map") :]
    rows: dict[str, tuple[int, int]] = {}
    for line in section.splitlines()[1:]:
        if line.startswith("###"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != 5 or not cells[1].startswith("mmcblk0p"):
            continue
        offset = size_bytes(cells[2].replace(" MiB", "M"))
        size = size_bytes(cells[3].split(",")[0].replace(" MiB", "M"))
        rows[cells[1]] = (offset, size)
    return rows


def config_in_selects(path: Path) -> dict[str, str]:
    """Return selected symbol -> the comment after it ('' when none)."""
    return {
        match.group(1): match.group(2) or ""
        for match in re.finditer(
            r"^\tselect (BR2_\w+)(?: if [^#\n]+)?(?:\s*#\s*(.*))?$", path.read_text(), re.MULTILINE
        )
    }


def read_assignments(path: Path) -> dict[str, str]:
    """Return KEY -> value of a file of KEY=value lines (platform.conf, fragments)."""
    values = {}
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z_0-9]+)=(.*)", line):
            values[match.group(1)] = match.group(2).strip('"')
    return values


def slot_choice_block(boot_cmd: Path) -> str:
    """Return the lines between the "slot choice" markers of a boot script."""
    text = boot_cmd.read_text()
    start = text.index("# --- slot choice")
    start = text.index("\n", start) + 1
    end = text.index("# --- end of slot choice ---")
    return text[start:end]
