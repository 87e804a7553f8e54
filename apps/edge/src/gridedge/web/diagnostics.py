"""The diagnostics bundle for support: recent log lines, the configuration without secrets,
journal and link statistics, in one .tar.gz made in memory.

Why the log tail is kept here: the unit logs to standard output (collected by init), which the
page cannot read back, so :class:`LogTail` keeps the last lines in a bounded deque as a
Twisted log observer.  The configuration is the file as written, with the value of every key
whose name looks secret (password, token, secret, key but not key paths) replaced.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

import collections
import io
import json
import re
import tarfile
import time
from pathlib import Path
from typing import Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

__all__ = ["LogTail", "bundle", "redact"]

_SECRET = re.compile(r"^(\s*[\w.-]*(?:password|passwd|secret|token|apikey|api_key|psk)"
                     r"[\w.-]*\s*=\s*).*$", re.IGNORECASE | re.MULTILINE)


@implementer(ILogObserver)
class LogTail:
    """The last ``keep`` log lines of this process."""

    def __init__(self, keep: int = 500) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(event.get("log_time", 0)))
        level = getattr(event.get("log_level"), "name", "info")
        self.lines.append(f"{when} [{event.get('log_namespace', '-')}#{level}] {text}")


def redact(text: str) -> str:
    """``text`` (TOML) with the values of secret-looking keys replaced."""
    return _SECRET.sub(lambda m: m.group(1) + '"(removed)"', text)


def bundle(config_path: Path, log_lines: list[str], stats: dict[str, Any]) -> bytes:
    """The .tar.gz: ``gridedge.toml``, ``log.txt``, ``stats.json``."""
    try:
        config = redact(config_path.read_text(errors="replace"))
    except OSError as exc:
        config = f"# cannot read {config_path}: {exc}\n"
    files = {
        "gridedge.toml": config.encode(),
        "log.txt": ("\n".join(log_lines) + "\n").encode(),
        "stats.json": json.dumps(stats, indent=2, sort_keys=True, default=str).encode(),
    }
    out = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"gridedge-diagnostics/{name}")
            info.size, info.mtime, info.mode = len(data), int(now), 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
