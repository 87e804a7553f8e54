"""Protocol version 3: each meter's latest record as the reference, kept across batches and
connections by both ends.

Why: a METER_DELTA column codes a value as the difference from the same meter's
previous value.  Version 2 finds that value only in the previous batch of the
connection, so every connection starts cold (a reconnect's first batch costs
about twice as much) and a reading that arrives late, or a meter back after a
silence, finds no reference.  In version 3 the reference is the meter's latest
record in a *reference table* both ends hold: every batch the edge has sent on
this connection, on top of what both ends knew when it started.

What both ends know when a connection starts (the handshake agrees on it):

- The edge keeps a :class:`EdgeReferences` for as long as it runs: the table of
  every batch the cloud has acknowledged (``committed``, "as of" the last such
  batch's last sequence number ``seq``), plus the batches sent but not yet
  acknowledged (``pending``), in order.  Its Hello says ``references=seq``
  (absent when it has none, e.g. after a restart).
- The cloud stores its table per edge in PostgreSQL (gridcloud.references),
  each batch applied before the batch is acknowledged, with the last sequence
  number it is "as of" (R).  Its Welcome says ``references=R`` when the edge
  offered A and A <= R <= last_acked_seq (:func:`agreed_references`), else
  nothing, and then both ends start from an empty table.
- The edge then applies its pending batches up to R and must land exactly on R
  (R is A, or the last seq of one of its pending batches); otherwise the two
  tables cannot be the same and the edge refuses the Welcome (INVALID_FIELD) and
  forgets its table, so the next connection starts empty.  Pending batches after
  R are dropped: the cloud either has them committed (they are in
  last_acked_seq, not in either table) or will get them again.

So both tables are always built from the same batches in the same order, which
is all the codec needs: a reference the two ends disagree on would decode to
wrong values silently, which is why every doubt resets to empty instead.

Tests: tests/wire/test_references.py, tests/wire/test_fuzz.py.
"""

from __future__ import annotations

from collections import deque
from operator import setitem

from ._batch import decode_batch, encode_batch, meter_planes
from ._errors import ErrorCode, ProtocolError, Side
from ._records import FIELDS, RecordColumns
from ._varint import Reader

__all__ = ["EdgeReferences", "ReferenceTable", "agreed_references"]

Row = tuple[int, int, int, int, int, int, int, int]

#: Meters a stored table may hold when read back (a unit's radio serves a few thousand).
MAX_TABLE = 1 << 20


class ReferenceTable:
    """Each meter's latest record (the last one applied), meters in the order first seen."""

    __slots__ = ("_cached", "_columns", "_index")

    def __init__(self, rows: list[Row] | tuple[Row, ...] = ()) -> None:
        self._index: dict[int, int] = {}
        self._columns: list[list[int]] = [[] for _ in FIELDS]
        self._cached: RecordColumns | None = None
        if rows:
            self.apply(RecordColumns.build(**dict(zip(FIELDS, zip(*rows, strict=True),
                                                      strict=True))))

    def __len__(self) -> int:
        return len(self._index)

    def copy(self) -> ReferenceTable:
        """An independent table with the same contents."""
        made = ReferenceTable()
        made._index = dict(self._index)
        made._columns = [list(column) for column in self._columns]
        made._cached = self._cached
        return made

    def apply(self, columns: RecordColumns) -> None:
        """Make each meter's last record in ``columns`` its reference (batch order)."""
        index = self._index
        meters = columns.meter_id
        for meter in meters:
            if meter not in index:
                index[meter] = len(index)
                for column in self._columns:
                    column.append(0)
        positions = list(map(index.__getitem__, meters))
        for column, values in zip(self._columns, columns.as_tuple(), strict=True):
            # in record order, so a meter's last record in the batch wins; C loops only
            list(map(setitem, [column] * len(positions), positions, values))
        self._cached = None

    def as_columns(self) -> RecordColumns | None:
        """The table as columns (one record per meter), the codec's ``previous``; None if empty."""
        if not self._index:
            return None
        if self._cached is None:
            self._cached = RecordColumns._trusted(tuple(column) for column in self._columns)
        return self._cached

    def primer(self) -> bytes:
        """The deflate dictionary of a version 3 connection's first batch: the meter id
        column of the table as a batch would code it (FOR), meters in the order first seen,
        which is nearly the order they report in; b"" when empty.  Why: the meter ids are
        what a cold batch pays most for (about 2.5 bytes a reading), and both ends have them."""
        return meter_planes(self._columns[0])

    def rows(self) -> list[Row]:
        """One row per meter, in index order."""
        return list(zip(*self._columns, strict=True))

    def to_bytes(self) -> bytes:
        """The table as a reading batch body (deflated columns; b"" when empty), for storing."""
        columns = self.as_columns()
        return encode_batch(columns, compress=True) if columns is not None else b""

    @classmethod
    def from_bytes(cls, data: bytes, max_meters: int = MAX_TABLE) -> ReferenceTable:
        """The table ``to_bytes`` made; ProtocolError if ``data`` is not one."""
        table = cls()
        if data:
            reader = Reader(data)
            columns = decode_batch(reader, max_meters)
            if reader.remaining() or len(set(columns.meter_id)) != len(columns):
                raise ProtocolError(ErrorCode.BAD_BATCH, "not a reference table")
            table.apply(columns)
        return table


def agreed_references(offered: int | None, stored: int | None, last_acked_seq: int) -> int | None:
    """The cloud's choice for Welcome.references: its stored table's seq R when the edge
    offered a table as of A <= R and R <= last_acked_seq (R never runs ahead of what was
    committed), else None (both ends start empty)."""
    if offered is None or stored is None:
        return None
    return stored if offered <= stored <= last_acked_seq else None


class EdgeReferences:
    """The edge's reference state, kept across connections (not across restarts)."""

    __slots__ = ("committed", "pending", "seq")

    def __init__(self) -> None:
        #: every acknowledged batch applied, in order
        self.committed = ReferenceTable()
        #: the last seq of the last batch in ``committed`` (0: none)
        self.seq = 0
        #: (last seq, columns) of batches sent and not yet acknowledged, in order
        self.pending: deque[tuple[int, RecordColumns]] = deque()

    @property
    def offer(self) -> int | None:
        """Hello.references: the seq ``committed`` is as of, None when there is nothing."""
        return self.seq if self.seq and len(self.committed) else None

    def reset(self) -> None:
        """Forget everything (a version < 3 connection uploaded, or the ends disagreed)."""
        self.committed = ReferenceTable()
        self.seq = 0
        self.pending.clear()

    def start(self, agreed: int | None) -> ReferenceTable:
        """The working table of a new connection from Welcome.references (see the module
        docstring); raises ProtocolError(INVALID_FIELD) when it cannot be matched."""
        if agreed is None:
            self.reset()
            return ReferenceTable()
        self._commit_up_to(agreed)
        if self.seq != agreed:
            wanted, have = agreed, self.seq
            self.reset()
            raise ProtocolError(
                ErrorCode.INVALID_FIELD,
                f"Welcome.references={wanted} is no batch boundary of this edge's table "
                f"(as of {have}); starting without references next time",
                Side.REMOTE,
            )
        self.pending.clear()  # after R: committed without us (events) or to be sent again
        return self.committed.copy()

    def sent(self, last_seq: int, columns: RecordColumns) -> None:
        """A batch went out on the current connection."""
        self.pending.append((last_seq, columns))

    def acknowledged(self, up_to_seq: int) -> None:
        """The cloud committed everything up to ``up_to_seq`` (and its table with it)."""
        self._commit_up_to(up_to_seq)

    def _commit_up_to(self, seq: int) -> None:
        pending = self.pending
        while pending and pending[0][0] <= seq:
            last, columns = pending.popleft()
            self.committed.apply(columns)
            self.seq = last
