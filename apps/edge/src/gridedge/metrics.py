"""The unit's Prometheus endpoint: the health report as metrics, on a local interface only.

What it shows, read at each scrape from the same report `gridedge health` prints
(gridedge.health): radio frames good and dropped (and by reason), meters heard,
the radio backlog, the journal backlog, its age and size, the uplink state, handshakes,
bytes up and down today, the supervised parts' restarts, uptime.

Why local only: the unit sits on a cellular link that is metered and reachable
by whoever shares the operator's network; metrics are for a technician on site
(or a local agent that ships a digest over the uplink), never for scraping over
the air.  So ``[health] metrics_listen`` must name a loopback interface (or a
Unix socket); anything else is refused at start (gridedge.config).

Why the text format is written here rather than with prometheus-client: the
unit's Python libraries are the ones the firmware image ships
(board/qemu-ci/unit-python.txt, Buildroot 2025.02's packages), which has no
prometheus-client; the exposition format is a few lines of text, and adding a
package to the image for it would cost flash and a CI image rebuild for nothing
this module cannot do in forty lines.  The cloud, which has no such limit, uses
prometheus-client (gridcloud.metrics).

Tests: tests/edge/test_edge_metrics.py, tests/system/test_scale_out.py (the real unit).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

log = Logger(namespace="gridedge.metrics")

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    label_text = ""
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        label_text = "{" + inner + "}"
    if math.isinf(value):
        shown = "+Inf" if value > 0 else "-Inf"
    else:
        shown = repr(float(value)) if not float(value).is_integer() else str(int(value))
    return f"{name}{label_text} {shown}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _family(name: str, kind: str, help_text: str,
            samples: Sequence[tuple[float, dict[str, str] | None]]) -> Iterator[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"
    sample = f"{name}_total" if kind == "counter" else name  # the convention for counters
    for value, labels in samples:
        yield _line(sample, value, labels)


def render(report: dict[str, Any], today: str | None = None) -> str:
    """The Prometheus text exposition of a health report (gridedge.health.HealthService)."""
    snap = report["snapshot"]
    details = snap.get("details", {})
    out: list[str] = []

    def one(name: str, kind: str, help_text: str, value: float | None,
            labels: dict[str, str] | None = None) -> None:
        if value is not None:
            out.extend(_family(name, kind, help_text, [(value, labels)]))

    one("gridedge_healthy", "gauge", "1 when every rule of gridedge health holds",
        1 if report.get("healthy") else 0)
    one("gridedge_uptime_seconds", "gauge", "seconds since the process started",
        snap["now"] - snap["started_at"])
    info = {"firmware_version": str(details.get("firmware_version", "")),
            "boot_slot": str(details.get("boot_slot", ""))}
    one("gridedge_info", "gauge", "firmware version and boot slot", 1, info)
    parts = snap.get("parts", {})
    out.extend(_family("gridedge_part_restarts", "counter",
                       "restarts of each supervised part since the process started",
                       [(p.get("restarts", 0), {"part": n}) for n, p in sorted(parts.items())]))
    out.extend(_family("gridedge_part_running", "gauge", "1 while the part runs",
                       [(1 if p.get("running") else 0, {"part": n})
                        for n, p in sorted(parts.items())]))

    journal = details.get("journal")
    if journal is not None:
        one("gridedge_journal_pending", "gauge", "entries not yet acknowledged by the cloud",
            journal["pending"])
        one("gridedge_journal_size_bytes", "gauge", "journal file size", journal["size_bytes"])
        one("gridedge_journal_max_bytes", "gauge", "journal size limit", journal["max_bytes"])
        one("gridedge_journal_evicted", "counter", "entries evicted unsent (journal full)",
            journal["evicted_total"])
        one("gridedge_journal_disk_full", "gauge", "1 while the data partition is full",
            1 if journal["disk_full"] else 0)
        oldest = details.get("journal_oldest_pending_at")
        one("gridedge_journal_oldest_pending_age_seconds", "gauge",
            "age of the oldest entry not yet acknowledged (its interval end), 0 when none",
            max(0.0, snap["now"] - oldest) if oldest is not None else 0)

    uplink = details.get("uplink")
    if uplink is not None:
        one("gridedge_uplink_connected", "gauge", "1 while a session with the cloud is up",
            1 if uplink["connected"] else 0)
        last = uplink.get("last_connected_at")
        one("gridedge_uplink_last_connected_seconds", "gauge",
            "seconds since the uplink was last connected",
            snap["now"] - last if last is not None else None)
        out.extend(_family("gridedge_uplink_handshakes", "counter",
                           "TLS handshakes with the cloud, full or resumed",
                           [(uplink["full_handshakes"], {"kind": "full"}),
                            (uplink["resumed_handshakes"], {"kind": "resumed"})]))

    traffic = details.get("traffic_per_day")
    if traffic is not None:
        day = today or datetime.datetime.fromtimestamp(snap["now"], datetime.UTC).strftime(
            "%Y-%m-%d")
        sent, received = traffic.get(day, (0, 0))
        out.extend(_family("gridedge_uplink_bytes_today", "gauge",
                           "bytes on the uplink today (UTC), TLS included",
                           [(sent, {"direction": "up"}), (received, {"direction": "down"})]))

    radio = details.get("radio")
    if radio is not None:
        one("gridedge_radio_frames_ok", "counter", "radio frames decoded", radio["frames_ok"])
        drops = [(v, {"reason": k.removeprefix("dropped_")}) for k, v in sorted(radio.items())
                 if k.startswith("dropped_")]
        out.extend(_family("gridedge_radio_frames_dropped", "counter",
                           "radio frames dropped, by reason", drops))
        one("gridedge_radio_meters", "gauge", "meters heard (in the registry)", radio["meters"])
        one("gridedge_radio_intervals_owed", "gauge", "intervals the radio link still fetches",
            radio["intervals_owed"])
    if snap.get("radio_last_frame_at") is not None:
        one("gridedge_radio_last_frame_seconds", "gauge", "seconds since the last good frame",
            snap["now"] - snap["radio_last_frame_at"])
    return "\n".join(out) + "\n"


class _Metrics(Resource):
    isLeaf = True

    def __init__(self, report: Callable[[], dict[str, Any]]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._report = report

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE)  # type: ignore[no-untyped-call]
        return render(self._report()).encode()


class MetricsService(service.Service):
    """Serves ``/metrics`` on ``description`` (checked local by gridedge.config)."""

    def __init__(self, reactor: Any, description: str,
                 report: Callable[[], dict[str, Any]]) -> None:
        self._reactor = reactor
        self._description = description
        root = Resource()  # type: ignore[no-untyped-call]
        root.putChild(b"metrics", _Metrics(report))
        self._site = Site(root)  # type: ignore[no-untyped-call]
        self._site.log = lambda request: None  # type: ignore[method-assign]
        self.port: Any = None

    @defer.inlineCallbacks
    def startService(self) -> Any:
        super().startService()  # type: ignore[no-untyped-call]
        endpoint = endpoints.serverFromString(  # type: ignore[no-untyped-call]
            self._reactor, self._description)
        self.port = yield endpoint.listen(self._site)
        log.info("metrics on {address}/metrics", address=self.port.getHost())

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        if port is not None:
            yield port.stopListening()


def check_local(description: str) -> str | None:
    """Why ``description`` is not a local-only endpoint (None when it is)."""
    # Twisted's endpoint syntax: fields split on ':' unless escaped as '\:' (IPv6 addresses)
    fields = [f.replace("\\:", ":") for f in re.split(r"(?<!\\):", description)]
    kind = fields[0]
    if kind == "unix":
        return None
    if kind not in ("tcp", "tcp6"):
        return f"must be a tcp: or unix: endpoint, not {kind!r}"
    options = dict(part.split("=", 1) for part in fields[2:] if "=" in part)
    interface = options.get("interface")
    if interface not in ("127.0.0.1", "::1", "localhost"):
        return (f"must listen on a loopback interface only (add :interface=127.0.0.1), "
                f"not {interface or 'every interface'}")
    return None
