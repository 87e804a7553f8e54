"""Firmware updates in ``gridcloud serve``: offers to the units of rollouts, chunks, statuses.

Theory of operation
-------------------
PostgreSQL holds releases and rollouts (migration 0010); this node holds
sessions.  A unit of a rollout is one ``rollout_units`` row, id R; its offers
are ``2*R`` (the full bundle) and ``2*R + 1`` (a delta, when one is ready whose
base release is the version the unit runs).

* Offers go out when a session becomes live (every connect: a unit resumes an
  interrupted download after a reconnect) and when ``NOTIFY gridcloud_rollouts,
  '<rollout id>'`` says a rollout's wave started, it resumed, or it was
  cancelled: each node then looks again at its live sessions of that rollout's
  units.  A unit is offered its release while its rollout runs and its wave has
  started, and also while the rollout is paused once it has begun (pausing
  stops new waves, not a unit half-way).  A unit that already runs the target
  version, and had not started, is healthy at once.  Offering a ``pending`` unit
  makes it ``offered``.
* ``ChunkRequest``: the exact bytes of the chunk, read from the bundle or delta
  file in the releases folder (a small LRU of open files: one ``pread`` per
  chunk).  A request for an offer this connection does not hold (cancelled
  meanwhile) is logged and ignored; gridwire already refuses one for an offer
  never sent on this connection.
* ``FirmwareStatus``: recorded with ``rollout_unit_report()``, which also moves
  the rollout on (next wave, self-pause) in the same transaction.  A
  connection's reports are written one at a time, in order.  ``DOWNLOADING``
  is written at most every :data:`PROGRESS_INTERVAL` seconds per unit, also
  across reconnects (a state change always; the latest progress held back is
  written when the interval is over, unless another state came first).
  ``HEALTHY`` counts only from a connection whose Hello named the release's
  version: a unit that says healthy but runs something else is
  logged, not believed.  ``healthy``, ``rolled_back`` and ``failed`` are final:
  a late report, or a unit retrying what it failed, never reopens them.  A
  ``FAILED`` of a delta offer is not the unit's failure: the unit is offered
  the full bundle alone from then on (``rollout_units.delta_failed``).

Tests: tests/cloud/test_cloud_firmware_serving.py, tests/cloud/test_cloud_rollouts.py.
"""

from __future__ import annotations

import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gridwire import (
    ChunkRequest,
    FirmwareChunk,
    FirmwareOffer,
    FirmwareState,
    FirmwareStatus,
    ProtocolError,
    State,
)
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from .config import ReleasesConfig
from .connection import EdgeConnection
from .pool import Database
from .sessions import SessionRegistry

log = Logger(namespace="gridcloud.firmware")

CHANNEL = "gridcloud_rollouts"
#: Bytes per chunk: a multiple of 4096, so the unit checks whole verity blocks (contract).
CHUNK_SIZE = 32768
#: Seconds between two DOWNLOADING writes of one unit (a state change is written at once).
PROGRESS_INTERVAL = 10.0
#: Open bundle/delta files kept for chunk reads.
OPEN_FILES = 16

FINAL = ("healthy", "rolled_back", "failed", "cancelled")
#: Every state of a rollout unit (migration 0010).
UNIT_STATES = ("pending", "offered", "downloading", "verifying", "installing", "rebooting",
               *FINAL)

#: FirmwareStatus.state -> the unit's state in rollout_units
STATES: dict[int, str] = {
    FirmwareState.DOWNLOADING: "downloading",
    FirmwareState.DOWNLOADED: "verifying",
    FirmwareState.VERIFYING: "verifying",
    FirmwareState.INSTALLING: "installing",
    FirmwareState.INSTALLED: "rebooting",
    FirmwareState.REBOOTING: "rebooting",
    FirmwareState.HEALTHY: "healthy",
    FirmwareState.ROLLED_BACK: "rolled_back",
    FirmwareState.FAILED: "failed",
    FirmwareState.REJECTED: "failed",
}

OFFERS_SQL = f"""
SELECT u.id, u.state, rel.version, rel.size, rel.sha256, rel.file,
       d.size, d.sha256, d.file, b.sha256, u.rollout_id
  FROM rollout_units u
  JOIN rollouts o ON o.id = u.rollout_id
  JOIN releases rel ON rel.id = o.release_id
  LEFT JOIN releases b ON b.compatible = rel.compatible AND b.version = %(firmware)s
  LEFT JOIN release_deltas d ON d.release_id = rel.id AND d.base_id = b.id AND d.state = 'ready'
        AND NOT u.delta_failed
 WHERE u.edge_id = %(edge)s
   AND u.state NOT IN {FINAL!r}
   AND ((o.state = 'running' AND u.wave <= o.current_wave)
        OR (o.state = 'paused' AND u.state <> 'pending'))
"""

EDGES_SQL = "SELECT edge_id FROM rollout_units WHERE rollout_id = %s"

#: The unit's state after the report (NULL: ignored) and its rollout, for the log.
REPORT_SQL = """
SELECT rollout_unit_report(%s, %s, %s, %s, %s, %s),
       (SELECT rollout_id FROM rollout_units WHERE id = %s)
"""

VERSION_SQL = """
SELECT rel.version FROM rollout_units u JOIN rollouts o ON o.id = u.rollout_id
  JOIN releases rel ON rel.id = o.release_id WHERE u.id = %s AND u.edge_id = %s
"""

COUNTS_SQL = "SELECT state, count(*) FROM rollout_units GROUP BY state"


@dataclass(frozen=True, slots=True)
class _Blob:
    """What an offer id of a connection serves: a file and its size."""

    path: Path
    size: int


@dataclass(slots=True, eq=False)
class _Serving:
    """One live session's offers and its reports waiting to be written."""

    connection: EdgeConnection
    offers: dict[int, _Blob] = field(default_factory=dict)
    reports: deque[tuple[int, str, int, int | None, str]] = field(default_factory=deque)
    writing: bool = False
    looking: bool = False
    again: bool = False


class _Files:
    """A small LRU of open read-only files, for chunk reads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._fds: OrderedDict[Path, int] = OrderedDict()

    def read(self, path: Path, offset: int, length: int) -> bytes:
        fd = self._fds.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            while len(self._fds) >= self._size:
                os.close(self._fds.popitem(last=False)[1])
        self._fds[path] = fd
        return os.pread(fd, length, offset)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class FirmwareServer(service.Service):
    """Offers, chunks and statuses for this node's live sessions (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        sessions: SessionRegistry[EdgeConnection],
        clock: Any,
        config: ReleasesConfig,
        *,
        counts_interval: float = 30.0,
    ) -> None:
        self._db = db
        self._sessions = sessions
        self._clock = clock
        self._config = config
        self._serving: dict[EdgeConnection, _Serving] = {}
        self._files = _Files(OPEN_FILES)
        self.ready: defer.Deferred[Any] = defer.succeed(None)
        #: rollout units by state, cluster-wide (refreshed every ``counts_interval``)
        self.unit_counts: dict[str, int] = {}
        self._counts = task.LoopingCall(self.refresh_counts)
        self._counts.clock = clock
        self._counts_interval = counts_interval
        #: seconds between two DOWNLOADING writes of one unit (PROGRESS_INTERVAL)
        self.progress_interval = PROGRESS_INTERVAL
        #: unit id -> (state, when) of its last written report, and its held-back progress
        self._written: dict[int, tuple[str, float]] = {}
        self._trailing: dict[int, Any] = {}
        self._inflight: set[defer.Deferred[None]] = set()
        #: chunks and their bytes sent by this node (metrics)
        self.chunks_sent = 0
        self.bytes_sent = 0

    # -- life cycle ---------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self.ready = defer.ensureDeferred(self._start())

    async def _start(self) -> None:
        await self._db.listen(CHANNEL, self.wake, self._recovered)
        if self.running:
            self._counts.start(self._counts_interval, now=True)

    def stopService(self) -> defer.Deferred[Any]:
        """Stop; fires when the statements under way are done (the pool closes after)."""
        super().stopService()  # type: ignore[no-untyped-call]
        if self._counts.running:
            self._counts.stop()
        for timer in self._trailing.values():
            if timer.active():
                timer.cancel()
        self._trailing.clear()
        self._serving.clear()
        self._files.close()
        return defer.DeferredList(list(self._inflight))

    def _query(self, sql: str, params: Any = None) -> defer.Deferred[list[tuple[Any, ...]]]:
        """``self._db.run``, remembered until it answers: stopping waits for it, so that no
        statement is left on a connection the pool no longer owns."""
        d = self._db.run(sql, params)
        done: defer.Deferred[None] = defer.Deferred()
        self._inflight.add(done)

        def finished(result: Any) -> Any:
            self._inflight.discard(done)
            done.callback(None)
            return result

        return d.addBoth(finished)

    def _recovered(self) -> defer.Deferred[None]:
        """LISTEN is back after an outage: notices may be lost, so look at every session."""
        for serving in list(self._serving.values()):
            self._look(serving)
        return defer.succeed(None)

    def refresh_counts(self) -> defer.Deferred[None]:
        """Re-read the rollout units by state (the metrics gauge)."""

        def got(rows: list[tuple[Any, ...]]) -> None:
            self.unit_counts = {state: int(n) for state, n in rows}

        def failed(failure: Failure) -> None:
            log.warn("counting rollout units failed: {why}", why=failure.getErrorMessage())

        result: defer.Deferred[None] = self._query(COUNTS_SQL).addCallbacks(got, failed)
        return result

    # -- the connection's observer (gridcloud.connection.SessionObserver) ---------------------

    def live(self, connection: EdgeConnection) -> None:
        serving = self._serving.setdefault(connection, _Serving(connection))
        self._look(serving)

    def gone(self, connection: EdgeConnection) -> None:
        self._serving.pop(connection, None)

    # -- wake-ups -----------------------------------------------------------------------------

    def wake(self, payload: str) -> None:
        """NOTIFY: rollout ``payload`` changed; look again at its units held here."""
        try:
            rollout_id = int(payload)
        except ValueError:
            log.warn("ignoring a rollout notice {payload!r}", payload=payload)
            return

        def look(rows: list[tuple[Any, ...]]) -> None:
            for (edge_id,) in rows:
                connection = self._sessions.get(edge_id)
                serving = self._serving.get(connection) if connection is not None else None
                if serving is not None:
                    self._look(serving)

        self._query(EDGES_SQL, (rollout_id,)).addCallbacks(
            look, lambda failure: log.warn("rollout {id}: finding its units failed: {why}",
                                           id=rollout_id, why=failure.getErrorMessage()))

    # -- offers -------------------------------------------------------------------------------

    def _usable(self, serving: _Serving) -> bool:
        c = serving.connection
        return (self._serving.get(c) is serving and c.live
                and c.session.state is State.READY)

    def _look(self, serving: _Serving) -> None:
        """Find what this session's unit should be offered now; one look at a time."""
        if not self._usable(serving) or not self._config.enabled:
            return
        if serving.looking:
            serving.again = True
            return
        serving.looking = True
        serving.again = False
        c = serving.connection
        d = self._query(OFFERS_SQL, {"edge": c.edge_id, "firmware": c.firmware_version})
        d.addCallbacks(lambda rows: self._offer(serving, rows),
                       lambda failure: self._look_failed(serving, failure))

    def _look_failed(self, serving: _Serving, failure: Failure) -> None:
        serving.looking = False
        # The unit is offered on its next connection or the next notice.
        log.warn("edge {edge}: looking for firmware offers failed: {why}",
                 edge=serving.connection.edge_id, why=failure.getErrorMessage())

    def _offer(self, serving: _Serving, rows: list[tuple[Any, ...]]) -> None:
        serving.looking = False
        if not self._usable(serving):
            return
        c = serving.connection
        folder = self._config.folder
        assert folder is not None and c.edge_id is not None
        offers: dict[int, tuple[FirmwareOffer, _Blob]] = {}
        rollouts: dict[int, int] = {}
        for (unit, state, version, size, sha256, file, d_size, d_sha256, d_file,
             base_sha256, rollout) in rows:
            rollouts[2 * unit] = rollouts[2 * unit + 1] = rollout
            if version == c.firmware_version:
                if state in ("pending", "offered"):  # it runs the release already
                    self._report(serving, unit, "healthy", 0, None,
                                 f"already running {version}", force=True)
                continue
            full = FirmwareOffer(offer_id=2 * unit, version=version, size=size,
                                 sha256=bytes.fromhex(sha256), chunk_size=CHUNK_SIZE)
            offers[full.offer_id] = (full, _Blob(folder / file, size))
            if d_file is not None:
                delta = FirmwareOffer(
                    offer_id=2 * unit + 1, version=version, size=d_size,
                    sha256=bytes.fromhex(d_sha256), chunk_size=CHUNK_SIZE,
                    delta_base=bytes.fromhex(base_sha256), target_size=size,
                    target_sha256=bytes.fromhex(sha256))
                offers[delta.offer_id] = (delta, _Blob(folder / d_file, d_size))
            if state == "pending":
                self._report(serving, unit, "offered", 0, None, "", force=True)
        for offer_id in set(serving.offers) - set(offers):  # cancelled, or finished
            del serving.offers[offer_id]
        for offer_id, (offer, blob) in sorted(offers.items()):
            if offer_id in serving.offers:
                continue  # sent on this connection already
            try:
                c.send(offer)
            except ProtocolError as exc:
                log.error("edge {edge}: offer {id} cannot be sent: {why}", edge=c.edge_id,
                          id=offer_id, why=str(exc))
                continue
            serving.offers[offer_id] = blob
            log.info("edge {edge}: rollout {rollout_id}: offered {version} as offer {id} "
                     "({size} bytes{delta})", edge=c.edge_id, rollout_id=rollouts[offer_id],
                     version=offer.version, id=offer_id, size=offer.size,
                     delta=", delta" if offer.is_delta else "")
        if serving.again:
            self._look(serving)

    # -- chunks -------------------------------------------------------------------------------

    def chunk(self, connection: EdgeConnection, request: ChunkRequest) -> None:
        """A ChunkRequest: send the chunk's bytes, read from the offer's file."""
        serving = self._serving.get(connection)
        blob = serving.offers.get(request.offer_id) if serving is not None else None
        if blob is None:
            log.info("edge {edge}: chunk {index} of offer {id} not served (not offered now)",
                     edge=connection.edge_id, index=request.index, id=request.offer_id)
            return
        offset = request.index * CHUNK_SIZE
        length = min(CHUNK_SIZE, blob.size - offset)
        try:
            data = self._files.read(blob.path, offset, length)
        except OSError as exc:
            log.error("edge {edge}: reading {path} failed: {why}", edge=connection.edge_id,
                      path=str(blob.path), why=str(exc))
            return
        if len(data) != length:
            log.error("edge {edge}: {path} is shorter than its release says ({size} bytes)",
                      edge=connection.edge_id, path=str(blob.path), size=blob.size)
            return
        connection.send(FirmwareChunk(offer_id=request.offer_id, index=request.index,
                                      data=data))
        self.chunks_sent += 1
        self.bytes_sent += length

    # -- statuses -----------------------------------------------------------------------------

    def status(self, connection: EdgeConnection, status: FirmwareStatus) -> None:
        """A FirmwareStatus: record the unit's state (see the module docstring)."""
        serving = self._serving.get(connection)
        state = STATES.get(status.state)
        if serving is None or state is None:
            log.info("edge {edge}: firmware status {state} of offer {id} ignored",
                     edge=connection.edge_id, state=status.state, id=status.offer_id)
            return
        unit = status.offer_id // 2
        blob = serving.offers.get(status.offer_id)
        size = blob.size if blob is not None else None
        detail = status.detail or getattr(status.state, "name", str(status.state)).lower()
        if state == "healthy":
            self._check_healthy(serving, unit, detail)
            return
        if status.state == FirmwareState.FAILED and status.offer_id % 2 == 1:
            # A delta that did not rebuild the bundle: the full one is offered instead
            # (the unit takes it at its next connection), not a failure of the unit.
            state = "delta_failed"
        elif status.state == FirmwareState.DOWNLOADED:
            # The whole offer is in: the rollout shows all its bytes received (progress
            # comes every few per cent, so a small delta might otherwise show none).
            self._report(serving, unit, "downloading", status.received, size, detail,
                         force=True)
        self._report(serving, unit, state, status.received, size, detail)

    def _check_healthy(self, serving: _Serving, unit: int, detail: str) -> None:
        c = serving.connection

        def check(rows: list[tuple[Any, ...]]) -> None:
            if not rows:
                log.info("edge {edge}: HEALTHY for unknown rollout unit {unit} ignored",
                         edge=c.edge_id, unit=unit)
            elif rows[0][0] != c.firmware_version:
                log.warn("edge {edge}: says healthy on {want} but its Hello named {runs}: "
                         "not counted", edge=c.edge_id, want=rows[0][0],
                         runs=c.firmware_version)
            else:
                self._report(serving, unit, "healthy", 0, None, detail)

        self._query(VERSION_SQL, (unit, c.edge_id)).addCallbacks(
            check, lambda failure: log.warn("edge {edge}: checking HEALTHY failed: {why}",
                                            edge=c.edge_id, why=failure.getErrorMessage()))

    def _report(self, serving: _Serving, unit: int, state: str, received: int,
                size: int | None, detail: str, *, force: bool = False) -> None:
        """Queue a unit's report; a DOWNLOADING within ``progress_interval`` of the last
        written one waits (only the latest of those is written, when the interval is over,
        unless another state comes first)."""
        now = self._clock.seconds()
        trailing = self._trailing.pop(unit, None)
        if trailing is not None and trailing.active():
            trailing.cancel()
        last = self._written.get(unit)
        if not force and state == "downloading" and last is not None and last[0] == state:
            wait = self.progress_interval - (now - last[1])
            if wait > 0:
                self._trailing[unit] = self._clock.callLater(
                    wait, self._flush_progress, serving, unit, received, size, detail)
                return
        if state in FINAL:
            self._written.pop(unit, None)
        else:
            self._written[unit] = (state, now)
        serving.reports.append((unit, state, received, size, detail))
        self._write_next(serving)

    def _flush_progress(self, serving: _Serving, unit: int, received: int, size: int | None,
                        detail: str) -> None:
        self._trailing.pop(unit, None)
        self._report(serving, unit, "downloading", received, size, detail, force=True)

    def _write_next(self, serving: _Serving) -> None:
        if serving.writing or not serving.reports or not self.running:
            return
        unit, state, received, size, detail = serving.reports.popleft()
        serving.writing = True
        edge = serving.connection.edge_id

        def done(rows: list[tuple[Any, ...]]) -> None:
            serving.writing = False
            if rows and rows[0][0] is None:
                log.info("edge {edge}: report {state} for rollout unit {unit} ignored "
                         "(not its unit, or final already)", edge=edge, state=state, unit=unit)
            elif rows and state != "downloading":
                log.info("edge {edge}: rollout {rollout_id}: unit {unit} now {state} ({detail})",
                         edge=edge, rollout_id=rows[0][1], unit=unit, state=rows[0][0],
                         detail=detail)
            self._write_next(serving)

        def failed(failure: Failure) -> None:
            serving.writing = False
            # The unit repeats its state (statuses are progress reports, not a journal).
            log.warn("edge {edge}: recording {state} of rollout unit {unit} failed: {why}",
                     edge=edge, state=state, unit=unit, why=failure.getErrorMessage())
            self._written.pop(unit, None)
            self._write_next(serving)

        self._query(REPORT_SQL, (unit, edge, state, received, size, detail[:500], unit)
                     ).addCallbacks(done, failed)
