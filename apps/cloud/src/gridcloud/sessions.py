"""Which connection is the live session of each edge, and which connections a revocation reaches.

Why newest wins: an edge behind cellular NAT often loses its connection
without the cloud noticing (no FIN ever arrives).  When it reconnects, the old
connection is a ghost; refusing the new one would lock the edge out until the
ghost times out.  So a new session replaces the old one, which is closed.  Any
batch the old session was still committing is harmless: ingest is idempotent
and serialised per edge (see ingest_batch() in migration 0001).

Why every identified connection, not only the live ones: a revocation must
also reach a connection whose admission is still running.  Its admission query
may have read "not revoked" just before the revocation committed; the NOTIFY
that follows arrives before the connection is live.  So a connection is known
here from the moment its certificate names an edge (TLS done) until it is
gone, and :meth:`SessionRegistry.revocable` finds it by edge id or by
certificate serial.  Revocations are rare: a scan of the connections is fine.

Tests: tests/cloud/test_cloud_connection.py, tests/cloud/test_cloud_server.py (session
replacement, revocation).
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar


class Replaceable(Protocol):
    """A session the registry can retire when a newer one claims the same edge."""

    @property
    def edge_id(self) -> str | None:
        """The edge its certificate names (None before the TLS handshake)."""

    @property
    def serial(self) -> int:
        """Its certificate's serial number."""

    def replaced(self, by: str) -> None:
        """Close this session because a newer one (described by ``by``) took over."""


S = TypeVar("S", bound=Replaceable)


class SessionRegistry(Generic[S]):
    """Live sessions by edge id, and every connection whose certificate named an edge."""

    def __init__(self) -> None:
        self._live: dict[str, S] = {}
        self._identified: dict[S, None] = {}  # an ordered set

    def identified(self, session: S) -> None:
        """``session``'s certificate names an edge: revocations reach it from now on."""
        self._identified[session] = None

    def claim(self, edge_id: str, session: S, description: str) -> S | None:
        """Make ``session`` the live one for ``edge_id``; retire and return the previous one."""
        self._identified[session] = None
        old = self._live.get(edge_id)
        self._live[edge_id] = session
        if old is not None and old is not session:
            old.replaced(by=description)
            return old
        return None

    def forget(self, session: S) -> None:
        """``session``'s connection is gone: drop it (and its edge's live slot, if it holds it)."""
        self._identified.pop(session, None)
        edge_id = session.edge_id
        if edge_id is not None and self._live.get(edge_id) is session:
            del self._live[edge_id]

    def get(self, edge_id: str) -> S | None:
        return self._live.get(edge_id)

    def revocable(self, edge_id: str | None = None, serial: int | None = None) -> list[S]:
        """Connections of ``edge_id`` or with certificate ``serial``, admitted or not."""
        return [
            s
            for s in self._identified
            if (edge_id is not None and s.edge_id == edge_id)
            or (serial is not None and s.serial == serial)
        ]

    def connections(self) -> list[S]:
        """Every connection whose certificate named an edge, admitted or not."""
        return list(self._identified)

    def __len__(self) -> int:
        return len(self._live)
