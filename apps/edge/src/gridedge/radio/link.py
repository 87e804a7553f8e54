"""The radio link: frames from the module in, records to the sink, polls and commands out.

Theory of operation
-------------------
The module pushes an :class:`IntervalReport` for every meter and interval.
Some never arrive (radio loss, corrupted frames, a silent meter, a module
reset, the edge being down), so delivery is pull-backed: records are held
until the gap below them is filled, gaps are fetched with polls, and each
meter's records reach the sink in order, exactly once (docs/radio.md,
"Delivery").

:class:`RadioLink` is the façade: it decodes frames, dispatches each kind to
the part whose job it is, and owns the parts, which share the meter registry
and the counters:

* :mod:`~gridedge.radio.delivery`: held records, the memory bound, appends to
  the sink with retries;
* :mod:`~gridedge.radio.backfill`: gaps, overdue meters, the poll queue and
  rate, back-off, the backlog;
* :mod:`~gridedge.radio.relays`: relay commands and their outcomes;
* :mod:`~gridedge.radio.outbox`: the port's send function and command ids;
* :mod:`~gridedge.radio.counters`: what ``stats()`` reports.

Watchers: ``on_meter_change`` (a callable taking a meter id, or None) is called after a
frame changed what is known of a meter without a record reaching the sink: a join, a
leave, a mesh status (hops, RSSI, parent), a relay confirmation.  The local page uses it to
show such changes at once (records reach it through the sink).  It must not raise.

No I/O here: bytes come in through :meth:`RadioLink.data_received`, frames go
out through the ``send`` callable given to :meth:`RadioLink.connected`, and
time comes from the injected clock, so tests drive it with ``task.Clock``.

Tests: tests/radio/test_link.py (logic, task.Clock), tests/radio/test_end_to_end.py
(against gridsim over a real pseudo-terminal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gridradio import (
    INTERVAL_SECONDS,
    Flags,
    FrameDecoder,
    IntervalReport,
    MeshStatus,
    MeterJoin,
    MeterLeave,
    ModuleReset,
    ModuleStatus,
    PollResponse,
    RelayConfirm,
)
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .backfill import PollScheduler
from .clock import Clock
from .counters import LinkCounters, decoder_stats, fresh_decoder
from .delivery import Delivery
from .outbox import Outbox
from .readnow import ReadNow, ReadOutcome
from .registry import MeterRegistry, MeterStatus
from .relays import RelayCommands, RelayOutcome
from .settings import LinkSettings
from .sink import RecordSink

__all__ = ["RadioLink"]

_RELAY_OPEN = int(Flags.RELAY_OPEN)


class RadioLink:
    """Frames from the module in, records to ``sink``, polls and relay commands out."""

    log = Logger()

    def __init__(
        self, sink: RecordSink, clock: Clock, settings: LinkSettings | None = None
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.settings = settings = settings or LinkSettings()
        self.registry = MeterRegistry(INTERVAL_SECONDS)
        self.counters = counters = LinkCounters()
        self.decoder = FrameDecoder()
        self.outbox = Outbox(counters)
        self.polls = PollScheduler(clock, settings, self.registry, self.outbox, counters)
        self.delivery = Delivery(
            sink, clock, settings, counters, want_poll=self.polls.want, retried=self.polls.pump
        )
        self.polls.delivery = self.delivery
        self.relays = RelayCommands(clock, settings, self.registry, self.outbox, counters)
        self.reads = ReadNow(clock, self.registry, self.outbox, self.delivery, counters)
        #: called with a meter id after a join, leave, mesh status or relay confirmation
        self.on_meter_change: Callable[[int], None] | None = None
        self._handlers: dict[type, Callable[[Any, float], None]] = {
            IntervalReport: self._on_report,
            PollResponse: self._on_poll_response,
            RelayConfirm: self._on_relay_confirm,
            MeterJoin: self._on_join,
            MeterLeave: self._on_leave,
            MeshStatus: self._on_mesh_status,
            ModuleStatus: self._on_module_status,
            ModuleReset: self._on_module_reset,
        }

    @property
    def module_time(self) -> int | None:
        """The module's clock from its last status or reset notice (None before the first)."""
        return self.polls.module_time

    def start(self) -> None:
        """Learn from the sink what was already delivered; call once before the port opens."""
        self.polls.start()
        for meter_id, end in self.sink.watermarks().items():
            self.delivery.confirm(self.registry.state(meter_id), end)

    # --- the transport side ---------------------------------------------------------

    def connected(self, send: Callable[[bytes], object]) -> None:
        """The serial port is open; ``send`` writes bytes to it."""
        self.outbox.open(send)
        self.decoder = fresh_decoder(self.decoder)
        self.polls.opened()

    def disconnected(self) -> None:
        """The serial port is gone: answers to what was asked will not come."""
        self.outbox.close()
        self.polls.closed()

    def data_received(self, data: bytes) -> None:
        """Bytes from the serial port, in any pieces."""
        now = self.clock.seconds()
        handlers = self._handlers
        for frame in self.decoder.feed(data):
            handler = handlers.get(type(frame))
            if handler is None:  # a frame only the edge sends; the module must not echo it
                self.counters.count_extra(f"unexpected_{type(frame).__name__}")
                continue
            handler(frame, now)
        self.delivery.deliver(now)
        self.polls.tick(now)

    def stop(self) -> None:
        """Cancel every timer; pending relay commands end with reason "link-stopped"."""
        self.outbox.close()
        self.polls.stop()
        self.delivery.stop()
        self.relays.stop()
        self.reads.stop()

    # --- public queries and commands ---------------------------------------------------

    def meter(self, meter_id: int) -> MeterStatus | None:
        """A snapshot of one meter, or None if never heard of."""
        return self.registry.get(meter_id)

    def meters(self) -> list[MeterStatus]:
        """Snapshots of every known meter."""
        return self.registry.snapshot()

    def stats(self) -> dict[str, int]:
        """Every counter of the link and its frame decoder, by name, and the backlog.

        ``oldest_owed`` is the interval end of the oldest record the sink still
        lacks (0 when nothing is owed); the backlog is as of the last overdue scan.
        """
        out = self.counters.as_dict()
        out.update(decoder_stats(self.decoder))
        backlog = self.polls.backlog
        out["meters"] = len(self.registry)
        out["polls_queued"] = self.polls.queued
        out["polls_in_flight"] = self.polls.in_flight
        out["records_held"] = self.delivery.held_total
        out["meters_owed"] = backlog.meters
        out["intervals_owed"] = backlog.intervals
        out["oldest_owed"] = backlog.oldest or 0
        return out

    def relay(
        self,
        meter_id: int,
        open: bool,
        *,
        timeout: float | None = None,
        attempts: int | None = None,
    ) -> Deferred[RelayOutcome]:
        """Open (``open=True``, supply off) or close a meter's relay.

        The Deferred always fires with a :class:`RelayOutcome`, never an error.
        """
        return self.relays.send(meter_id, open, timeout, attempts)

    def read_now(self, meter_id: int, *, timeout: float | None = None) -> Deferred[ReadOutcome]:
        """Ask a meter for its newest completed interval now; the records go to the sink.

        The Deferred always fires with a :class:`ReadOutcome`, never an error.
        """
        wait = self.settings.poll_timeout if timeout is None else timeout
        return self.reads.send(meter_id, self.polls.module_time, wait)

    # --- frames from the module ------------------------------------------------------------

    def _on_poll_response(self, frame: PollResponse, now: float) -> None:
        if self.reads.owns(frame.cmd_id):
            self.reads.on_response(frame, now)
        else:
            self.polls.on_response(frame, now)

    def _on_report(self, frame: IntervalReport, now: float) -> None:
        record = frame.record
        meter = self.registry.state(record.meter_id)
        meter.seen(now)
        meter.joined = True
        meter.reports += 1
        self.counters.reports += 1
        last = meter.last_report
        if last is None or record.interval_end >= last.interval_end:
            meter.last_report = record
            meter.relay_open = bool(record.flags & _RELAY_OPEN)
        self.delivery.take(meter, record)

    def _changed(self, meter_id: int) -> None:
        if self.on_meter_change is not None:
            self.on_meter_change(meter_id)

    def _on_relay_confirm(self, frame: RelayConfirm, now: float) -> None:
        self.relays.on_confirm(frame, now)
        self._changed(frame.meter_id)

    def _on_join(self, frame: MeterJoin, now: float) -> None:
        meter = self.registry.state(frame.meter_id)
        meter.seen(now)
        meter.joined = True
        meter.hops, meter.rssi, meter.parent_id = frame.hops, frame.rssi, frame.parent_id
        self.counters.joins += 1
        self._changed(frame.meter_id)

    def _on_leave(self, frame: MeterLeave, now: float) -> None:
        meter = self.registry.state(frame.meter_id)
        meter.joined = False
        self.counters.leaves += 1
        self._changed(frame.meter_id)

    def _on_mesh_status(self, frame: MeshStatus, now: float) -> None:
        meter = self.registry.state(frame.meter_id)
        meter.hops, meter.rssi, meter.parent_id = frame.hops, frame.rssi, frame.parent_id
        self._changed(frame.meter_id)

    def _on_module_status(self, frame: ModuleStatus, now: float) -> None:
        self.polls.module_clock(frame.module_time, now)

    def _on_module_reset(self, frame: ModuleReset, now: float) -> None:
        self.counters.module_resets += 1
        self.polls.module_clock(frame.module_time, now)
        self.log.warn(
            "radio module reset ({reason}, boot {boot}); re-asking what was in flight",
            reason=frame.reason.name,
            boot=frame.boot_count,
        )
        self.polls.requeue()
