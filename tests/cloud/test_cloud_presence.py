"""gridcloud.presence over a real PostgreSQL: a session's claim marks its edge held, its release
clears the mark only if no newer session (on any node) has claimed the edge since, and a node
that stops clears what it holds."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from gridcloud import migrations
from gridcloud.presence import PresenceRegistry

from support.cloud_harness import query, wait_until


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


class Session:
    def __init__(self, edge_id: str) -> None:
        self.edge_id = edge_id
        self.serial = 1
        self.replaced_by: str | None = None

    def replaced(self, by: str) -> None:
        self.replaced_by = by


def held(dsn: str) -> dict[str, str | None]:
    return dict(query(dsn, "SELECT edge_id, session_token FROM edges ORDER BY edge_id"))


@pytest_twisted.ensureDeferred
async def test_a_late_release_of_a_replaced_session_keeps_the_edge_online(pg_dsn: str) -> None:
    migrations.migrate(pg_dsn)
    query(pg_dsn, "INSERT INTO edges (edge_id) VALUES ('e1'), ('e2')")
    node_a: PresenceRegistry[Session] = PresenceRegistry(reactor(), pg_dsn)
    node_b: PresenceRegistry[Session] = PresenceRegistry(reactor(), pg_dsn)
    old, new, other = Session("e1"), Session("e1"), Session("e2")
    node_a.claim("e1", old, "old")
    node_a.claim("e2", other, "other")
    await wait_until(reactor(), lambda: all(held(pg_dsn).values()), "both edges held")
    node_b.claim("e1", new, "new")  # the edge reconnected to node b
    await wait_until(reactor(), lambda: str(held(pg_dsn)["e1"]).startswith(node_b.node),
                     "e1 held by node b")
    node_a.forget(old)  # node a notices its ghost connection only now
    node_a.forget(other)
    await wait_until(reactor(), lambda: held(pg_dsn)["e2"] is None, "e2 released")
    assert str(held(pg_dsn)["e1"]).startswith(node_b.node)
    await node_b.stopService()  # a node that stops clears what it holds
    assert held(pg_dsn) == {"e1": None, "e2": None}
    await node_a.stopService()
