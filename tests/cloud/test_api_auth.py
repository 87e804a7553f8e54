"""API keys: no key, a wrong, revoked or expired key, a missing scope, the rate limit, and
``gridcloud apikey create|list|revoke`` against a real ``gridcloud api`` and PostgreSQL."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from gridcloud import cli
from gridcloud.api import keys
from gridcloud.api.auth import KEY_CACHE_SECONDS, KeyCache, KeyRecord
from gridcloud.api.ratelimit import RateLimiter
from twisted.internet import task

from support.api_harness import ApiProcess, World, query, running_api
from support.waiting import wait_until

PROBLEM = "application/problem+json"
TYPES = "https://gridedge.example/problems/"


def problem_type(r) -> str:  # type: ignore[no-untyped-def]
    assert r.headers["content-type"] == PROBLEM, r.text
    return str(r.json()["type"]).removeprefix(TYPES)


def test_no_key_is_401_with_a_bearer_challenge(api: ApiProcess) -> None:
    r = api.get("/v1/edges")
    assert r.status_code == 401 and problem_type(r) == "unauthorized"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert api.get("/v1/edges", headers={"Authorization": "Basic eDp5"}).status_code == 401


def test_a_wrong_key_is_401(api: ApiProcess, world: World) -> None:
    r = api.get("/v1/edges", keys.new_key())
    assert r.status_code == 401 and r.json()["detail"] == "unknown key"
    assert api.get("/v1/edges", world.reader[:-1]).status_code == 401


def test_a_revoked_key_stops_working_within_the_key_cache_ttl(
    api: ApiProcess, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["apikey", "create", "short-lived", "--dsn", world.dsn]) == 0
    key = capsys.readouterr().out.strip()
    assert api.get("/v1/edges", key).status_code == 200
    assert cli.main(["apikey", "revoke", "short-lived", "--dsn", world.dsn]) == 0
    revoked = time.monotonic()
    wait_until(lambda: api.get("/v1/edges", key).status_code == 401,
               KEY_CACHE_SECONDS + 5, "the revoked key to be refused")
    assert time.monotonic() - revoked < KEY_CACHE_SECONDS + 1
    r = api.get("/v1/edges", key)
    assert r.status_code == 401 and r.json()["detail"] == "this key was revoked"


def test_a_cached_key_is_trusted_for_at_most_the_ttl() -> None:
    clock = task.Clock()
    cache = KeyCache(ttl=KEY_CACHE_SECONDS)
    record = KeyRecord("k", ("read",), None, False, None, clock.seconds())
    cache.put(b"digest", record)
    clock.advance(KEY_CACHE_SECONDS * 0.99)
    assert cache.get(b"digest", clock.seconds()) is record
    clock.advance(KEY_CACHE_SECONDS * 0.01)
    assert cache.get(b"digest", clock.seconds()) is None  # read again: a revocation shows


def test_a_key_revoked_through_the_process_is_forgotten_at_once() -> None:
    clock = task.Clock()
    cache = KeyCache(ttl=KEY_CACHE_SECONDS)
    cache.put(b"a", KeyRecord("billing", ("read",), None, False, None, clock.seconds()))
    cache.put(b"b", KeyRecord("ops", ("read",), None, False, None, clock.seconds()))
    cache.forget("billing")
    assert cache.get(b"a", clock.seconds()) is None
    assert cache.get(b"b", clock.seconds()) is not None


def test_a_cached_key_expires_on_time() -> None:
    record = KeyRecord("k", ("read",), None, False, expires_at=10.0, read_at=9.5)
    assert not record.expired(9.99) and record.expired(10.0)


def test_an_expired_key_is_401(api: ApiProcess, world: World) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    key = keys.create_key(world.dsn, "expired", ["read"], expires_at=past)
    r = api.get("/v1/edges", key)
    assert r.status_code == 401 and r.json()["detail"] == "this key has expired"


def test_a_missing_scope_is_403(api: ApiProcess, world: World) -> None:
    r = api.get("/v1/keys", world.reader)
    assert r.status_code == 403 and problem_type(r) == "forbidden"
    assert api.get("/v1/keys", world.admin).status_code == 200


def test_keys_are_stored_hashed_with_their_last_use(api: ApiProcess, world: World) -> None:
    api.get("/v1/edges", world.reader)
    (stored, prefix, used), = query(
        world.dsn, "SELECT key_sha256, prefix, last_used_at FROM api_keys WHERE name = 'reader'")
    assert bytes(stored) == keys.digest(world.reader) and world.reader.startswith(prefix)
    assert used is not None
    dump = query(world.dsn, "SELECT string_agg(api_keys::text, ' ') FROM api_keys")[0][0]
    assert world.reader not in dump


def test_apikey_list_shows_names_and_scopes_never_keys(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["apikey", "list", "--dsn", world.dsn]) == 0
    out = capsys.readouterr().out
    assert "reader" in out and "read,write,admin" in out and world.reader not in out
    assert cli.main(["apikey", "create", "reader", "--dsn", world.dsn]) == 2  # name taken
    assert cli.main(["apikey", "revoke", "nobody", "--dsn", world.dsn]) == 2


def test_keys_are_managed_over_the_api_with_admin_scope(api: ApiProcess, world: World) -> None:
    r = api.call("POST", "/v1/keys", world.admin,
                 json={"name": "billing", "scopes": ["read"], "edges": ["e1"]})
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["scopes"] == ["read"] and made["edges"] == ["e1"]
    assert [e["edge_id"] for e in api.get("/v1/edges", made["key"]).json()["items"]] == ["e1"]
    again = api.call("POST", "/v1/keys", world.admin, json={"name": "billing", "scopes": ["read"]})
    assert again.status_code == 409
    assert api.call("DELETE", "/v1/keys/billing", world.admin).status_code == 204
    assert api.get("/v1/edges", made["key"]).status_code == 401


def test_the_rate_limit_answers_429_with_retry_after(world: World, tmp_path: Path) -> None:
    for api in running_api(world.dsn, tmp_path / "api.log", rate_limit=0.5, rate_burst=3):
        codes = [api.get("/v1/edges", world.reader).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = api.get("/v1/edges", world.reader)
        assert problem_type(r) == "rate-limited" and int(r.headers["retry-after"]) >= 1
        # another key has its own bucket
        assert api.get("/v1/edges", world.admin).status_code == 200


def test_token_bucket_refills_at_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=2)
    assert [limiter.take(b"k", 0.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take(b"k", 0.0) == pytest.approx(0.5)
    assert limiter.take(b"k", 0.5) == 0.0  # one token back after 1/rate
    assert limiter.take(b"k", 0.5) > 0
    assert limiter.take(b"other", 0.5) == 0.0
