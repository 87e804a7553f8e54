"""The meter registry: what the edge knows about every meter behind the radio module.

Holds one :class:`MeterState` per meter ever heard of (or known from the
sink's watermarks at start): last report, link quality (hops, RSSI, parent),
relay position, first and last seen, and the delivery state the radio link
uses for gap filling.  Readers outside the link get :class:`MeterStatus`
snapshots, which are immutable, so the web page or the uplink can never bend
the link's state.

Memory: a MeterState is a slotted object of about 400 bytes plus the records
held back while a gap is being filled (about 23 bytes each, see held.py,
bounded by ``LinkSettings.max_held`` and ``max_held_total``), so 10,000 meters
take a few megabytes.

Tests: tests/radio/test_link.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gridradio import IntervalRecord

from .held import HeldRecords

__all__ = ["MeterRegistry", "MeterState", "MeterStatus"]


@dataclass(frozen=True, slots=True)
class MeterStatus:
    """A snapshot of one meter for readers outside the radio link.

    Times are the edge's clock (Unix seconds).  ``relay_open`` is None until a
    report or confirmation told us.  ``delivered_through`` is the interval end
    up to which every record of the meter is in the sink (or known never to
    exist); ``missing`` counts intervals after it that are still being fetched.
    """

    meter_id: int
    first_seen: float | None
    last_seen: float | None
    last_report: IntervalRecord | None
    joined: bool
    hops: int | None
    rssi: int | None
    parent_id: int | None
    relay_open: bool | None
    reports: int
    delivered_through: int | None
    missing: int


class MeterState:
    """The link's mutable per-meter state (not for use outside gridedge.radio)."""

    __slots__ = (
        "backoff",
        "base",
        "base_confirmed",
        "first_seen",
        "held",
        "hops",
        "joined",
        "last_report",
        "last_seen",
        "meter_id",
        "parent_id",
        "polling",
        "queued",
        "relay_open",
        "reports",
        "rssi",
    )

    def __init__(self, meter_id: int) -> None:
        self.meter_id = meter_id
        self.first_seen: float | None = None
        self.last_seen: float | None = None
        self.last_report: IntervalRecord | None = None
        self.joined = True
        self.hops: int | None = None
        self.rssi: int | None = None
        self.parent_id: int | None = None
        self.relay_open: bool | None = None
        self.reports = 0
        #: Interval end up to which everything is delivered or known not to exist;
        #: None until the first record of a meter the sink never saw.
        self.base: int | None = None
        #: True when ``base`` came from the sink or a delivery, False while it is
        #: the provisional back-fill floor of a newly found meter.
        self.base_confirmed = False
        #: Records newer than a gap, waiting for the gap to be filled: interval end ->
        #: the record's other fields, packed by the link.
        self.held = HeldRecords()
        self.polling = False  #: a poll of this meter is in flight
        self.queued = False  #: the meter is in the link's poll queue
        self.backoff = 0.0  #: current wait before re-polling after no answer, seconds

    def seen(self, now: float) -> None:
        if self.first_seen is None:
            self.first_seen = now
        self.last_seen = now

    def status(self, interval: int) -> MeterStatus:
        missing = 0
        if self.held and self.base is not None:
            missing = (self.held.highest() - self.base) // interval - len(self.held)
        return MeterStatus(
            meter_id=self.meter_id,
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            last_report=self.last_report,
            joined=self.joined,
            hops=self.hops,
            rssi=self.rssi,
            parent_id=self.parent_id,
            relay_open=self.relay_open,
            reports=self.reports,
            delivered_through=self.base if self.base_confirmed else None,
            missing=missing,
        )


class MeterRegistry:
    """All meters by id."""

    def __init__(self, interval: int) -> None:
        self._meters: dict[int, MeterState] = {}
        self._interval = interval

    def __len__(self) -> int:
        return len(self._meters)

    def __contains__(self, meter_id: object) -> bool:
        return meter_id in self._meters

    def state(self, meter_id: int) -> MeterState:
        """The state of ``meter_id``, created on first mention."""
        meter = self._meters.get(meter_id)
        if meter is None:
            meter = self._meters[meter_id] = MeterState(meter_id)
        return meter

    def states(self) -> Iterator[MeterState]:
        return iter(self._meters.values())

    def get(self, meter_id: int) -> MeterStatus | None:
        """A snapshot of ``meter_id``, or None if the edge never heard of it."""
        meter = self._meters.get(meter_id)
        return None if meter is None else meter.status(self._interval)

    def snapshot(self) -> list[MeterStatus]:
        """Snapshots of every meter, by meter id."""
        return [self._meters[m].status(self._interval) for m in sorted(self._meters)]
