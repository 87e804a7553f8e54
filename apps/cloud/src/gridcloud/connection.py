"""One edge connection's rules, without I/O: admission, ordered ingest, back-pressure, timers.

Why separate from the Twisted protocol: this is where the decisions live (who
is admitted, in which order uploads are stored and acknowledged, when reading
the socket pauses, when a quiet or misbehaving edge is dropped, which session
of an edge is the live one), and they must be tested fast and
deterministically with ``task.Clock`` and bytes in memory.  So this module
imports nothing from Twisted: it owns a ``gridwire.CloudSession`` and talks to
the outside through small interfaces it declares here, which the adapter
(:mod:`gridcloud.protocol`) and the tests fill in:

- :class:`Transport`: write bytes, pause/resume reading the socket, close
  (gracefully) or abort it;
- :class:`Clock`: ``seconds()`` and ``callLater()`` (the reactor, or a
  ``task.Clock`` in tests);
- :class:`Store`: admit an edge, store one upload; each answers later
  through a pair of callbacks (done / failed); ``failed(StoreUnavailable)``
  while the database is down, which the edge hears as an Error with a
  ``retry_after`` hint;
- :class:`Log`: ``info``/``warn``/``error`` with a format string and fields
  (a ``twisted.logger.Logger`` fits).

The life of a connection:

1. ``connected()`` arms the Hello timeout: TLS and Hello must both happen
   within ``hello_timeout``.
2. ``handshake_completed(certificate)``: the edge id comes from the client
   certificate (:func:`gridcloud.pki.edge_id_from_certificate`), else the
   connection is refused; so is a certificate outside its validity dates
   (:func:`gridcloud.pki.check_validity`: OpenSSL checks them only in a full
   handshake, and a resumed TLS session brings back its certificate unchecked).
   From then on the :class:`~gridcloud.sessions.SessionRegistry` knows the
   connection, so a revocation that arrives during admission closes it.
3. Hello -> ``Store.admit`` (reading pauses meanwhile).  Refused: Error and
   close.  Admitted: the connection claims the edge's live session in the
   :class:`~gridcloud.sessions.SessionRegistry` (an older one is closed, see
   ``replaced``), Welcome carries the edge's high-water mark, and the silence
   check starts.
4. ReadingBatch / EventReport are queued and stored strictly in order, one at a
   time (the high-water mark is only right if a connection's uploads commit in
   sequence order); Ack(up_to_seq) goes after each COMMIT.
5. Back-pressure: with ``max_pending_uploads`` uploads waiting, reading pauses
   (the kernel's buffers fill, TCP slows the edge, memory stays bounded); it
   resumes as commits complete.
6. Every refusal and failure is one log line naming the peer and the reason,
   then Error(code) if the session still allows it, then close.  A graceful
   close is followed by an abort after ``CLOSE_GRACE`` seconds, for a peer that
   never reads.

Messages other than the core ones (Hello, uploads, Ping, Error) go through a
table of handlers by message type (:mod:`gridcloud.handlers`): commands and
firmware updates add a handler there, not a branch here.

Tests: tests/cloud/test_cloud_connection.py.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import gridwire
from cryptography import x509
from gridwire import (
    Ack,
    Error,
    ErrorCode,
    EventReport,
    Hello,
    Message,
    Ping,
    Pong,
    ProtocolError,
    ReadingBatch,
    Welcome,
)

from .config import ServerConfig
from .pki import PKIError, check_validity, edge_id_from_certificate
from .refchain import ReferenceKeeper, Stored
from .sessions import SessionRegistry

#: What an edge uploads: both share the journal's sequence space.
Upload = ReadingBatch | EventReport

#: Handles one message type for a connection (see gridcloud.handlers).
Handler = Callable[["EdgeConnection", Any], None]

#: Why a connection is dropped after 3 heartbeat intervals without traffic.
SILENT = "silent for 3 heartbeat intervals"

#: Seconds a graceful close may take before the connection is aborted.
CLOSE_GRACE = 10.0


@dataclass(frozen=True, slots=True)
class EdgeInfo:
    """What an edge said about itself, recorded in ``edges`` on each connection."""

    edge_id: str
    serial: int
    peer: str
    firmware_version: str = ""
    boot_slot: str = ""
    #: the unit's monthly data budget and this month's bytes as it counted them (Hello's
    #: budget extensions; None when it has no budget)
    budget_bytes: int | None = None
    month_bytes: int | None = None


class EdgeRefused(Exception):
    """The edge may not connect (revoked); ``str()`` says why."""


class StoreUnavailable(Exception):
    """The database is down for now; the edge is told to retry after ``retry_after`` seconds."""

    def __init__(self, why: str, retry_after: int) -> None:
        super().__init__(why)
        self.retry_after = retry_after


# -- what a connection needs from outside --------------------------------------------------


class Timer(Protocol):
    """A pending call (Twisted's IDelayedCall fits)."""

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Time and timers (the reactor, or ``task.Clock`` in tests)."""

    def seconds(self) -> float: ...

    # Twisted's spelling, so that the reactor and task.Clock fit as they are.
    def callLater(self, delay: float, callable: Callable[..., object], *args: object) -> Timer: ...


class Transport(Protocol):
    """The connection's socket (with TLS), as the adapter offers it."""

    def write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        """Close gracefully (TLS close_notify, after what was written)."""

    def abort(self) -> None:
        """Drop the connection now."""


class Store(Protocol):
    """The database, as one connection uses it; every call answers later, exactly once."""

    def admit(
        self,
        info: EdgeInfo,
        done: Callable[[int], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        """Register the edge; ``done(last_seq)``, or ``failed(EdgeRefused(...))`` if revoked."""

    def write(
        self,
        edge_id: str,
        upload: Upload,
        done: Callable[[int], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        """Store one upload; ``done(previous high-water mark)`` after COMMIT."""

    def load_references(
        self,
        edge_id: str,
        done: Callable[[Stored | None], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        """The edge's stored reference table (protocol version 3), or None."""

    def save_references(
        self,
        edge_id: str,
        expected: int,
        as_of: int,
        table: gridwire.ReferenceTable,
        done: Callable[[bool], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        """Store the table if the stored one is as of ``expected`` (gridcloud.refchain)."""


class SessionObserver(Protocol):
    """Told when a connection becomes its edge's live session, and when it is gone
    (gridcloud.commands delivers commands to live sessions)."""

    def live(self, connection: EdgeConnection) -> None: ...

    def gone(self, connection: EdgeConnection) -> None: ...


class Log(Protocol):
    """Log lines with a format string and fields (``twisted.logger.Logger`` fits)."""

    def info(self, format: str, **fields: object) -> None: ...

    def warn(self, format: str, **fields: object) -> None: ...

    def error(self, format: str, **fields: object) -> None: ...


# -- the connection ----------------------------------------------------------------------


class EdgeConnection:
    """The cloud side of one edge connection, driven by its adapter."""

    def __init__(
        self,
        *,
        peer: str,
        config: ServerConfig,
        clock: Clock,
        store: Store,
        transport: Transport,
        sessions: SessionRegistry[EdgeConnection],
        log: Log,
        handlers: Mapping[type[Message], Handler] | None = None,
        observer: SessionObserver | None = None,
    ) -> None:
        self.peer = peer
        self.config = config
        self.clock = clock
        self.log = log
        self._store = store
        self._transport = transport
        self._sessions = sessions
        self.session = gridwire.CloudSession(
            limits=gridwire.Limits(
                max_frame_size=config.max_frame_size,
                max_batch_records=config.max_batch_records,
                max_in_flight=config.max_in_flight,
            )
        )
        #: the edge id of the client certificate (None before the handshake)
        self.edge_id: str | None = None
        #: serial number of the client certificate (0 before the handshake)
        self.serial = 0
        #: the firmware version the edge's Hello named ("" before Hello): what it runs now
        self.firmware_version = ""
        # Shared by all connections of a server: the core messages are looked up first.
        self._handlers: Mapping[type[Message], Handler] = handlers if handlers is not None else {}
        self._observer = observer
        self._uploads: deque[Upload] = deque()
        self._writing = False
        self._paused = False
        self._closing = False
        self._handshake_done = False
        self._live = False
        self._timer: Timer | None = None  # Hello timeout, then the silence check
        self._references: ReferenceKeeper | None = None  # version 3 (gridcloud.refchain)
        self._last_heard = 0.0

    # -- read-only views ---------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """True while reading the socket is paused (admission, or back-pressure)."""
        return self._paused

    @property
    def pending_uploads(self) -> int:
        """Uploads received and not yet committed (the one being written included)."""
        return len(self._uploads)

    @property
    def live(self) -> bool:
        """True once admitted, until replaced by a newer session of the edge or closed."""
        return self._live and not self._closing

    @property
    def closing(self) -> bool:
        """True once this side decided to close, or the connection is gone."""
        return self._closing

    # -- events from the adapter -------------------------------------------------------------

    def connected(self) -> None:
        """The TCP connection is accepted: TLS and Hello must follow within hello_timeout."""
        self._arm(self.config.hello_timeout, "no TLS handshake and Hello")

    def handshake_completed(self, certificate: x509.Certificate | None) -> None:
        """TLS is up (OpenSSL checked the chain): take the edge id from the certificate."""
        self._handshake_done = True
        try:
            if certificate is None:
                raise PKIError("no client certificate")
            self.edge_id = edge_id_from_certificate(certificate)
            self.serial = certificate.serial_number
        except PKIError as exc:
            self._refuse(f"refused TLS client {self.peer}: {exc}")
            return
        try:
            check_validity(certificate, self.clock.seconds())  # a resumed session skipped it
        except PKIError as exc:
            self._refuse(f"refused edge {self.edge_id} ({self.peer}): {exc}")
            return
        # From here on a revocation reaches this connection, even while it is being admitted.
        self._sessions.identified(self)

    def data_received(self, data: bytes) -> None:
        """Bytes from the edge: feed the session, handle each message in order."""
        if self._closing:
            return
        self._last_heard = self.clock.seconds()
        try:
            messages = self.session.receive_data(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        for message in messages:
            if self._closing:
                return
            kind = type(message)
            handler = _CORE.get(kind) or self._handlers.get(kind)
            if handler is not None:  # no handler: nothing to do (Pong, for one)
                handler(self, message)

    def connection_lost(self, reason: str, tls_failure: str | None = None) -> None:
        """The connection is gone: stop the timers, give up the session, say why.

        ``reason`` is the transport's; ``tls_failure`` what TLS said went wrong
        (a failed certificate check, an OpenSSL error), if anything did.
        """
        self._closing = True
        self._uploads.clear()
        self._disarm()
        self._sessions.forget(self)
        if self._observer is not None:
            self._observer.gone(self)
        if self.edge_id is not None and self._live:
            self.log.info(
                "edge {edge} ({peer}) disconnected: {why}",
                edge=self.edge_id,
                peer=self.peer,
                why=reason,
            )
        elif not self._handshake_done:
            why = tls_failure or "closed before the TLS handshake completed: " + reason
            self.log.warn(
                "refused TLS client {peer}: handshake failed: {why}", peer=self.peer, why=why
            )

    def revoked(self) -> None:
        """The edge or its certificate was revoked while connected (admitted or not): close."""
        if self._closing:
            return
        self.log.warn(
            "edge {edge} ({peer}) revoked while connected: closing its session",
            edge=self.edge_id,
            peer=self.peer,
        )
        self._fail(ErrorCode.UNAUTHORIZED, "revoked")

    def replaced(self, by: str) -> None:
        """A newer session of the same edge took over: close this one."""
        self.log.info(
            "edge {edge}: session from {old} replaced by a new one from {new}",
            edge=self.edge_id,
            old=self.peer,
            new=by,
        )
        self._live = False
        self._fail(ErrorCode.SHUTTING_DOWN, "replaced by a newer session of this edge")

    # -- for handlers --------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        """Encode ``message`` with the session's rules and write it."""
        self._transport.write(self.session.send(message))

    # -- the core messages -----------------------------------------------------------------------

    def _hello(self, hello: Hello) -> None:
        if self.edge_id is None:  # data before the handshake finished cannot happen in TLS
            self._refuse(f"refused {self.peer}: Hello without an edge identity")
            return
        version = self.session.choose_version()
        if version is None:
            self._refuse(
                f"refused edge {self.edge_id} ({self.peer}): no common protocol version "
                f"(edge speaks {hello.min_version}..{hello.max_version})",
                ErrorCode.UNSUPPORTED_VERSION,
            )
            return
        self._pause()
        self.firmware_version = hello.firmware_version
        info = EdgeInfo(
            self.edge_id, self.serial, self.peer, hello.firmware_version, hello.boot_slot,
            hello.budget_bytes, hello.month_bytes,
        )
        self._store.admit(
            info, lambda last_seq: self._load_references(last_seq, version), self._not_admitted
        )

    def _load_references(self, last_seq: int, version: int) -> None:
        """Version 3 with a table offered: load the stored one before the Welcome."""
        assert self.edge_id is not None and self.session.hello is not None
        if version < 3 or self.session.hello.references is None:
            self._admitted(last_seq, version)
            return

        def loaded(stored: Stored | None) -> None:
            self.session.stored_references = stored
            self._admitted(last_seq, version)

        self._store.load_references(self.edge_id, loaded, self._not_admitted)

    def _admitted(self, last_seq: int, version: int) -> None:
        if self._closing:  # gone, revoked or timed out while the database answered
            self.log.info(
                "edge {edge} ({peer}) admitted after its connection closed: no Welcome",
                edge=self.edge_id,
                peer=self.peer,
            )
            return
        assert self.edge_id is not None
        self._live = True
        self._sessions.claim(self.edge_id, self, self.peer)
        self.send(
            Welcome(
                version=version,
                server_time=int(self.clock.seconds()),
                last_acked_seq=last_seq,
                heartbeat_interval=self.config.heartbeat_interval,
                max_in_flight=self.config.max_in_flight,
                max_batch_records=self.config.max_batch_records,
                max_frame_size=self.config.max_frame_size,
                references=self.session.agreed_references(last_seq),
            )
        )
        if version >= 3:
            assert self.session.welcome is not None
            self._references = ReferenceKeeper(
                self.session.welcome.references, self._save_references, self._references_broken
            )
        self.log.info(
            "edge {edge} connected from {peer}, resuming after seq {seq}",
            edge=self.edge_id,
            peer=self.peer,
            seq=last_seq,
        )
        self._check_silence()
        self._resume()
        if self._observer is not None:
            self._observer.live(self)

    def _not_admitted(self, error: BaseException) -> None:
        if isinstance(error, EdgeRefused):
            self._refuse(f"refused edge {self.edge_id} ({self.peer}): {error}")
        elif isinstance(error, StoreUnavailable):
            # The outage itself is logged once by the pool; this is one refusal of many.
            self.log.info(
                "refused edge {edge} ({peer}): {why}; told to retry in {after} s",
                edge=self.edge_id,
                peer=self.peer,
                why=error,
                after=error.retry_after,
            )
            self._fail(ErrorCode.INTERNAL_ERROR, str(error), error.retry_after)
        else:
            self.log.error(
                "admitting edge {edge} ({peer}) failed: {why}",
                edge=self.edge_id,
                peer=self.peer,
                why=str(error) or type(error).__name__,
            )
            self._fail(ErrorCode.INTERNAL_ERROR, "database unavailable, try later")

    def _upload(self, upload: Upload) -> None:
        self._uploads.append(upload)
        if len(self._uploads) >= self.config.max_pending_uploads:
            self._pause()
        self._write_next()

    def _ping(self, ping: Ping) -> None:
        self.send(Pong(nonce=ping.nonce))

    def _error(self, error: Error) -> None:
        self.log.warn(
            "edge {edge} ({peer}) sent Error {code}: {detail}",
            edge=self.edge_id,
            peer=self.peer,
            code=error.code,
            detail=error.detail,
        )
        self._close()

    # -- ingest, one upload at a time ----------------------------------------------------------

    def _write_next(self) -> None:
        if self._writing or not self._uploads or self._closing:
            return
        assert self.edge_id is not None
        upload = self._uploads[0]
        if isinstance(upload, ReadingBatch):
            first, last = upload.first_seq, upload.last_seq
        else:
            first = last = upload.seq
        self._writing = True
        self._store.write(
            self.edge_id,
            upload,
            lambda previous: self._committed(previous, first, last),
            lambda error: self._write_failed(error, first, last),
        )

    def _committed(self, previous: int, first: int, last: int) -> None:
        self._writing = False
        if self._closing:
            return
        self._uploads.popleft()
        if first > previous + 1:
            self.log.warn(
                "edge {edge}: seq {a}..{b} never arrived (dropped on the edge?)",
                edge=self.edge_id,
                a=previous + 1,
                b=first - 1,
            )
        if self._references is not None:
            table = self.session.table_after(last)
            if table is not None:
                self._references.committed(last, table)
        self.send(Ack(up_to_seq=last))
        if self._paused and len(self._uploads) < self.config.max_pending_uploads:
            self._resume()
        self._write_next()

    def _save_references(
        self,
        expected: int,
        as_of: int,
        table: gridwire.ReferenceTable,
        done: Callable[[bool], None],
        failed: Callable[[BaseException], None],
    ) -> None:
        assert self.edge_id is not None
        self._store.save_references(self.edge_id, expected, as_of, table, done, failed)

    def _references_broken(self, why: str) -> None:
        self.log.info(
            "edge {edge}: reference table not stored ({why}); its next connection starts "
            "without one",
            edge=self.edge_id,
            why=why,
        )

    def _write_failed(self, error: BaseException, first: int, last: int) -> None:
        self._writing = False
        if self._closing:
            return
        self.log.error(
            "edge {edge} ({peer}): storing seq {a}..{b} failed, closing so that the edge "
            "sends it again: {why}",
            edge=self.edge_id,
            peer=self.peer,
            a=first,
            b=last,
            why=str(error) or type(error).__name__,
        )
        retry_after = error.retry_after if isinstance(error, StoreUnavailable) else 0
        self._fail(ErrorCode.INTERNAL_ERROR, "could not store upload, try later", retry_after)

    # -- flow control and timers -----------------------------------------------------------------

    def _pause(self) -> None:
        if not self._paused and not self._closing:
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and not self._closing:
            self._paused = False
            self._transport.resume_reading()

    def _arm(self, seconds: float, why: str) -> None:
        self._disarm()
        self._timer = self.clock.callLater(seconds, self._timed_out, why)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _check_silence(self) -> None:
        """Close a connection silent for 3 heartbeat intervals (a NAT ghost), else look again later.

        One timer per connection, re-armed only when it fires: cheaper with 10,000
        connections than moving a timer on every packet.
        """
        self._disarm()
        allowed = 3 * self.config.heartbeat_interval
        quiet = self.clock.seconds() - self._last_heard
        if quiet >= allowed:
            self._timed_out(SILENT)
        else:
            self._timer = self.clock.callLater(allowed - quiet, self._check_silence)

    def _timed_out(self, why: str) -> None:
        self._timer = None
        self.log.warn(
            "closing {peer} (edge {edge}): {why}", peer=self.peer, edge=self.edge_id, why=why
        )
        self._fail(ErrorCode.TIMEOUT, why)

    # -- failing and closing -----------------------------------------------------------------------

    def _protocol_error(self, exc: ProtocolError) -> None:
        self.log.warn(
            "edge {edge} ({peer}) broke the protocol ({code}): {why}",
            edge=self.edge_id,
            peer=self.peer,
            code=exc.code.name,
            why=str(exc),
        )
        self._fail(exc.code, str(exc))

    def _refuse(self, line: str, code: ErrorCode = ErrorCode.UNAUTHORIZED) -> None:
        self.log.warn("{line}", line=line)
        self._fail(code, line.split(": ", 1)[-1])

    def _fail(self, code: ErrorCode, detail: str, retry_after: int = 0) -> None:
        """Tell the peer why (and when to come back, if we know), then close."""
        if self._closing:
            return
        with contextlib.suppress(ProtocolError):  # a closed session may send nothing more
            self.send(Error(code=code, detail=detail[:200], retry_after=retry_after))
        self._close()

    def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._disarm()
        self._uploads.clear()
        if self._paused:  # a paused transport would never see the close
            self._paused = False
            self._transport.resume_reading()
        if not self._handshake_done:
            # TLS would hold the close until a handshake that is not coming.
            self._transport.abort()
            return
        self._transport.close()
        # A peer that never reads would keep the connection forever: cut it.
        self._timer = self.clock.callLater(CLOSE_GRACE, self._transport.abort)


#: The messages every connection handles itself; all others go through its handler table.
_CORE: dict[type[Message], Handler] = {
    Hello: EdgeConnection._hello,
    ReadingBatch: EdgeConnection._upload,
    EventReport: EdgeConnection._upload,
    Ping: EdgeConnection._ping,
    Error: EdgeConnection._error,
}
