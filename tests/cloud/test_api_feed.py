"""The live feed and edge presence, end to end: an edge uploads through a real ``gridcloud
serve`` (CloudService, mutual TLS), a real ``gridcloud api`` process streams it as SSE, and a
client that disconnects resumes with Last-Event-ID, even from a restarted API process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import pytest_twisted
import requests
from gridcloud import ingest
from gridcloud.api import keys
from gridcloud.server import CloudService
from gridedge import loadgen
from twisted.internet import defer
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from support.api_harness import ApiProcess, admit, ingest_records, readings
from support.cloud_harness import (
    T0,
    CloudPKI,
    batch,
    endpoint_of,
    hello,
    wait_until,
    within,
)


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


class FeedClient(Protocol):
    """Reads an SSE stream: ``events`` holds (id, event, data) as they arrive."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self._buffer = b""
        self.done: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().splitlines()
                if not line.startswith(":")
            )
            if fields:
                self.events.append((fields["id"], fields["event"], json.loads(fields["data"])))

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)

    def close(self) -> None:
        assert self.transport is not None
        self.transport.stopProducing()  # type: ignore[attr-defined]

    def seqs(self, kind: str | None = None) -> list[int]:
        return [d["seq"] for _, k, d in self.events if kind is None or k == kind]


async def open_feed(api: ApiProcess, key: str, last_id: str | None = None) -> FeedClient:
    headers = {b"authorization": [f"Bearer {key}".encode()], b"accept": [b"text/event-stream"]}
    if last_id is not None:
        headers[b"last-event-id"] = [last_id.encode()]
    response = await within(reactor(), Agent(reactor()).request(
        b"GET", (api.url + "/v1/feed").encode(), Headers(headers)), 10)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/event-stream")
    client = FeedClient()
    response.deliverBody(client)
    return client


@pytest.fixture
def feed_key(pg_dsn: str, cloud: CloudService) -> str:
    return keys.create_key(pg_dsn, "feed", ["read"])


@pytest.fixture
def api(pg_dsn: str, cloud: CloudService, tmp_path: Path) -> Iterator[ApiProcess]:
    api = ApiProcess(pg_dsn, tmp_path / "api.log").start()
    yield api
    api.stop()


@pytest_twisted.async_yield_fixture
async def edge(cloud: CloudService, cloud_pki: CloudPKI) -> AsyncIterator[loadgen.EdgeClient]:
    client, _ = await loadgen.connect(
        reactor(), endpoint_of(cloud), cloud_pki.client_tls(cloud_pki.edge("e1")), hello())
    await within(reactor(), client.welcome, 10)
    yield client
    client.transport.loseConnection()  # type: ignore[union-attr]
    await within(reactor(), client.lost, 10)


@pytest_twisted.ensureDeferred
async def test_a_reading_ingested_through_serve_appears_on_an_open_feed(
    api: ApiProcess, feed_key: str, edge: loadgen.EdgeClient
) -> None:
    feed = await open_feed(api, feed_key)
    await within(reactor(), edge.upload(batch(1, 3, energy=7000)), 10)
    await wait_until(reactor(), lambda: len(feed.events) >= 3, "3 readings on the feed")
    assert feed.seqs("reading") == [1, 2, 3]
    assert [d["energy_wh"] for _, _, d in feed.events] == [7000, 7001, 7002]
    assert all(d["edge_id"] == "e1" for _, _, d in feed.events)
    feed.close()
    await within(reactor(), feed.done, 10)


@pytest_twisted.ensureDeferred
async def test_resuming_after_an_api_restart_gets_exactly_what_was_missed(
    api: ApiProcess, feed_key: str, edge: loadgen.EdgeClient
) -> None:
    feed = await open_feed(api, feed_key)
    await within(reactor(), edge.upload(batch(1, 3)), 10)
    await wait_until(reactor(), lambda: len(feed.events) == 3, "the first batch")
    last_id = feed.events[-1][0]
    feed.close()
    await within(reactor(), feed.done, 10)

    api.stop()  # while nobody listens, the edge goes on uploading
    await within(reactor(), edge.upload(batch(4, 4, first_meter=10)), 10)
    edge.send(loadgen.gridwire.EventReport(seq=8, meter_id=10, time=T0, kind=1, detail="lid"))
    await within(reactor(), edge.upload(batch(9, 2, first_meter=20)), 10)
    api.start()

    resumed = await open_feed(api, feed_key, last_id)
    await wait_until(reactor(), lambda: len(resumed.events) >= 7, "what was missed")
    assert resumed.seqs() == [4, 5, 6, 7, 8, 9, 10]
    assert [k for _, k, _ in resumed.events].count("event") == 1
    assert resumed.events[4][2]["kind"] == "tamper"
    # and it goes on live (meter 30: meter 11 already has this interval, a natural-key duplicate)
    await within(reactor(), edge.upload(batch(11, 1, first_meter=30)), 10)
    await wait_until(reactor(), lambda: len(resumed.events) == 8, "the live batch")
    assert resumed.seqs()[-1] == 11
    resumed.close()
    await within(reactor(), resumed.done, 10)


@pytest_twisted.ensureDeferred
async def test_a_newer_commit_waits_for_an_older_open_transaction(
    api: ApiProcess, feed_key: str, pg_dsn: str, cloud: CloudService
) -> None:
    """Rows go out in transaction order even when commits come in the other order, so a
    client that resumes after a later row can never miss an earlier one."""
    for edge_id in ("a", "b"):
        with psycopg2.connect(pg_dsn) as c, c.cursor() as cur:
            cur.execute("INSERT INTO edges (edge_id) VALUES (%s)", (edge_id,))
        c.close()
    feed = await open_feed(api, feed_key)
    only_b = await open_feed(api, keys.create_key(pg_dsn, "only-b", ["read"], edges=["b"]))
    older = psycopg2.connect(pg_dsn)
    newer = psycopg2.connect(pg_dsn)
    try:
        cur = older.cursor()
        cur.execute("SELECT pg_current_xact_id()")  # the older transaction starts
        cur.execute(ingest.INGEST_SQL, ingest.batch_parameters(
            "a", 1, list(zip(*readings([1], T0, 2), strict=True))))
        with newer, newer.cursor() as cur2:
            cur2.execute(ingest.INGEST_SQL, ingest.batch_parameters(
                "b", 1, list(zip(*readings([2], T0, 3), strict=True))))
        older.commit()
    finally:
        older.close()
        newer.close()
    await wait_until(reactor(), lambda: len(feed.events) == 5, "both batches")
    assert [d["edge_id"] for _, _, d in feed.events] == ["a", "a", "b", "b", "b"]
    ids = [i for i, _, _ in feed.events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    # a key limited to edge b sees b's rows only, with the same ids
    await wait_until(reactor(), lambda: len(only_b.events) == 3, "b's batch on b's feed")
    assert [i for i, _, _ in only_b.events] == ids[2:]
    for client in (feed, only_b):
        client.close()
        await within(reactor(), client.done, 10)


def test_a_bad_last_event_id_is_400(api: ApiProcess, feed_key: str) -> None:
    r = requests.get(api.url + "/v1/feed", timeout=10, headers={
        "Authorization": f"Bearer {feed_key}", "Last-Event-ID": "1; DROP TABLE feed_log"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"


@pytest_twisted.ensureDeferred
async def test_an_edge_is_online_while_a_serve_node_holds_it(
    api: ApiProcess, feed_key: str, cloud: CloudService, cloud_pki: CloudPKI
) -> None:
    def online() -> bool:
        r = requests.get(api.url + "/v1/edges/e1", timeout=10,
                         headers={"Authorization": f"Bearer {feed_key}"})
        return r.status_code == 200 and bool(r.json()["online"])

    client, _ = await loadgen.connect(
        reactor(), endpoint_of(cloud), cloud_pki.client_tls(cloud_pki.edge("e1")), hello())
    await within(reactor(), client.welcome, 10)
    await wait_until(reactor(), online, "e1 online")
    client.transport.loseConnection()  # type: ignore[union-attr]
    await within(reactor(), client.lost, 10)
    await wait_until(reactor(), lambda: not online(), "e1 offline")


def test_wait_sends_what_is_there_and_closes_when_idle(
    api: ApiProcess, feed_key: str, pg_dsn: str
) -> None:
    admit(pg_dsn, "x")
    ingest_records(pg_dsn, "x", 1, readings([5], T0, 3))
    headers = {"Authorization": f"Bearer {feed_key}", "Last-Event-ID": "0-0-0"}  # the start
    for wait in ("0", "1"):
        r = requests.get(api.url + "/v1/feed", params={"wait": wait}, headers=headers,
                         timeout=20)
        assert r.status_code == 200
        assert r.text.count("event: reading\n") == 3, r.text
