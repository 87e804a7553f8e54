"""Debian's real HAProxy, run with the shipped deploy/haproxy/haproxy.cfg on loopback ports.

The configuration takes its addresses from the environment (see its header), so the test
runs the very file an operator installs, only with loopback ports.  Server states come from
HAProxy's own admin socket (``show stat``), as an operator would read them.

Tests: tests/system/test_scale_out.py.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from support.edge_harness import Proc, free_port
from support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


@dataclass
class Backend:
    """A process HAProxy sends to: its traffic port and its /healthz port."""

    port: int = field(default_factory=free_port)
    health: int = field(default_factory=free_port)


@dataclass
class HAProxy:
    """haproxy -db -f deploy/haproxy/haproxy.cfg, edges on ``edge_port``, the API on
    ``api_port``, two serve nodes and two API processes behind."""

    root: Path
    serve: tuple[Backend, Backend]
    api: tuple[Backend, Backend]
    edge_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    proc: Proc | None = None

    @property
    def socket_path(self) -> Path:
        return self.root / "haproxy.sock"

    @property
    def log(self) -> Path:
        return self.root / "haproxy.log"

    def environment(self) -> dict[str, str]:
        env = {
            "EDGE_BIND": f"127.0.0.1:{self.edge_port}",
            "API_BIND": f"127.0.0.1:{self.api_port}",
            "HAPROXY_SOCKET": str(self.socket_path),
            "HAPROXY_MAXCONN": "4000",  # within a test machine's open-files limit
        }
        for name, backends in (("SERVE", self.serve), ("API", self.api)):
            for i, b in enumerate(backends, 1):
                env[f"{name}{i}"] = f"127.0.0.1:{b.port}"
                env[f"{name}{i}_HEALTH"] = str(b.health)
        return env

    def start(self) -> HAProxy:
        binary = haproxy_binary()
        assert binary, "haproxy is not installed (Debian: apt-get install haproxy)"
        self.proc = Proc("haproxy", [binary, "-db", "-f", str(CONFIG)], self.log,
                         env=self.environment()).start()
        wait_until(self._listening, 20, "haproxy to listen", (self.log,))
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        if not self.proc.alive:
            raise AssertionError("haproxy exited:\n" + self.log.read_text()[-3000:])
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.edge_port), 1):
            return self.socket_path.exists()
        return False

    def command(self, line: str) -> str:
        """One command on the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """``backend/server`` -> status (UP, DOWN, ...), from ``show stat``."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(text.splitlines())
        return {f"{r['pxname']}/{r['svname']}": r["status"] for r in rows
                if r["svname"] not in ("FRONTEND", "BACKEND")}

    def all_up(self) -> bool:
        states = self.states()
        return len(states) == 4 and all(s.startswith("UP") for s in states.values())
