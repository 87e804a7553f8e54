"""Prepaid credit, energy and alarms through the real ``gridcloud api``: a customer, a tariff
and an account made over HTTP, top-ups idempotent by reference, the pipeline charging the
world's readings, the relay asked open at zero and closed by a top-up, and what it all left
(balance, ledger, energy, alarms, the live feed) readable with the API's conventions."""

from __future__ import annotations

import datetime

from support.api_harness import T0, ApiProcess, World, query
from support.pipeline_data import connect, drain


def _at(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat().replace(
        "+00:00", "Z")


def test_a_prepaid_meter_over_the_api(api: ApiProcess, world: World) -> None:
    """Customer, tariff, account, top-ups (replayed, conflicting), charges, relay, ledger."""
    key = world.admin
    r = api.call("POST", "/v1/customers", key, json={"name": "Ada", "reference": "ada"})
    assert r.status_code == 201, r.text
    customer = r.json()["customer_id"]
    assert api.call("POST", "/v1/customers", key,
                    json={"name": "Ada", "reference": "ada"}).status_code == 409
    assert api.call("POST", "/v1/customers", key,
                    json={"name": "A\u0000da"}).status_code == 400
    bad = api.call("POST", "/v1/tariffs", key, json={
        "name": "x", "standing_charge": 1, "band_start": [0, 700], "band_price": [1, 2]})
    assert bad.status_code == 400 and "multiples of 15" in bad.json()["detail"]
    bad = api.call("POST", "/v1/tariffs", key, json={
        "name": "y", "timezone": "Mars/Olympus", "standing_charge": 1, "band_start": [0],
        "band_price": [1]})
    assert bad.status_code == 400, bad.text
    r = api.call("POST", "/v1/tariffs", key, json={
        "name": "home", "currency": "EUR", "standing_charge": 10, "band_start": [0, 720],
        "band_price": [100, 200]})
    assert r.status_code == 201, r.text
    tariff = r.json()["tariff_id"]
    r = api.call("POST", f"/v1/tariffs/{tariff}/versions", key, json={
        "valid_from": _at(T0 + 20 * 3600), "standing_charge": 20, "band_start": [0],
        "band_price": [300]})
    assert r.status_code == 201 and len(r.json()["versions"]) == 2
    r = api.call("POST", "/v1/accounts", key, json={
        "meter_id": 1, "customer_id": customer, "tariff_id": tariff, "low_balance": 50,
        "active_from": _at(T0 - 900)})
    assert r.status_code == 201, r.text
    assert api.call("POST", "/v1/accounts", world.reader, json={
        "meter_id": 2, "customer_id": customer, "tariff_id": tariff}).status_code == 403

    first = api.call("POST", "/v1/topups", key,
                     json={"meter_id": 1, "amount": 60, "reference": "pos-1"})
    assert first.status_code == 201 and first.json()["replayed"] is False
    again = api.call("POST", "/v1/topups", key,
                     json={"meter_id": 1, "amount": 60, "reference": "pos-1"})
    assert again.json()["replayed"] is True
    assert again.json()["topup_id"] == first.json()["topup_id"]
    assert api.call("POST", "/v1/topups", key, json={
        "meter_id": 1, "amount": 61, "reference": "pos-1"}).status_code == 409
    assert api.call("POST", "/v1/topups", key, json={
        "meter_id": 3, "amount": 5, "reference": "pos-2"}).status_code == 400
    assert api.call("POST", "/v1/topups", key, json={
        "meter_id": 1, "amount": 5, "reference": "p\u0000s"}).status_code == 400

    (xmin,), = query(world.dsn, "SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
    drain(connect(world.dsn).cursor())
    account = api.get("/v1/meters/1/account", key).json()
    assert account["balance"] <= 0 and account["relay"] == "open"
    entries, cursor = [], None
    while True:
        page = api.get("/v1/meters/1/ledger", key,
                       params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        entries += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    assert sum(e["amount"] for e in entries) == account["balance"]
    energy = [e for e in entries if e["kind"] == "energy"]
    assert energy and all(e["edge_id"] == "e1" and e["first_seq"] >= 1 for e in energy)
    assert {e["kind"] for e in entries} == {"topup", "energy", "standing"}
    rows = query(world.dsn, "SELECT desired, entry_id FROM relay_requests WHERE meter_id = 1")
    assert [r[0] for r in rows] == ["open"] and rows[0][1] is not None

    r = api.call("POST", "/v1/topups", key,
                 json={"meter_id": 1, "amount": 10_000, "reference": "pos-3"})
    assert r.json()["balance"] > 0
    rows = query(world.dsn, "SELECT desired FROM relay_requests WHERE meter_id = 1"
                            " ORDER BY request_id")
    assert [r[0] for r in rows] == ["open", "closed"]
    # Each decision became a command in its own transaction (migration 0009), delivered by the
    # commands path like any other: open first, then close.
    commands = [c for c in api.get("/v1/commands", key, params={"meter_id": 1}).json()["items"]
                if c["action"] != "set_allowance"]  # the allowances: test_credit_allowances.py
    assert [(c["action"], c["origin"], c["edge_id"]) for c in reversed(commands)] == [
        ("relay_open", "pipeline", "e1"), ("relay_close", "pipeline", "e1")]
    linked = query(world.dsn, "SELECT r.desired, c.action FROM relay_requests r"
                              " JOIN commands c ON c.id = r.command_id WHERE r.meter_id = 1"
                              " ORDER BY r.request_id")
    assert linked == [("open", "relay_open"), ("closed", "relay_close")]
    alarms = api.get("/v1/alarms", key, params={"kind": "low_balance"}).json()["items"]
    assert len(alarms) == 1 and alarms[0]["cleared_at"] is not None
    assert alarms[0]["evidence"]["threshold"] == 50
    assert api.get("/v1/alarms", key, params={"kind": "low_balance", "state": "open"}
                   ).json()["items"] == []

    # The live feed sends the raise and the clear, resumably, in commit order.
    feed = api.get("/v1/feed", key, params={"wait": 0},
                   headers={"Last-Event-ID": f"{xmin}-0-0"}).text
    sent = [block for block in feed.split("\n\n") if "event: alarm" in block]
    low = [b for b in sent if '"low_balance"' in b]
    assert len(low) == 2, feed[-2000:]
    last_id = low[-1].split("id: ")[1].split("\n")[0]
    rest = api.get("/v1/feed", key, params={"wait": 0}, headers={"Last-Event-ID": last_id}).text
    assert '"low_balance"' not in rest


def test_energy_aggregates_over_the_api(api: ApiProcess, world: World) -> None:
    """Hourly and daily energy per meter and per edge add up to the register's increase."""
    drain(connect(world.dsn).cursor())
    key = world.admin
    hours = api.get("/v1/meters/2/energy", key, params={"limit": 1000}).json()["items"]
    days = api.get("/v1/meters/2/energy", key, params={"period": "day"}).json()["items"]
    (first,), (last,) = (query(world.dsn, f"SELECT energy_wh FROM readings WHERE meter_id = 2"
                                          f" ORDER BY interval_end {o} LIMIT 1")
                         for o in ("ASC", "DESC"))
    assert sum(h["energy_wh"] for h in hours) == sum(d["energy_wh"] for d in days) \
        == last[0] - first[0]
    assert sum(h["readings"] for h in hours) == world.intervals
    edge = api.get("/v1/edges/e1/energy", key, params={"period": "day"}).json()["items"]
    assert sum(d["readings"] for d in edge) == 2 * world.intervals
    assert api.get("/v1/edges/e1/energy", world.e2_only).status_code == 404
    r = api.get("/v1/meters/2/energy", key, params={"period": "week"})
    assert r.status_code == 400
