"""EdgeSession and CloudSession: sans-IO gridwire sessions (bytes in -> messages out).

Use (the adapter owns the socket, the session owns the rules):

    session = EdgeSession()
    transport.write(session.send(Hello(...)))
    for message in session.receive_data(chunk): ...

``send`` checks the message against the state table and the guards, then
returns the frame to write.  ``receive_data`` takes the frames ``chunk``
completes one at a time: each is first vetted from its header alone (its type
against the state table, an upload against the in-flight window, and before
the handshake its size and count: at most MAX_HANDSHAKE_FRAMES frames of at
most MAX_HANDSHAKE_FRAME bytes), and only then decoded and checked against the
guards.  So a frame the session would refuse costs no decoding: a peer that
has not been welcomed cannot make the receiver inflate a single batch.  It
returns the messages in order.  Either raises
ProtocolError and leaves the session in ERROR (see _state's theory of
operation for what is still allowed).  When one chunk holds several frames and
one of them is bad, the ones before it are not returned: that is safe because
nothing is acknowledged that was not delivered, so it is simply sent again on
the next connection.

There is no end-of-stream call: when the connection closes, the adapter drops
the session (a new connection gets new sessions).  ``buffered`` > 0 at that
moment means the peer stopped in the middle of a frame, worth a log line.

Tests: tests/wire/test_session.py, tests/wire/test_pair.py, tests/wire/test_version2.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from ._batch import encode_batch_primed, records_per_frame
from ._codec import FrameDecoder, encode_message, frame
from ._errors import ErrorCode, ProtocolError, Side
from ._limits import MAX_HANDSHAKE_FRAME, MAX_HANDSHAKE_FRAMES, SUPPORTED_VERSIONS, Limits
from ._messages import (
    MESSAGE_CLASSES,
    Ack,
    ChunkRequest,
    EventReport,
    FirmwareChunk,
    FirmwareOffer,
    Hello,
    Message,
    ReadingBatch,
    Welcome,
)
from ._records import FIELDS, RecordColumns
from ._references import EdgeReferences, ReferenceTable, agreed_references
from ._state import INITIAL_STATE, TRANSITIONS, Direction, Role, State, receivable_types
from ._varint import uvarint

__all__ = ["CloudSession", "EdgeSession", "negotiate_version"]


#: The type codes of what an edge uploads; the in-flight window counts them.
_UPLOAD_TYPES = frozenset({int(ReadingBatch.TYPE), int(EventReport.TYPE)})

#: A session reuses the last batch's column modes and tries every mode on every Nth batch.
RETRY_MODES_EVERY = 8


def _prefix_length(frame: bytes) -> int:
    """Bytes of a frame's length prefix (a uvarint)."""
    length = 1
    while frame[length - 1] & 0x80:
        length += 1
    return length


def negotiate_version(
    min_version: int, max_version: int, versions: Sequence[int] = SUPPORTED_VERSIONS
) -> int | None:
    """The highest version both ``versions`` (this implementation's) and the range speak,
    or None."""
    common = [v for v in versions if min_version <= v <= max_version]
    return max(common) if common else None


class _Session:
    """What both roles share: state table, codec, upload window, firmware bookkeeping."""

    role: Role

    def __init__(
        self, limits: Limits | None = None, *, versions: Sequence[int] = SUPPORTED_VERSIONS
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        #: the protocol versions this end speaks (a subset of SUPPORTED_VERSIONS: tests and
        #: deployments may pin an older one)
        self.versions = versions
        self._state = INITIAL_STATE[self.role]
        self._decoder = FrameDecoder(self.limits)
        #: the negotiated protocol version (None before Welcome)
        self.version: int | None = None
        #: the Hello of this connection (None before it is sent/received)
        self.hello: Hello | None = None
        #: the Welcome of this connection (None before it is sent/received)
        self.welcome: Welcome | None = None
        self._acked = 0  # highest acknowledged sequence number
        self._highest = 0  # highest uploaded sequence number
        self._in_flight: deque[int] = deque()  # last seq of each unacknowledged upload
        self._window = 1
        self._offers: dict[int, FirmwareOffer] = {}
        self._requested: set[tuple[int, int]] = set()
        self._previous_batch: RecordColumns | None = None  # METER_DELTA reference
        #: version 3: the working reference table (gridwire._references), None before
        self._table: ReferenceTable | None = None
        self._previous_planes: tuple[bytes, ...] = ()  # version 2: next batch's dictionary
        self._batch_modes: tuple[int, ...] | None = None  # column modes of the last batch
        self._batches_sent = 0
        self._receivable_in: State | None = None  # the state _receivable was made for
        self._receivable: frozenset[int] = frozenset()

    # -- public read-only views -------------------------------------------------------

    @property
    def state(self) -> State:
        """The current state (see _state.TRANSITIONS)."""
        return self._state

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a complete frame."""
        return self._decoder.buffered

    @property
    def skipped(self) -> int:
        """Unknown optional messages skipped so far."""
        return self._decoder.skipped

    @property
    def last_acked_seq(self) -> int:
        """Highest sequence number acknowledged so far (from Welcome, then Ack)."""
        return self._acked

    @property
    def highest_seq(self) -> int:
        """Highest sequence number uploaded in this session (last_acked_seq before any)."""
        return self._highest

    @property
    def in_flight(self) -> int:
        """Uploads (batches, event reports) not yet fully acknowledged."""
        return len(self._in_flight)

    @property
    def window(self) -> int:
        """Uploads allowed in flight: Welcome.max_in_flight, capped by Limits.max_in_flight."""
        return self._window

    @property
    def batch_limit(self) -> int:
        """Records a ReadingBatch may hold for the peer: what Welcome says the cloud accepts
        (max_batch_records, and what surely fits its max_frame_size), else this side's Limits."""
        welcome = self.welcome
        limit = self.limits.max_batch_records
        if welcome is not None and welcome.max_batch_records is not None:
            limit = min(limit, welcome.max_batch_records)
        frame = self.limits.max_frame_size
        if welcome is not None and welcome.max_frame_size is not None:
            frame = min(frame, welcome.max_frame_size)
        return min(limit, records_per_frame(frame))

    # -- the two entry points ------------------------------------------------------------

    def send(self, message: Message) -> bytes:
        """The frame for ``message``, after checking that this role may send it now."""
        if not isinstance(message, Message):
            raise self._fail(ErrorCode.INVALID_FIELD, f"not a message: {message!r}", Side.LOCAL)
        modes: tuple[int, ...] | None = None
        if isinstance(message, ReadingBatch):
            hint = self._batch_modes if self._batches_sent % RETRY_MODES_EVERY else None
            primer = self._previous_planes if (self.version or 1) >= 2 else None
            previous = self._table.as_columns() if self._table is not None else (
                self._previous_batch
            )
            body, modes, planes = encode_batch_primed(message.columns, previous, None, hint,
                                                      primer)
            data = frame(message.TYPE, uvarint(message.first_seq) + body)
        else:
            data = encode_message(message)
        if len(data) - _prefix_length(data) > self.limits.max_frame_size:
            raise self._fail(
                ErrorCode.FRAME_TOO_LARGE,
                f"{type(message).__name__} frame of {len(data)} bytes exceeds "
                f"max_frame_size {self.limits.max_frame_size}: send fewer records per batch",
                Side.LOCAL,
            )
        self._transition(Direction.SEND, message, Side.LOCAL)
        if isinstance(message, ReadingBatch):
            # modes chosen without a previous batch (no METER_DELTA) are no hint for the next
            self._batch_modes = modes if previous is not None else None
            self._previous_batch = message.columns
            self._batch_done(message)
            self._previous_planes = planes
            self._batches_sent += 1
        return data

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Messages completed by ``data``, checked in order (see the module docstring)."""
        if self._state in (State.ERROR, State.CLOSED):
            raise ProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"{self.role.value} session cannot receive in state {self._state.value}",
                Side.LOCAL,
            )
        decoder = self._decoder
        decoder.append(data)
        messages: list[Message] = []
        try:
            # one frame at a time: each is vetted against the state its predecessors left
            while (message := decoder.next_message(self._vet)) is not None:
                self._transition(Direction.RECEIVE, message, Side.REMOTE)
                messages.append(message)
                if isinstance(message, ReadingBatch) and self._table is not None:
                    self._table.apply(message.columns)
                    decoder.previous_batch = self._table.as_columns()
                    self._received_batch(message)
                if self.state is State.CLOSED:
                    break
        except ProtocolError:
            if self.state is not State.CLOSED:
                self._state = State.ERROR
            raise
        return messages

    # -- machinery -----------------------------------------------------------------------

    def _fail(self, code: ErrorCode, text: str, side: Side) -> ProtocolError:
        if self._state is not State.CLOSED:  # CLOSED stays closed: nothing more to send
            self._state = State.ERROR
        return ProtocolError(code, text, side)

    def _vet(self, message_type: int, length: int) -> None:
        """Refuse a received frame from its header, before its body is awaited or decoded.

        What the state table and the upload window forbid costs no decoding
        (no inflating a batch the session would refuse anyway), and before
        the handshake a peer may send only a few small frames.
        """
        state = self._state
        if state is not State.READY:
            if length > MAX_HANDSHAKE_FRAME:
                raise self._fail(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"frame of {length} bytes before the handshake completed "
                    f"(at most {MAX_HANDSHAKE_FRAME})",
                    Side.REMOTE,
                )
            if self._decoder.frames >= MAX_HANDSHAKE_FRAMES:
                raise self._fail(
                    ErrorCode.UNEXPECTED_MESSAGE,
                    f"more than {MAX_HANDSHAKE_FRAMES} frames before the handshake completed",
                    Side.REMOTE,
                )
        if state is not self._receivable_in:  # the set of the current state, cached
            self._receivable_in = state
            self._receivable = receivable_types(self.role, state)
        if message_type not in self._receivable:
            cls = MESSAGE_CLASSES.get(message_type)
            if cls is None:  # an unknown optional message: skipped, never decoded
                return
            raise self._unexpected(Direction.RECEIVE, cls, Side.REMOTE)
        if message_type in _UPLOAD_TYPES:
            self._check_window(Side.REMOTE)

    def _unexpected(self, direction: Direction, cls: type[Message], side: Side) -> ProtocolError:
        return self._fail(
            ErrorCode.UNEXPECTED_MESSAGE,
            f"{self.role.value} may not {direction.value} {cls.__name__} "
            f"in state {self._state.value}",
            side,
        )

    def _transition(self, direction: Direction, message: Message, side: Side) -> None:
        table = TRANSITIONS[self.role][self._state]
        new_state = table.get((direction, type(message)))
        if new_state is None:
            raise self._unexpected(direction, type(message), side)
        self._guard(direction, message, side)
        self._state = new_state

    def _guard(self, direction: Direction, message: Message, side: Side) -> None:
        """Value rules of READY and the handshake (per role)."""
        raise NotImplementedError

    def _received_batch(self, batch: ReadingBatch) -> None:
        """A version 3 ReadingBatch was received and applied to the table (per role)."""

    def _batch_done(self, batch: ReadingBatch) -> None:
        """A ReadingBatch was sent: version 3 makes it part of the reference table."""
        if self._table is not None:
            self._table.apply(batch.columns)

    def _guard_from_edge(self, message: Message, side: Side) -> None:
        """What the edge sends: checked alike when the edge sends it and the cloud receives it."""
        if isinstance(message, Hello):
            self.hello = message
        elif (span := _upload_range(message)) is not None:
            self._check_upload(span[0], span[1], side)
        elif isinstance(message, ChunkRequest):
            self._check_chunk_request(message, side)

    def _guard_from_cloud(self, message: Message, side: Side) -> None:
        """What the cloud sends after Welcome: checked alike on both ends (Welcome is per role)."""
        if isinstance(message, Ack):
            self._check_ack(message, side)
        elif isinstance(message, FirmwareOffer):
            self._offers[message.offer_id] = message
        elif isinstance(message, FirmwareChunk):
            self._check_chunk(message, side)

    def _start(self, welcome: Welcome) -> None:
        self.welcome = welcome
        self.version = welcome.version
        if welcome.version >= 2:  # batches deflate against the previous one (gridwire._batch)
            self._decoder.primer = b""
        if welcome.version >= 3:  # references from the table (gridwire._references)
            self._table = self._reference_table(welcome)
            self._decoder.previous_batch = self._table.as_columns()
            # the first batch deflates against the table's meter ids (ReferenceTable.primer)
            primer = self._table.primer()
            self._decoder.primer = primer
            self._previous_planes = (primer,) + (b"",) * (len(FIELDS) - 1)
        self._acked = self._highest = welcome.last_acked_seq
        # the edge may choose a smaller window than offered; the cloud holds it to the offer
        self._window = min(welcome.max_in_flight, self.limits.max_in_flight)

    def _reference_table(self, welcome: Welcome) -> ReferenceTable:
        """The working table a version 3 connection starts with (per role)."""
        raise NotImplementedError

    def _check_upload(self, first: int, last: int, side: Side) -> None:
        if first <= self._highest:
            raise self._fail(
                ErrorCode.SEQUENCE_ERROR,
                f"upload starting at seq {first} does not follow seq {self._highest}",
                side,
            )
        self._check_window(side)
        self._highest = last
        self._in_flight.append(last)

    def _check_window(self, side: Side) -> None:
        if len(self._in_flight) >= self._window:
            raise self._fail(
                ErrorCode.FLOW_CONTROL, f"more than {self._window} uploads in flight", side
            )

    def _check_ack(self, ack: Ack, side: Side) -> None:
        if not self._acked <= ack.up_to_seq <= self._highest:
            raise self._fail(
                ErrorCode.SEQUENCE_ERROR,
                f"Ack up_to_seq={ack.up_to_seq} outside {self._acked}..{self._highest} "
                "(acknowledged so far .. uploaded so far)",
                side,
            )
        self._acked = ack.up_to_seq
        in_flight = self._in_flight
        while in_flight and in_flight[0] <= ack.up_to_seq:
            in_flight.popleft()

    def _check_chunk_request(self, request: ChunkRequest, side: Side) -> None:
        offer = self._offers.get(request.offer_id)
        if offer is None or request.index >= offer.chunk_count:
            raise self._fail(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"ChunkRequest for offer {request.offer_id} chunk {request.index}: not offered",
                side,
            )
        self._requested.add((request.offer_id, request.index))

    def _check_chunk(self, chunk: FirmwareChunk, side: Side) -> None:
        key = (chunk.offer_id, chunk.index)
        if key not in self._requested:
            raise self._fail(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"FirmwareChunk {chunk.index} of offer {chunk.offer_id} was not requested",
                side,
            )
        expected = self._offers[chunk.offer_id].chunk_length(chunk.index)
        if len(chunk.data) != expected:
            raise self._fail(
                ErrorCode.INVALID_FIELD,
                f"FirmwareChunk {chunk.index} has {len(chunk.data)} bytes, expected {expected}",
                side,
            )
        self._requested.discard(key)


def _upload_range(message: Message) -> tuple[int, int] | None:
    if isinstance(message, ReadingBatch):
        return message.first_seq, message.last_seq
    if isinstance(message, EventReport):
        return message.seq, message.seq
    return None


class EdgeSession(_Session):
    """The edge (TLS client) end: sends Hello first, uploads, obeys acks and commands."""

    role = Role.EDGE

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        versions: Sequence[int] = SUPPORTED_VERSIONS,
        references: EdgeReferences | None = None,
    ) -> None:
        super().__init__(limits, versions=versions)
        #: the reference state kept across this edge's connections (None: start empty each time)
        self.references = references

    @property
    def references_offer(self) -> int | None:
        """What Hello.references must say: the kept table's seq, None without one."""
        return self.references.offer if self.references is not None else None

    @property
    def can_upload(self) -> bool:
        """True when READY and the in-flight window has room for one more upload."""
        return self._state is State.READY and len(self._in_flight) < self._window

    @property
    def next_seq(self) -> int:
        """The lowest sequence number the next upload may start at."""
        return self._highest + 1

    def _batch_done(self, batch: ReadingBatch) -> None:
        super()._batch_done(batch)
        if self.references is None:
            return
        if self._table is None:  # version 1 or 2: the cloud's table no longer follows ours
            self.references.reset()
        else:
            self.references.sent(batch.last_seq, batch.columns)

    def _reference_table(self, welcome: Welcome) -> ReferenceTable:
        if self.references is None:
            if welcome.references is not None:
                raise self._fail(ErrorCode.INVALID_FIELD,
                                 "Welcome.references for an edge that offered no table",
                                 Side.REMOTE)
            return ReferenceTable()
        try:
            return self.references.start(welcome.references)
        except ProtocolError as exc:
            raise self._fail(exc.code, str(exc), Side.REMOTE) from None

    def _check_ack(self, ack: Ack, side: Side) -> None:
        super()._check_ack(ack, side)
        if self.references is not None and self._table is not None:
            self.references.acknowledged(ack.up_to_seq)

    def _guard(self, direction: Direction, message: Message, side: Side) -> None:
        if direction is Direction.SEND:
            if isinstance(message, Hello) and message.references != (
                self.references_offer if message.max_version >= 3 else None
            ):
                raise self._fail(
                    ErrorCode.INVALID_FIELD,
                    f"Hello.references={message.references} but this edge's table is as of "
                    f"{self.references_offer} (use EdgeSession.references_offer)",
                    side,
                )
            self._guard_from_edge(message, side)
            return
        if isinstance(message, Welcome):
            assert self.hello is not None
            if not (
                self.hello.min_version <= message.version <= self.hello.max_version
                and message.version in self.versions
            ):
                raise self._fail(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"Welcome chose version {message.version}, Hello offered "
                    f"{self.hello.min_version}..{self.hello.max_version}",
                    side,
                )
            if message.references is not None and (
                self.hello.references is None or message.references < self.hello.references
            ):
                raise self._fail(
                    ErrorCode.INVALID_FIELD,
                    f"Welcome.references={message.references} below Hello.references="
                    f"{self.hello.references}",
                    side,
                )
            self._start(message)
        else:
            self._guard_from_cloud(message, side)


class CloudSession(_Session):
    """The cloud (TLS server) end: answers Hello with Welcome, acknowledges, commands."""

    role = Role.CLOUD

    def __init__(
        self, limits: Limits | None = None, *, versions: Sequence[int] = SUPPORTED_VERSIONS
    ) -> None:
        super().__init__(limits, versions=versions)
        #: version 3: the edge's stored reference table and the seq it is as of, set by the
        #: adapter before it sends Welcome (gridcloud.references loads it)
        self.stored_references: tuple[int, ReferenceTable] | None = None
        self._snapshots: dict[int, ReferenceTable] = {}

    def table_after(self, last_seq: int) -> ReferenceTable | None:
        """Version 3: the reference table as it was right after the received batch ending at
        ``last_seq`` (to store once that batch is committed); forgets it and older ones.
        None in versions 1 and 2, or when asked twice."""
        table = self._snapshots.pop(last_seq, None)
        for seq in [seq for seq in self._snapshots if seq < last_seq]:
            del self._snapshots[seq]
        return table

    def _received_batch(self, batch: ReadingBatch) -> None:
        assert self._table is not None
        snapshots = self._snapshots
        snapshots[batch.last_seq] = self._table.copy()
        while len(snapshots) > self._window:  # only unacknowledged batches can still need one
            del snapshots[next(iter(snapshots))]

    def agreed_references(self, last_acked_seq: int) -> int | None:
        """Welcome.references for a Welcome with ``last_acked_seq`` (None: start empty)."""
        if self.hello is None or (self.choose_version() or 0) < 3:
            return None
        stored = self.stored_references[0] if self.stored_references is not None else None
        return agreed_references(self.hello.references, stored, last_acked_seq)

    def _reference_table(self, welcome: Welcome) -> ReferenceTable:
        if welcome.references is None:
            return ReferenceTable()
        assert self.stored_references is not None  # checked by _guard
        return self.stored_references[1].copy()

    def choose_version(self) -> int | None:
        """The version to put in Welcome: the highest both sides speak (None: send Error)."""
        if self.hello is None:
            return None
        return negotiate_version(self.hello.min_version, self.hello.max_version, self.versions)

    @property
    def unacked_seq(self) -> int:
        """Highest sequence number received; send Ack(up_to_seq=...) up to it once committed."""
        return self._highest

    def _guard(self, direction: Direction, message: Message, side: Side) -> None:
        if direction is Direction.RECEIVE:
            self._guard_from_edge(message, side)
            return
        if isinstance(message, Welcome):
            assert self.hello is not None
            if message.max_in_flight > self.limits.max_in_flight:
                raise self._fail(
                    ErrorCode.INVALID_FIELD,
                    f"Welcome.max_in_flight={message.max_in_flight} exceeds "
                    f"Limits.max_in_flight={self.limits.max_in_flight}",
                    side,
                )
            if message.version != self.choose_version():
                raise self._fail(
                    ErrorCode.UNSUPPORTED_VERSION,
                    f"Welcome version {message.version} is not the negotiated "
                    f"{self.choose_version()} (Hello offered "
                    f"{self.hello.min_version}..{self.hello.max_version})",
                    side,
                )
            if message.references != self.agreed_references(message.last_acked_seq):
                raise self._fail(
                    ErrorCode.INVALID_FIELD,
                    f"Welcome.references={message.references}, agreed: "
                    f"{self.agreed_references(message.last_acked_seq)} "
                    "(CloudSession.agreed_references)",
                    side,
                )
            self._start(message)
        else:
            self._guard_from_cloud(message, side)
