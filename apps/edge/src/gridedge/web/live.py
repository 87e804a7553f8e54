"""Live updates: open pages subscribe with Server-Sent Events and get what changed as soon as
it changed, at most once per ``[web] live_gap`` seconds, and the dashboard's numbers once per
``[web] live_every`` second.

Why a push on change, throttled, and not a tick: the page promises a new reading or state change
within 2 s of the unit having it.  A fixed tick adds up to a whole period of waiting to every
change; a push per record to each open page would cost the radio link's reactor more than the
page is worth when a thousand meters report.  So the history (gridedge.web.history) calls
:meth:`LiveHub.changed` after each change (a record stored in the journal, a join, a leave, a
mesh status, a relay confirmation): when the last push is older than ``live_gap`` the push goes
out on the next turn of the reactor (a burst of frames read at once is one push), otherwise at
the end of the gap.  Each meters table or meter page gets only the meters that changed since
its last update (found by the history's sequence numbers), so the work per push does not grow
with the number of records in between.  The dashboard's numbers cost more (a look at every
meter, the journal's counters, the operating system's): they are gathered once for every page
that shows them, at a push when the last gathering is ``live_every`` old, and by a tick every
``live_every`` for what changes without an event (uptime, CPU, the cloud link).  Latency: a
meter change reaches the page within ``live_gap`` (0.25 s) plus the network, the dashboard
within ``live_every`` (1 s) plus the network (tests/web measures both).

Open streams are bounded (``MAX_STREAMS``); a page beyond that gets 503 and its script retries.
A comment line every 15 s keeps idle connections from being cut by the browser or the Wi-Fi,
and every write re-arms the site's idle timeout (twisted.web counts only bytes *received* as
activity, and a stream's browser sends nothing after its request).

Slow readers cannot make the unit buffer without bound: while the connection's transport has
asked twisted.web to pause (its send buffer is full), a stream is skipped and its ``seen``
mark left alone, so the next update it gets carries everything it missed; a stream that stays
blocked for ``_STALLED`` seconds is closed (the page's script reconnects).

Tests: tests/web/test_web_browser.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .history import History

__all__ = ["MAX_STREAMS", "LiveHub"]

MAX_STREAMS = 32
_KEEPALIVE = 15.0
_STALLED = 60.0


@dataclass(slots=True, eq=False)
class _Stream:
    request: Any
    view: str
    meter: int | None
    seen: int
    last_write: float
    dash: str = ""


class LiveHub:
    """The open event streams and the tick that feeds them."""

    log = Logger()

    def __init__(self, clock: IReactorTime, every: float, history: History,
                 dashboard: Callable[[], dict[str, str]],
                 meter_rows: Callable[[list[int]], list[dict[str, Any]]],
                 meter_fragment: Callable[[int], dict[str, Any]], gap: float = 0.25) -> None:
        self.clock = clock
        self.every = every
        self.gap = gap
        self.history = history
        self.dashboard = dashboard
        self.meter_rows = meter_rows
        self.meter_fragment = meter_fragment
        self._streams: list[_Stream] = []
        self._loop: LoopingCall | None = None
        self._push: IDelayedCall | None = None
        self._pushed_at = -1e18
        self._dash_at = -1e18

    @property
    def streams(self) -> int:
        return len(self._streams)

    def start(self) -> None:
        self.history.listeners.append(self.changed)
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.clock
        self._loop.start(self.every, now=False)

    def stop(self) -> None:
        if self.changed in self.history.listeners:
            self.history.listeners.remove(self.changed)
        if self._push is not None and self._push.active():
            self._push.cancel()
        self._push = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for s in list(self._streams):
            s.request.finish()
        self._streams.clear()

    def subscribe(self, request: Any, view: str, meter: int | None) -> bool:
        """Start a stream on ``request``; False when too many are open."""
        if len(self._streams) >= MAX_STREAMS:
            return False
        stream = _Stream(request, view, meter, self.history.seq, self.clock.seconds())
        self._streams.append(stream)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b"retry: 1000\n\n")
        request.notifyFinish().addBoth(lambda _: self._drop(stream))
        self._send_now(stream)
        return True

    def _drop(self, stream: _Stream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)

    def _send_now(self, stream: _Stream) -> None:
        if stream.view == "dash":
            self._dash(stream, json.dumps(self.dashboard()))
        elif stream.view == "meter" and stream.meter is not None:
            self._event(stream, "meter", json.dumps(self.meter_fragment(stream.meter)))

    def changed(self) -> None:
        """Something a page shows changed: push it now, or at the end of the current gap."""
        if self._push is not None or not self._streams:
            return
        wait = max(0.0, self._pushed_at + self.gap - self.clock.seconds())
        self._push = self.clock.callLater(wait, self._push_now)

    def _push_now(self) -> None:
        self._push = None
        self.tick(dash_due=self.clock.seconds() - self._dash_at >= self.every)

    def tick(self, dash_due: bool = True) -> None:
        """Send every open page what changed; the dashboard's numbers when ``dash_due``."""
        now = self.clock.seconds()
        self._pushed_at = now
        if not self._streams:
            return
        if dash_due:
            self._dash_at = now
        dash: str | None = None
        seq = self.history.seq
        # Streams that last saw the same sequence number get the same update: built once.
        changed_cache: dict[int, list[int]] = {}
        rows_cache: dict[int, str] = {}
        fragment_cache: dict[tuple[int, int], str] = {}
        for stream in list(self._streams):
            try:
                if _blocked(stream.request):
                    if now - stream.last_write >= _STALLED:
                        self.log.info("live page not reading for {s:.0f} s: stream closed",
                                      s=now - stream.last_write)
                        self._drop(stream)
                        stream.request.finish()
                    continue
                if stream.view == "dash":
                    if not dash_due:
                        continue
                    if dash is None:
                        dash = json.dumps(self.dashboard())
                    self._dash(stream, dash)
                elif stream.seen < seq:
                    changed = changed_cache.get(stream.seen)
                    if changed is None:
                        changed = changed_cache[stream.seen] = self.history.changed_since(
                            stream.seen)
                    if stream.view == "meters" and changed:
                        rows = rows_cache.get(stream.seen)
                        if rows is None:
                            rows = rows_cache[stream.seen] = json.dumps(
                                self.meter_rows(changed))
                        self._event(stream, "meters", rows)
                    elif stream.view == "meter" and stream.meter in changed:
                        key = (stream.seen, stream.meter)
                        fragment = fragment_cache.get(key)
                        if fragment is None:
                            fragment = fragment_cache[key] = json.dumps(
                                self.meter_fragment(stream.meter))
                        self._event(stream, "meter", fragment)
                stream.seen = seq
                if self.clock.seconds() - stream.last_write >= _KEEPALIVE:
                    self._write(stream, b": keep-alive\n\n")
            except Exception:
                self.log.failure("live update failed; stream closed")
                self._drop(stream)
                stream.request.finish()

    def _dash(self, stream: _Stream, data: str) -> None:
        if data != stream.dash:
            stream.dash = data
            self._event(stream, "dash", data)

    def _event(self, stream: _Stream, name: str, data: str) -> None:
        self._write(stream, f"event: {name}\ndata: {data}\n\n".encode())

    def _write(self, stream: _Stream, data: bytes) -> None:
        stream.request.write(data)
        stream.last_write = self.clock.seconds()
        channel = getattr(stream.request, "channel", None)
        if channel is not None:
            channel.resetTimeout()


def _blocked(request: Any) -> bool:
    """True while the connection's transport asked twisted.web to stop writing."""
    return bool(getattr(getattr(request, "channel", None), "_waitingForTransport", False))
