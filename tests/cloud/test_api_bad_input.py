"""Bad input is a 4xx problem and harms nothing: malformed JSON, unknown fields, a 10 MB body,
bad time ranges, a cursor from another query, SQL-looking strings."""

from __future__ import annotations

import base64
import json

import pytest

from support.api_harness import ApiProcess, World, query

PROBLEM = "application/problem+json"
TYPES = "https://gridedge.example/problems/"


def refused(r, status: int, kind: str) -> dict:  # type: ignore[no-untyped-def]
    assert (r.status_code, r.headers["content-type"]) == (status, PROBLEM), r.text
    body = r.json()
    assert body["type"] == TYPES + kind and body["status"] == status
    return dict(body)


def post_key(api: ApiProcess, world: World, data: bytes, ctype: str = "application/json"):  # type: ignore[no-untyped-def]
    return api.call("POST", "/v1/keys", world.admin, data=data,
                    headers={"Content-Type": ctype})


def test_malformed_json_is_400(api: ApiProcess, world: World) -> None:
    body = refused(post_key(api, world, b'{"name": "x", '), 400, "bad-body")
    assert "malformed JSON" in body["detail"]
    refused(post_key(api, world, b"[1, 2]"), 400, "bad-body")
    refused(post_key(api, world, b"\xff\xfe"), 400, "bad-body")


def test_unknown_fields_are_refused(api: ApiProcess, world: World) -> None:
    body = json.dumps({"name": "x", "scopes": ["read"], "admin": True}).encode()
    assert "admin" in refused(post_key(api, world, body), 400, "bad-body")["detail"]
    body = json.dumps({"name": "x", "scopes": ["root"]}).encode()
    refused(post_key(api, world, body), 400, "bad-body")
    refused(post_key(api, world, b'{"name": "x", "scopes": ["read"]}', "text/plain"),
            415, "unsupported-media-type")
    assert not query(world.dsn, "SELECT 1 FROM api_keys WHERE name = 'x'")


def test_a_10_mb_body_is_413(api: ApiProcess, world: World) -> None:
    big = b'{"name": "' + b"a" * (10 * 1024 * 1024) + b'", "scopes": ["read"]}'
    refused(post_key(api, world, big), 413, "body-too-large")
    assert api.get("/v1/edges", world.reader).status_code == 200  # still serving


def test_a_body_where_none_is_taken_is_400(api: ApiProcess, world: World) -> None:
    r = api.call("DELETE", "/v1/keys/nobody", world.admin, data=b"{}")
    refused(r, 400, "bad-body")


@pytest.mark.parametrize("params", [
    {"from": "2026-11-18T00:00:00Z", "to": "2026-11-17T00:00:00Z"},  # backwards
    {"from": "2026-11-17T00:00:00Z", "to": "2026-11-17T00:00:00Z"},  # empty
    {"from": "2026-11-17T00:00:00"},  # no zone
    {"from": "yesterday"},
    {"to": "2026-13-45T00:00:00Z"},
    {"limit": "0"},
    {"limit": "1000000"},
    {"limit": "ten"},
    {"colour": "red"},  # unknown parameter
])
def test_bad_ranges_and_parameters_are_400(
    api: ApiProcess, world: World, params: dict[str, str]
) -> None:
    refused(api.get("/v1/meters/1/readings", world.reader, params=params), 400, "bad-parameter")


def test_a_cursor_from_another_query_is_400(api: ApiProcess, world: World) -> None:
    meter1 = api.get("/v1/meters/1/readings", world.reader, params={"limit": 2}).json()["next"]
    edges = api.get("/v1/edges", world.reader, params={"limit": 1}).json()["next"]
    r = api.get("/v1/meters/2/readings", world.reader, params={"cursor": meter1})
    refused(r, 400, "bad-cursor")
    r = api.get("/v1/meters/1/readings", world.reader,
                params={"cursor": meter1, "from": "2026-11-17T00:00:00Z"})
    refused(r, 400, "bad-cursor")
    refused(api.get("/v1/events", world.reader, params={"cursor": edges}), 400, "bad-cursor")
    forged = base64.urlsafe_b64encode(b'["x", 1]').decode().rstrip("=")
    refused(api.get("/v1/edges", world.reader, params={"cursor": forged}), 400, "bad-cursor")
    refused(api.get("/v1/edges", world.reader, params={"cursor": "AAAA"}), 400, "bad-cursor")


@pytest.mark.parametrize("path", [
    "/v1/edges/e1'%20OR%20'1'='1",
    "/v1/edges/e1;DROP%20TABLE%20readings",
    "/v1/meters/1%20OR%201=1",
    "/v1/edges/e1%27--/readings",
])
def test_sql_looking_paths_are_404(api: ApiProcess, world: World, path: str) -> None:
    refused(api.get(path, world.reader), 404, "not-found")


@pytest.mark.parametrize("params", [
    {"edge_id": "e1' OR '1'='1"},
    {"kind": "tamper'; DROP TABLE events; --"},
    {"meter_id": "1 OR 1=1"},
])
def test_sql_looking_parameters_are_400_and_harm_nothing(
    api: ApiProcess, world: World, params: dict[str, str]
) -> None:
    refused(api.get("/v1/events", world.reader, params=params), 400, "bad-parameter")
    assert query(world.dsn, "SELECT count(*) FROM events") == [(2,)]
    assert query(world.dsn, "SELECT count(*) > 0 FROM readings") == [(True,)]


def test_unknown_paths_and_methods_are_problems(api: ApiProcess, world: World) -> None:
    refused(api.get("/v1/nothing", world.reader), 404, "not-found")
    refused(api.call("PUT", "/v1/edges", world.reader), 405, "method-not-allowed")
