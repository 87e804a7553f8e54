"""Health: is every part of the unit doing its job?  Asked by `gridedge health`.

Why a Unix socket rather than a status file: a file rewritten every few
seconds wears the flash, and a stale file cannot tell a hung process from a
healthy one.  The running process answers on ``[health] socket`` with one JSON
document and closes; if the reactor is hung the question times out, which is
itself the answer.

The rule (``evaluate``): the unit is healthy when all of these hold

1. every supervised part (journal, radio, uplink) is running, not waiting to
   be restarted;
2. the journal is open and its last write did not fail for a full disk;
3. if a radio port is configured, a good radio frame arrived within
   ``radio_window`` seconds (default 300);
4. the uplink is connected (Welcome received) now, or was within
   ``uplink_window`` seconds (default 900).

Right after boot, 3 and 4 are false until the first frame and the first
Welcome.  Rules 1 and 2 alone are "running" (``gridedge health --running``):
that is what the firmware's mark-good step waits for, because a slot must not
be given up for an outage of the cellular network or of the meters' mesh (the
unit would reboot into the other slot during every long outage).  For the same
reason "running" judges the firmware, not the disk: a journal kept closed or
refused writes by a fault of the data partition (full, I/O errors, a journal
that cannot even be moved aside) makes the unit unhealthy but not "not
running", since another firmware slot would meet the same disk.  While the
journal is kept closed so, the parts that need it (the radio link reads its
watermarks at start) cannot run either, and "running" asks no more than the
process answering.  The full
rule is for monitoring and for a technician on site.

Beside the verdict the report carries ``notes``: facts an operator should see
that do not make the unit unhealthy.  Today that is the radio backlog (meters
and intervals the radio link still has to fetch, the oldest owed interval;
``radio_backlog``), which after an outage can take many minutes to clear.

Tests: tests/edge/test_health.py.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the rule looks at, taken from the running parts."""

    now: float
    started_at: float
    parts: dict[str, dict[str, Any]]
    journal_open: bool
    journal_disk_full: bool
    radio_configured: bool
    radio_last_frame_at: float | None
    uplink_connected: bool
    uplink_last_connected_at: float | None
    details: dict[str, Any] = field(default_factory=dict)
    journal_disk_fault: str | None = None  # why the data partition keeps the journal closed


def evaluate(s: Snapshot, radio_window: float, uplink_window: float) -> list[str]:
    """The problems that make the unit unhealthy (empty list: healthy)."""
    problems = running_problems(s) + disk_problems(s)
    problems += contact_problems(s, radio_window, uplink_window)
    return problems


def running_problems(s: Snapshot) -> list[str]:
    """Rules 1 and 2 as far as the firmware is to blame: a part is down or the journal is not
    open.  Nothing while the data partition keeps the journal closed (see
    :func:`disk_problems`): every part needs the journal, and another slot would not help."""
    if s.journal_disk_fault is not None:
        return []
    problems = [
        f"{name} is not running (restarts: {p['restarts']}, last error: {p['last_error']})"
        for name, p in s.parts.items() if not p["running"]
    ]
    if not s.journal_open:
        problems.append("journal is not open")
    return problems


def disk_problems(s: Snapshot) -> list[str]:
    """Rule 2 where the data partition is to blame: unhealthy, yet still "running"."""
    if s.journal_disk_fault is not None:
        return [f"journal: data partition fault: {s.journal_disk_fault}"]
    if s.journal_open and s.journal_disk_full:
        return ["journal: data partition is full"]
    return []


def contact_problems(s: Snapshot, radio_window: float, uplink_window: float) -> list[str]:
    """Rules 3 and 4: the meters or the cloud have not been heard recently."""
    problems: list[str] = []
    if s.radio_configured:
        if s.radio_last_frame_at is None:
            problems.append("radio: no frame received yet")
        elif s.now - s.radio_last_frame_at > radio_window:
            problems.append(
                f"radio: no frame for {s.now - s.radio_last_frame_at:.0f} s "
                f"(window {radio_window:.0f} s)")
    if not s.uplink_connected:
        if s.uplink_last_connected_at is None:
            problems.append("uplink: never connected to the cloud since start")
        elif s.now - s.uplink_last_connected_at > uplink_window:
            problems.append(
                f"uplink: disconnected for {s.now - s.uplink_last_connected_at:.0f} s "
                f"(window {uplink_window:.0f} s)")
    return problems


def radio_backlog(s: Snapshot) -> dict[str, Any] | None:
    """What the radio link still owes the journal, from its counters (None without a radio)."""
    radio = s.details.get("radio")
    if not radio or "meters_owed" not in radio:
        return None
    return {
        "meters_owed": radio["meters_owed"],
        "intervals_owed": radio["intervals_owed"],
        "oldest_owed": radio["oldest_owed"] or None,  # an interval end, Unix seconds
        "records_held": radio["records_held"],
        "polls_queued": radio["polls_queued"],
    }


def notes(s: Snapshot) -> list[str]:
    """Lines worth showing that do not make the unit unhealthy (a radio backlog)."""
    backlog = radio_backlog(s)
    if not backlog or not backlog["meters_owed"]:
        return []
    oldest = backlog["oldest_owed"]
    when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(oldest)) if oldest else "-"
    return [
        f"radio backlog: {backlog['meters_owed']} meters owe {backlog['intervals_owed']} "
        f"intervals, the oldest ending {when}; {backlog['records_held']} records held "
        f"in memory, {backlog['polls_queued']} meters queued for a poll"
    ]


class _Answer(Protocol):
    log = Logger()

    def connectionMade(self) -> None:
        try:
            report = self.factory.report()
        except Exception as exc:
            self.log.failure("health report failed")
            failed = [f"health report failed: {exc!r}"]
            report = {"healthy": False, "problems": failed,
                      "running": False, "running_problems": failed}
        assert self.transport is not None
        self.transport.write(json.dumps(report, sort_keys=True, default=str).encode() + b"\n")
        self.transport.loseConnection()


class HealthService(service.Service):
    """Watches the parts (radio frames) and answers health questions on a Unix socket."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        socket_path: Path,
        snapshot: Callable[[], Snapshot],
        radio_frames: Callable[[], int | None],
        *,
        radio_window: float,
        uplink_window: float,
        poll: float = 5.0,
    ) -> None:
        self.reactor = reactor
        self.socket_path = socket_path
        self._snapshot = snapshot
        self._radio_frames = radio_frames
        self.radio_window = radio_window
        self.uplink_window = uplink_window
        self._poll = poll
        self._frames: int | None = None
        self.radio_last_frame_at: float | None = None
        self._loop: LoopingCall | None = None
        self._port: Any = None

    def report(self) -> dict[str, Any]:
        self.watch_radio()
        snap = self._snapshot()
        running = running_problems(snap)
        problems = evaluate(snap, self.radio_window, self.uplink_window)
        return {"healthy": not problems, "problems": problems,
                "running": not running, "running_problems": running,
                "notes": notes(snap), "radio_backlog": radio_backlog(snap),
                "snapshot": asdict(snap)}

    def watch_radio(self) -> None:
        """Note when the radio link's good-frame counter last moved."""
        frames = self._radio_frames()
        if frames is not None and frames != self._frames:
            if self._frames is not None or frames > 0:
                self.radio_last_frame_at = self.reactor.seconds()
            self._frames = frames

    @defer.inlineCallbacks
    def startService(self) -> Any:
        super().startService()  # type: ignore[no-untyped-call]
        self._loop = LoopingCall(self.watch_radio)
        self._loop.clock = self.reactor
        self._loop.start(self._poll, now=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.is_socket():
            self.socket_path.unlink()  # left by a process that was killed
        factory = Factory.forProtocol(_Answer)
        factory.noisy = False
        factory.report = self.report  # type: ignore[attr-defined]
        endpoint = UNIXServerEndpoint(self.reactor, str(self.socket_path), mode=0o660)  # type: ignore[no-untyped-call]
        self._port = yield endpoint.listen(factory)  # type: ignore[no-untyped-call]

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        port, self._port = self._port, None
        return defer.maybeDeferred(port.stopListening) if port is not None else None


def ask(socket_path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the running unit (blocking; for the CLI).  Raises OSError when nobody answers."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    report: dict[str, Any] = json.loads(b"".join(chunks))
    return report
