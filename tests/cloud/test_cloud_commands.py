"""Command delivery in `gridcloud serve` (gridcloud.commands) over real TLS and PostgreSQL, with
gridedge.loadgen as the unit: queued commands go out on Hello in windows of `command_window`,
acceptances free the window, a new row wakes the holding node through NOTIFY, a session that
died before accepting gets its commands again on the next one, an older unit's final answer is
recorded, and the expiry sweep."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from gridcloud.server import CloudService
from gridedge import loadgen
from gridwire import CommandResult, CommandStatus

from support.cloud_harness import (
    CloudPKI,
    endpoint_of,
    hello,
    query,
    wait_until,
    within,
)


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


def queue(dsn: str, n: int, edge: str = "edge-1", expires: str = "1 hour") -> None:
    query(dsn, "INSERT INTO commands (edge_id, action, expires_at) SELECT %s, 'upload_now', "
          "now() + %s::interval FROM generate_series(1, %s)", (edge, expires, n))


def states(dsn: str) -> dict[str, int]:
    return {s: int(n) for s, n in query(dsn, "SELECT state, count(*) FROM commands GROUP BY 1")}


async def unit(service: CloudService, cloud_pki: CloudPKI, answer: bool = False
               ) -> loadgen.EdgeClient:
    tls = cloud_pki.client_tls(cloud_pki.edge("edge-1"))
    client, _ = await loadgen.connect(reactor(), endpoint_of(service), tls, hello(),
                                      answer_commands=answer)
    await within(reactor(), client.welcome, 10)
    return client


@pytest_twisted.ensureDeferred
async def test_window_acceptance_wakeup_and_resend(cloud: CloudService, cloud_pki: CloudPKI,
                                                   pg_dsn: str) -> None:
    """Queued before the unit connects: 32 go out on Hello and no more until accepted; the
    rest follow as acceptances come; a command created later arrives through NOTIFY; commands
    of a session that died unaccepted are sent again to the next one."""
    first = await unit(cloud, cloud_pki)  # creates the edge's row
    first.transport.loseConnection()
    await within(reactor(), first.lost, 10)
    queue(pg_dsn, 40)
    client = await unit(cloud, cloud_pki)
    await wait_until(reactor(), lambda: len(client.commands) == 32, "the first window")
    assert states(pg_dsn) == {"sent": 32, "queued": 8}
    client.transport.loseConnection()  # dies without accepting anything
    await within(reactor(), client.lost, 10)

    again = await unit(cloud, cloud_pki, answer=True)
    await wait_until(reactor(), lambda: states(pg_dsn) == {"succeeded": 40}, "all 40 done")
    ids = [c.command_id for c in again.commands]
    assert len(ids) == len(set(ids)) == 40
    assert [c.command_id for c in client.commands] == ids[:32]  # the same ones, resent
    assert query(pg_dsn, "SELECT min(deliveries), max(deliveries) FROM commands") == [(1, 2)]

    queue(pg_dsn, 1)  # the NOTIFY wakes this node, which holds the session
    await wait_until(reactor(), lambda: len(again.commands) == 41, "the new command")
    await wait_until(reactor(), lambda: states(pg_dsn) == {"succeeded": 41}, "it done")


@pytest_twisted.ensureDeferred
async def test_old_unit_answer_and_expiry(cloud: CloudService, cloud_pki: CloudPKI,
                                          pg_dsn: str) -> None:
    """An older unit answering UNSUPPORTED fails the command with that reason; commands past
    their expiry are never sent, and the sweep expires those of an offline unit."""
    client = await unit(cloud, cloud_pki)
    queue(pg_dsn, 1)
    await wait_until(reactor(), lambda: len(client.commands) == 1, "the command")
    client.send(CommandResult(command_id=client.commands[0].command_id,
                              status=CommandStatus.UNSUPPORTED, detail="too old"))
    await wait_until(reactor(), lambda: states(pg_dsn) == {"failed": 1}, "the failure")
    assert query(pg_dsn, "SELECT reason FROM commands") == [("UNSUPPORTED: too old",)]
    client.transport.loseConnection()
    await within(reactor(), client.lost, 10)

    queue(pg_dsn, 2, expires="-1 second")
    await cloud.commands.expire()
    assert states(pg_dsn) == {"failed": 1, "expired": 2}
    client = await unit(cloud, cloud_pki)
    queue(pg_dsn, 1)
    await wait_until(reactor(), lambda: len(client.commands) == 1, "the live one only")
    client.transport.loseConnection()
    await within(reactor(), client.lost, 10)
