"""``GET /v1/feed``: new readings and events as Server-Sent Events, resumable after anything.

Commands: each state change of a command (migration 0007's trigger) is a
``feed_log`` row with ``command_id`` set, sent as an event ``command`` carrying
the command as it is when sent (so a quick succession of changes may show the
latest state more than once).

Where the data comes from: every committed advance of an edge's high-water
mark (a stored batch or event) adds a ``feed_log`` row and sends ``NOTIFY
gridcloud_feed`` in the ingest transaction itself (trigger of migration 0005),
so ingest code does not change and a row exists exactly when its records do.
:class:`FeedHub` LISTENs once per process and wakes the open streams; each
stream then reads what is new for it.  Nothing polls tables: a stream queries
only when woken, plus one re-check shortly after it saw a row it may not send
yet (below).

Order and resumption: rows are sent in ``(txid, id)`` order, and only rows whose
transaction id is below the current snapshot's ``xmin``.  Every transaction
with a smaller id has then finished, so no row can appear later before one
already sent: the order is append-only even though transactions commit out of
order.  Each SSE event's id is ``<txid>-<id>-<seq>`` (the feed row and the
record's journal sequence number), all stored values, so ``Last-Event-ID``
resumes exactly after the last event received, on any API process, after any
restart, without loss or repetition.  Without ``Last-Event-ID`` a stream starts
with what commits from now on.  A long-running transaction anywhere in the
cluster holds ``xmin`` back and so delays the feed (never loses anything).

A slow client is paced (gridcloud.api.pacing): its stream stops reading until
the socket drains.  Every 15 s of silence a comment line keeps proxies from
closing the stream.

Alarms: the pipeline's alarm changes are feed_log rows too (migration 0008, with
``alarm_id`` set): they are sent as ``alarm`` events in the same order, id
``<txid>-<id>-0``.

Rollouts: each change of a rollout unit's state or downloaded bytes (migration
0010's trigger) is a ``feed_log`` row with ``rollout_unit_id`` set, sent as an
event ``rollout`` carrying the unit as it is when sent, id ``<txid>-<id>-0``.

Tests: tests/cloud/test_api_feed.py, tests/pipeline/test_pipeline_api.py,
tests/cloud/test_cloud_rollouts.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from .config import ApiConfig
from .database import Database
from .pacing import Pacer
from .params import Param
from .problems import Problem
from .resources import alarms as alarms_resource
from .resources import commands as commands_resource
from .resources import events as events_resource
from .resources import readings as readings_resource
from .resources import rollouts as rollouts_resource
from .routes import STREAMED, Call, Operation

log = Logger(namespace="gridcloud.api.feed")

CHANNEL = "gridcloud_feed"
MEDIA_TYPE = "text/event-stream"
#: seconds of silence before a keep-alive comment
KEEPALIVE = 15.0
#: seconds before looking again when a row waits for an older transaction to finish
RECHECK = 0.2
#: feed rows read per query
ROWS = 50

WAIT = Param(
    "wait", "integer",
    "Close the stream after this many seconds without a new event (default: never); "
    "0 sends what is there and closes, for batch consumers.",
    minimum=0, maximum=3600,
)

_ID = re.compile(r"^([0-9]{1,20})-([0-9]{1,19})-([0-9]{1,19})$")

START_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::numeric"

ROWS_SQL = f"""
SELECT txid::text::numeric, id, edge_id, first_seq, last_seq,
       txid < pg_snapshot_xmin(pg_current_snapshot()), command_id, alarm_id, rollout_unit_id
  FROM feed_log
 WHERE (txid, id) >= (%(t)s::text::xid8, %(i)s)
   AND (%(edges)s::text[] IS NULL OR edge_id = ANY(%(edges)s::text[]))
 ORDER BY txid, id LIMIT {ROWS}
"""

READINGS_SQL = """
SELECT edge_id, seq, meter_id, interval_end, energy_wh, max_demand_w, voltage_dv, current_ma,
       power_factor, flags
  FROM readings WHERE edge_id = %s AND seq BETWEEN %s AND %s ORDER BY seq
"""

EVENTS_SQL = """
SELECT edge_id, seq, meter_id, event_time, kind, detail, received_at
  FROM events WHERE edge_id = %s AND seq BETWEEN %s AND %s ORDER BY seq
"""


COMMAND_SQL = commands_resource.ONE_SQL
ALARM_SQL = alarms_resource.LIST_SQL.split("WHERE")[0] + "WHERE alarm_id = %s"
ROLLOUT_UNIT_SQL = rollouts_resource.UNIT_SQL

#: The pipeline's alarms (migration 0008) wake the feed on this channel.
ALARM_CHANNEL = "gridcloud_alarms"


class FeedHub:
    """One LISTEN connection per process; wakes every open stream on each notification."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._streams: set[_Stream] = set()
        self._conn: Any = None

    @defer.inlineCallbacks
    def start(self) -> Any:
        conn = self._db.listener()
        self._conn = conn
        yield conn.connect(self._db.dsn)

        def subscribe() -> Any:
            self.wake_all()  # anything may have been missed while disconnected
            return conn.runOperation(f'LISTEN "{CHANNEL}"; LISTEN "{ALARM_CHANNEL}"')

        conn.addNotifyObserver(lambda notify: self.wake_all())
        conn.detector.addRecoveryHandler(subscribe)
        yield subscribe()

    def stop(self) -> None:
        for stream in list(self._streams):
            stream.close()
        if self._conn is not None:
            self._conn.shut()  # and its reconnection, if PostgreSQL is down
            self._conn = None

    def wake_all(self) -> None:
        for stream in list(self._streams):
            stream.wake()

    def operations(self, config: ApiConfig) -> list[Operation]:
        return [
            Operation(
                "GET", "/v1/feed", "getFeed", "New readings and events as Server-Sent Events",
                self.serve, response={"type": "string"}, media=(MEDIA_TYPE,),
                params=(WAIT,),
                description=(
                    "Answers `text/event-stream`: events `reading`, `event`, `command` (a "
                    "command's state changed), `alarm` (raised or cleared by the pipeline) and "
                    "`rollout` (a unit of a rollout changed state or downloaded more), "
                    "each with an "
                    "`id` to send back as `Last-Event-ID` to resume after it (docs/api.md)."
                ),
            ),
        ]

    async def serve(self, call: Call) -> Any:
        last = call.request.getHeader("last-event-id")
        if last:
            m = _ID.match(last.strip())
            if m is None:
                raise Problem("bad-request", "Last-Event-ID is not an id this feed sent")
            position = (int(m.group(1)), int(m.group(2)), int(m.group(3)))
        else:
            rows = await call.db.rows(START_SQL)
            position = (int(rows[0][0]), 0, 0)
        stream = _Stream(call, position, call.query["wait"])
        self._streams.add(stream)
        try:
            await stream.run()
        finally:
            self._streams.discard(stream)
        return STREAMED


class _Stream:
    """One client's feed: its position, and the loop that sends what is new."""

    def __init__(self, call: Call, position: tuple[int, int, int], wait: int | None) -> None:
        self._call = call
        self._wait = wait
        self._request = call.request
        self.position = position
        self._dirty = True
        self._woken: defer.Deferred[None] | None = None
        self._closed = False
        #: when the stream last sent an event (or opened): for ``wait``
        self._last_sent = call.clock.seconds()

    def wake(self) -> None:
        self._dirty = True
        woken, self._woken = self._woken, None
        if woken is not None and not woken.called:
            woken.callback(None)

    def close(self) -> None:
        self._closed = True
        self.wake()

    async def run(self) -> None:
        request = self._request
        request.setResponseCode(200)
        request.setHeader("content-type", f"{MEDIA_TYPE}; charset=utf-8")
        request.setHeader("cache-control", "no-cache")
        request.setHeader("x-accel-buffering", "no")
        pacer = Pacer(request)
        pacer.gone().addCallback(lambda _: self.close())
        request.write(b": gridcloud feed\n\n")
        while not self._closed:
            pending = False
            if self._dirty:
                self._dirty = False
                pending = await self._send_new(pacer)
            if self._dirty or self._closed:
                continue
            idle = KEEPALIVE
            if self._wait is not None:
                left = self._wait - (self._call.clock.seconds() - self._last_sent)
                idle = max(0.0, min(KEEPALIVE, left))
            timer = self._call.clock.callLater(RECHECK if pending else idle, self._tick, pending)
            self._woken = defer.Deferred()
            await self._woken
            if timer.active():
                timer.cancel()
        request.unregisterProducer()

    def _tick(self, pending: bool) -> None:
        if pending:
            self.wake()  # look again: the older transaction may have finished
            return
        waited = self._call.clock.seconds() - self._last_sent
        if self._wait is not None and waited >= self._wait:
            self.close()  # nothing new for ``wait`` seconds
            return
        self._request.write(b": keep-alive\n\n")
        woken, self._woken = self._woken, None
        if woken is not None:
            woken.callback(None)

    async def _send_new(self, pacer: Pacer) -> bool:
        """Send every ready row after the position; True if a newer row must wait."""
        db = self._call.db
        while not self._closed:
            t, i, s = self.position
            rows = await db.rows(ROWS_SQL, {"t": str(t), "i": i, "edges": self._call.edges()})
            for (txid, row_id, edge_id, first, last, ready, command_id, alarm_id,
                 unit_id) in rows:
                if not ready:
                    return True
                txid = int(txid)
                if alarm_id is not None or unit_id is not None:
                    if (txid, row_id) != (t, i):  # not sent yet
                        if unit_id is not None:
                            await self._send_rollout_unit(txid, row_id, unit_id, pacer)
                        else:
                            await self._send_alarm(txid, row_id, alarm_id, pacer)
                    self.position = (txid, row_id, 0)
                    if self._closed:
                        return False
                    continue
                skip = s if (txid, row_id) == (t, i) else 0
                if command_id is not None:
                    if skip < last:
                        await self._send_command(txid, row_id, command_id, pacer)
                else:
                    await self._send_row(txid, row_id, edge_id, max(first, skip + 1), last,
                                         pacer)
                self.position = (txid, row_id, last)
                if self._closed:
                    return False
            if len(rows) < ROWS:
                return False
        return False

    async def _send_command(self, txid: int, row_id: int, command_id: int, pacer: Pacer) -> None:
        """A command's transition: the command as it is now (its latest state)."""
        rows = await self._call.db.rows(COMMAND_SQL, {"id": command_id, "edges": None})
        if not rows:
            return
        data = json.dumps(commands_resource.item(rows[0]))
        self._request.write(f"id: {txid}-{row_id}-1\nevent: command\ndata: {data}\n\n".encode())
        await pacer.ready()
        self._last_sent = self._call.clock.seconds()

    async def _send_alarm(self, txid: int, row_id: int, alarm_id: int, pacer: Pacer) -> None:
        """An alarm as it is now (a clear that follows sends it again, cleared)."""
        rows = await self._call.db.rows(ALARM_SQL, (alarm_id,))
        if rows:
            data = json.dumps(alarms_resource.item(rows[0]))
            self._request.write(f"id: {txid}-{row_id}-0\nevent: alarm\ndata: {data}\n\n".encode())
            await pacer.ready()
        self._last_sent = self._call.clock.seconds()

    async def _send_rollout_unit(self, txid: int, row_id: int, unit_id: int, pacer: Pacer
                                 ) -> None:
        """A rollout unit as it is now (its latest state and bytes)."""
        rows = await self._call.db.rows(ROLLOUT_UNIT_SQL, (unit_id,))
        if rows:
            data = json.dumps(rollouts_resource.feed_item(rows[0]))
            self._request.write(
                f"id: {txid}-{row_id}-0\nevent: rollout\ndata: {data}\n\n".encode())
            await pacer.ready()
        self._last_sent = self._call.clock.seconds()

    async def _send_row(
        self, txid: int, row_id: int, edge_id: str, first: int, last: int, pacer: Pacer
    ) -> None:
        if first > last:
            return
        db = self._call.db
        readings = await db.rows(READINGS_SQL, (edge_id, first, last))
        events = await db.rows(EVENTS_SQL, (edge_id, first, last))
        out: list[tuple[int, str, dict[str, Any]]] = [
            (r[1], "reading", readings_resource.item(r)) for r in readings
        ]
        out += [(e[1], "event", events_resource.item(e)) for e in events]
        out.sort(key=lambda x: x[0])
        chunk: list[bytes] = []
        for seq, kind, data in out:
            chunk.append(
                f"id: {txid}-{row_id}-{seq}\nevent: {kind}\ndata: {json.dumps(data)}\n\n".encode()
            )
            if len(chunk) >= 500:
                self._request.write(b"".join(chunk))
                chunk = []
                await pacer.ready()
        if chunk:
            self._request.write(b"".join(chunk))
            await pacer.ready()
        self._last_sent = self._call.clock.seconds()

