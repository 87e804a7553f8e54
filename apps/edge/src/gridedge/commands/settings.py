"""The unit settings a command may change, kept on the data partition (never in the image).

Why a whitelist: a command comes from far away and must not be able to point
the unit at another cloud, change its keys or break its journal; only tuning
that is safe to get wrong (and to fix with another command) is allowed.

Changed values go to ``settings.toml`` in ``data_dir`` (written atomically:
a temporary file, fsync, rename, fsync of the folder), which
:func:`gridedge.config.load` lays over ``gridedge.toml`` at every start.  A
damaged file there is ignored with a warning rather than stop the unit.

Tests: tests/edge/test_edge_commands.py.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: "section.key" -> (lowest, highest) accepted value, in seconds.
WHITELIST: dict[str, tuple[float, float]] = {
    "uplink.heartbeat": (5.0, 3600.0),
    "uplink.batch_linger": (0.0, 600.0),
}

FILE_NAME = "settings.toml"


def parse(payload: bytes) -> dict[str, float]:
    """The settings of a SET_CONFIG payload (a JSON object); ValueError says what is wrong."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"settings are not JSON: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise ValueError("settings must be a non-empty JSON object")
    out: dict[str, float] = {}
    for name, value in doc.items():
        if name not in WHITELIST:
            raise ValueError(f"{name}: not a setting a command may change "
                             f"(allowed: {', '.join(sorted(WHITELIST))})")
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise ValueError(f"{name}: must be a number")
        low, high = WHITELIST[name]
        if not low <= value <= high:
            raise ValueError(f"{name}: {value} not in {low:g}..{high:g}")
        out[name] = float(value)
    return out


def read(path: Path) -> dict[str, float]:
    """The saved settings ("section.key" -> value); {} when there are none.

    Raises ValueError for a damaged file or values outside the whitelist.
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: unreadable: {exc}") from None
    flat: dict[str, Any] = {}
    for section, table in raw.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: {section} is not a section")
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return parse(json.dumps(flat).encode()) if flat else {}


def save(path: Path, changes: Mapping[str, float]) -> dict[str, float]:
    """Merge ``changes`` into the saved settings, durably; returns all saved settings."""
    try:
        current = read(path)
    except ValueError:
        current = {}  # a damaged file is replaced by a good one
    current.update(changes)
    sections: dict[str, list[str]] = {}
    for name in sorted(current):
        section, key = name.split(".", 1)
        sections.setdefault(section, []).append(f"{key} = {current[name]!r}")
    text = "# Written by gridedge (set_config commands); overrides gridedge.toml.\n"
    text += "".join(f"\n[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return current


def restore(path: Path, content: bytes) -> None:
    """Put back the file as it was (a change the configuration refused)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def json_payload(changes: Mapping[str, float]) -> bytes:
    """The SET_CONFIG payload of ``changes`` (what the cloud sends, too)."""
    return json.dumps(dict(changes), separators=(",", ":"), sort_keys=True).encode()
