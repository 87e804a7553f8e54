"""Which connection is the live session of each edge: one per edge, newest wins.

Why newest wins: an edge behind cellular NAT often loses its connection
without the cloud noticing (no FIN ever arrives).  When it reconnects, the old
connection is a ghost; refusing the new one would lock the edge out until the
ghost times out.  So a new session replaces the old one, which is closed.  Any
batch the old session was still committing is harmless: ingest is idempotent
and serialised per edge (see ingest_batch() in migration 0001).

Tests: tests/cloud/test_cloud_connection.py, tests/cloud/test_cloud_server.py (session
replacement).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Replaceable(Protocol):
    """A session the registry can retire when a newer one claims the same edge."""

    def replaced(self, by: str) -> None:
        """Close this session because a newer one (described by ``by``) took over."""


S = TypeVar("S", bound=Replaceable)


class SessionRegistry(Generic[S]):
    """Live sessions by edge id."""

    def __init__(self) -> None:
        self._live: dict[str, S] = {}

    def claim(self, edge_id: str, session: S, description: str) -> S | None:
        """Make ``session`` the live one for ``edge_id``; retire and return the previous one."""
        old = self._live.get(edge_id)
        self._live[edge_id] = session
        if old is not None and old is not session:
            old.replaced(by=description)
            return old
        return None

    def release(self, edge_id: str, session: S) -> None:
        """Forget ``session`` if it is still the live one (a replaced one is not)."""
        if self._live.get(edge_id) is session:
            del self._live[edge_id]

    def get(self, edge_id: str) -> S | None:
        return self._live.get(edge_id)

    def __len__(self) -> int:
        return len(self._live)
