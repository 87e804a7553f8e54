"""The chain of one connection's reference table writes (protocol version 3), without I/O.

A version 3 connection stores the edge's reference table after each committed
batch, on the condition that the stored table is the one that batch was coded
against (gridcloud.references says why and how).  This module decides what to
write and when: one write at a time, only the newest table waiting behind it
(a newer table replaces an older one not yet written, since each is whole), and
the chain broken for good at the first failed condition or write.  No Twisted
here: gridcloud.connection drives it and must stay importable without it.

Tests: tests/cloud/test_cloud_references.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gridwire import ReferenceTable

__all__ = ["RESET", "ReferenceKeeper", "Saver", "Stored"]

#: (as_of_seq, table) as loaded for an edge
Stored = tuple[int, ReferenceTable]

#: ``expected`` of a write that replaces whatever is stored (a connection that started empty)
RESET = -1


class Saver(Protocol):
    """How a ReferenceKeeper writes: ``done(stored)`` or ``failed(error)``, later, once."""

    def __call__(
        self,
        expected: int,
        as_of: int,
        table: ReferenceTable,
        done: Callable[[bool], None],
        failed: Callable[[BaseException], None],
    ) -> None: ...


class ReferenceKeeper:
    """One connection's chain of table writes (sans-IO: the connection supplies ``save``)."""

    def __init__(self, agreed: int | None, save: Saver, on_broken: Callable[[str], None]) -> None:
        #: what the stored table must be as of for the next write (RESET: anything), or
        #: None once the chain is broken
        self.expected: int | None = agreed if agreed is not None else RESET
        self._save = save
        self._on_broken = on_broken
        self._writing = False
        self._waiting: tuple[int, ReferenceTable] | None = None

    def committed(self, as_of: int, table: ReferenceTable) -> None:
        """A batch ending at ``as_of`` was committed; ``table`` is the table right after it."""
        if self.expected is None:
            return
        self._waiting = (as_of, table)  # a newer table replaces one not yet written
        self._next()

    def _next(self) -> None:
        if self._writing or self._waiting is None or self.expected is None:
            return
        as_of, table = self._waiting
        self._waiting = None
        self._writing = True
        expected = self.expected
        self._save(expected, as_of, table,
                   lambda stored: self._written(stored, as_of, expected),
                   self._failed)

    def _written(self, stored: bool, as_of: int, expected: int) -> None:
        self._writing = False
        if not stored:
            self._break(f"the stored table is no longer as of {expected}")
            return
        self.expected = as_of
        self._next()

    def _failed(self, error: BaseException) -> None:
        self._writing = False
        self._break(str(error) or type(error).__name__)

    def _break(self, why: str) -> None:
        self.expected = None
        self._waiting = None
        self._on_broken(why)
