"""Prepaid credit: ``/v1/customers``, ``/v1/tariffs``, ``/v1/accounts`` (balances),
``/v1/topups`` and ``/v1/meters/{meter_id}/ledger``.

Money is integer minor units (cents) everywhere; prices are minor units per kWh.  The
pipeline (migration 0008, docs/pipeline.md) charges accounts from the readings; these
operations create what it charges against and show what it did.  A top-up is idempotent
by its ``reference``: sent again it answers with the stored top-up (``"replayed": true``),
and a reference reused for another meter or amount is a 409.

Tests: tests/pipeline/test_pipeline_api.py, tests/cloud/test_api_schema.py.
"""

from __future__ import annotations

import datetime
import itertools
from typing import Any

import psycopg2
import psycopg2.errors
from twisted.internet import defer

from ..config import ApiConfig
from ..params import METER_PATH, Param, page_params, parse_time, rfc3339
from ..problems import Problem
from ..routes import Call, Operation
from . import meters, paging

MONEY = {"type": "integer", "minimum": -(2**62), "maximum": 2**62}
ID = {"type": "integer", "minimum": 1, "maximum": 2**62}
_TS = {"type": "string", "format": "date-time"}

def _why(exc: Exception) -> str:
    """The first line of a refusal by PostgreSQL (or by psycopg2: a string with NUL)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- customers ----------------------------------------------------------------------------

CUSTOMER: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["customer_id", "name", "reference", "created_at"],
    "properties": {"customer_id": {"type": "integer"}, "name": {"type": "string"},
                   "reference": {"type": ["string", "null"]}, "created_at": _TS},
}
CUSTOMER_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 200},
        "reference": {"type": ["string", "null"], "minLength": 1, "maxLength": 100,
                      "description": "Your own id of the customer (unique)."},
    },
}


def _customer(row: tuple[Any, ...]) -> dict[str, Any]:
    cid, name, ref, created = row
    return {"customer_id": cid, "name": name, "reference": ref, "created_at": rfc3339(created)}


async def create_customer(call: Call) -> Any:
    try:
        rows = await call.db.rows(
            "INSERT INTO customers (name, reference) VALUES (%s, %s)"
            " RETURNING customer_id, name, reference, created_at",
            (call.body["name"], call.body.get("reference")))
    except psycopg2.errors.UniqueViolation:
        raise Problem("conflict", "a customer with this reference exists already") from None
    except (psycopg2.DataError, psycopg2.IntegrityError, ValueError) as exc:
        raise Problem("bad-body", _why(exc)) from None
    return _customer(rows[0])


async def list_customers(call: Call) -> Any:
    query, after = paging.after(call.query, "customers", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(
        "SELECT customer_id, name, reference, created_at FROM customers"
        " WHERE %(after)s::bigint IS NULL OR customer_id > %(after)s"
        " ORDER BY customer_id LIMIT %(limit)s",
        {"after": after[0] if after else None, "limit": limit + 1})
    return paging.page(rows, limit, query, lambda r: [r[0]], _customer)


# -- tariffs ------------------------------------------------------------------------------

VERSION: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["valid_from", "standing_charge", "band_start", "band_price"],
    "properties": {
        "valid_from": _TS,
        "standing_charge": {"type": "integer", "description": "Minor units per day."},
        "band_start": {"type": "array", "items": {"type": "integer"},
                       "description": "Minutes after local midnight each band starts."},
        "band_price": {"type": "array", "items": {"type": "integer"},
                       "description": "Minor units per kWh in each band."},
    },
}
TARIFF: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["tariff_id", "name", "currency", "timezone", "versions", "created_at"],
    "properties": {"tariff_id": {"type": "integer"}, "name": {"type": "string"},
                   "currency": {"type": "string"}, "timezone": {"type": "string"},
                   "versions": {"type": "array", "items": VERSION}, "created_at": _TS},
}
_VERSION_FIELDS: dict[str, Any] = {
    "standing_charge": {"type": "integer", "minimum": 0, "maximum": 10**9},
    "band_start": {"type": "array", "minItems": 1, "maxItems": 96,
                   "items": {"type": "integer", "minimum": 0, "maximum": 1425},
                   "description": "Band starts, minutes after local midnight: 0 first, "
                                  "increasing, multiples of 15."},
    "band_price": {"type": "array", "minItems": 1, "maxItems": 96,
                   "items": {"type": "integer", "minimum": 0, "maximum": 10**6}},
}
TARIFF_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "standing_charge", "band_start", "band_price"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "timezone": {"type": "string", "minLength": 1, "maxLength": 64,
                     "description": "IANA zone the bands and days are reckoned in."},
        **_VERSION_FIELDS,
    },
}
VERSION_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["valid_from", "standing_charge", "band_start", "band_price"],
    "properties": {"valid_from": {"type": "string", "format": "date-time"}, **_VERSION_FIELDS},
}

_TARIFF_SQL = """
SELECT t.tariff_id, t.name, t.currency, t.timezone, t.created_at,
       coalesce((SELECT json_agg(json_build_object(
                    'valid_from', v.valid_from, 'standing_charge', v.standing_charge,
                    'band_start', v.band_start, 'band_price', v.band_price)
                    ORDER BY v.valid_from)
                   FROM tariff_versions v WHERE v.tariff_id = t.tariff_id), '[]')
  FROM tariffs t
"""


def _tariff(row: tuple[Any, ...]) -> dict[str, Any]:
    tid, name, currency, tz, created, versions = row
    return {
        "tariff_id": tid, "name": name, "currency": currency, "timezone": tz,
        "created_at": rfc3339(created),
        "versions": [{**v, "valid_from": rfc3339(datetime.datetime.fromisoformat(
            v["valid_from"]))} for v in versions],
    }


def _check_bands(body: dict[str, Any]) -> None:
    starts, prices = body["band_start"], body["band_price"]
    if len(starts) != len(prices):
        raise Problem("bad-body", "band_start and band_price must have the same length")
    if starts[0] != 0 or any(b <= a for a, b in itertools.pairwise(starts)):
        raise Problem("bad-body", "band_start must start at 0 and increase")
    if any(s % 15 for s in starts):
        raise Problem("bad-body", "band_start must be multiples of 15 minutes")


def _interaction(work: Any) -> Any:
    """``work`` as one transaction; data and integrity errors are the caller's (400/409)."""
    async def run(call: Call, *args: Any) -> Any:
        try:
            return await call.db.interaction(work, *args)
        except psycopg2.errors.UniqueViolation as exc:
            raise Problem("conflict", str(exc).splitlines()[0]) from None
        except (psycopg2.DataError, psycopg2.IntegrityError, ValueError) as exc:
            raise Problem("bad-body", _why(exc)) from None
    return run


def _insert_tariff(cur: Any, body: dict[str, Any]) -> Any:
    async def run() -> Any:
        await cur.execute(
            "INSERT INTO tariffs (name, currency, timezone) VALUES (%s, %s, %s)"
            " RETURNING tariff_id",
            (body["name"], body.get("currency", "XXX"), body.get("timezone", "UTC")))
        (tid,) = cur.fetchone()
        await cur.execute("SELECT now() AT TIME ZONE %s", (body.get("timezone", "UTC"),))
        await cur.execute(
            "INSERT INTO tariff_versions VALUES (%s, 'epoch', %s, %s, %s)",
            (tid, body["standing_charge"], body["band_start"], body["band_price"]))
        await cur.execute(_TARIFF_SQL + " WHERE t.tariff_id = %s", (tid,))
        return cur.fetchone()
    return defer.ensureDeferred(run())


async def create_tariff(call: Call) -> Any:
    _check_bands(call.body)
    return _tariff(await _interaction(_insert_tariff)(call, call.body))


async def add_version(call: Call) -> Any:
    _check_bands(call.body)
    await one_tariff(call)
    valid_from = parse_time(call.body["valid_from"], Param("valid_from", "date-time", ""))
    try:
        await call.db.run(
            "INSERT INTO tariff_versions VALUES (%s, %s, %s, %s, %s)",
            (call.path["tariff_id"], valid_from, call.body["standing_charge"],
             call.body["band_start"], call.body["band_price"]))
    except psycopg2.errors.UniqueViolation:
        raise Problem("conflict", "a version with this valid_from exists already") from None
    return await one_tariff(call)


async def one_tariff(call: Call) -> Any:
    rows = await call.db.rows(_TARIFF_SQL + " WHERE t.tariff_id = %s", (call.path["tariff_id"],))
    if not rows:
        raise Problem("not-found", f"no tariff {call.path['tariff_id']}")
    return _tariff(rows[0])


async def list_tariffs(call: Call) -> Any:
    query, after = paging.after(call.query, "tariffs", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(
        _TARIFF_SQL + " WHERE %(after)s::bigint IS NULL OR t.tariff_id > %(after)s"
        " ORDER BY t.tariff_id LIMIT %(limit)s",
        {"after": after[0] if after else None, "limit": limit + 1})
    return paging.page(rows, limit, query, lambda r: [r[0]], _tariff)


# -- accounts (balances) ------------------------------------------------------------------

ACCOUNT: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["meter_id", "customer_id", "tariff_id", "active_from", "balance",
                 "low_balance", "relay", "energy_charged", "standing_through", "created_at"],
    "properties": {
        "meter_id": {"type": "integer"}, "customer_id": {"type": "integer"},
        "tariff_id": {"type": "integer"}, "active_from": _TS,
        "balance": {"type": "integer", "description": "Minor units: top-ups minus charges."},
        "low_balance": {"type": "integer"},
        "relay": {"type": "string", "enum": ["open", "closed"],
                  "description": "The relay state the pipeline last asked for."},
        "energy_charged": {"type": "integer"},
        "standing_through": {"type": ["string", "null"], "format": "date"},
        "created_at": _TS,
    },
}
ACCOUNT_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["meter_id", "customer_id", "tariff_id"],
    "properties": {
        "meter_id": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "customer_id": ID, "tariff_id": ID,
        "low_balance": {"type": "integer", "minimum": 0, "maximum": 10**12},
        "active_from": {"type": "string", "format": "date-time",
                        "description": "Readings ending after this are charged (default: now)."},
    },
}
_ACCOUNT_SQL = """
SELECT meter_id, customer_id, tariff_id, active_from, balance, low_balance, relay,
       energy_charged, standing_through, created_at
  FROM credit_accounts
"""


def _account(row: tuple[Any, ...]) -> dict[str, Any]:
    meter, cust, tariff, active, balance, low, relay, charged, through, created = row
    return {"meter_id": meter, "customer_id": cust, "tariff_id": tariff,
            "active_from": rfc3339(active), "balance": balance, "low_balance": low,
            "relay": relay, "energy_charged": charged,
            "standing_through": through.isoformat() if through else None,
            "created_at": rfc3339(created)}


async def create_account(call: Call) -> Any:
    body = call.body
    active = body.get("active_from")
    active_from = parse_time(active, Param("active_from", "date-time", "")) if active else None
    try:
        rows = await call.db.rows(
            "INSERT INTO credit_accounts (meter_id, customer_id, tariff_id, low_balance,"
            " active_from) VALUES (%s, %s, %s, %s, coalesce(%s, now())) RETURNING meter_id",
            (body["meter_id"], body["customer_id"], body["tariff_id"],
             body.get("low_balance", 0), active_from))
    except psycopg2.errors.UniqueViolation:
        raise Problem("conflict", f"meter {body['meter_id']} has an account already") from None
    except psycopg2.errors.ForeignKeyViolation:
        raise Problem("bad-body", "no such customer or tariff") from None
    rows = await call.db.rows(_ACCOUNT_SQL + " WHERE meter_id = %s", (rows[0][0],))
    return _account(rows[0])


async def list_accounts(call: Call) -> Any:
    query, after = paging.after(call.query, "accounts", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(
        _ACCOUNT_SQL + " a WHERE (%(after)s::bigint IS NULL OR a.meter_id > %(after)s)"
        " AND (%(customer)s::bigint IS NULL OR a.customer_id = %(customer)s)"
        " AND (%(edges)s::text[] IS NULL OR EXISTS (SELECT 1 FROM meters m"
        "      WHERE m.meter_id = a.meter_id AND m.edge_id = ANY(%(edges)s::text[])))"
        " ORDER BY a.meter_id LIMIT %(limit)s",
        {"after": after[0] if after else None, "limit": limit + 1,
         "customer": call.query["customer_id"], "edges": call.edges()})
    return paging.page(rows, limit, query, lambda r: [r[0]], _account)


async def _visible_account(call: Call, meter_id: int) -> tuple[Any, ...]:
    rows = await call.db.rows(_ACCOUNT_SQL + " WHERE meter_id = %s", (meter_id,))
    if not rows:
        raise Problem("not-found", f"meter {meter_id} has no credit account")
    if call.caller.edges is not None:
        await meters.visible_meter(call, meter_id)
    return rows[0]


async def one_account(call: Call) -> Any:
    return _account(await _visible_account(call, call.path["meter_id"]))


# -- top-ups ------------------------------------------------------------------------------

TOPUP: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["topup_id", "meter_id", "amount", "reference", "balance", "entry_id",
                 "created_at", "replayed"],
    "properties": {
        "topup_id": {"type": "integer"}, "meter_id": {"type": "integer"},
        "amount": {"type": "integer"}, "reference": {"type": "string"},
        "balance": {"type": "integer", "description": "The balance after this top-up "
                                                      "(now, when replayed)."},
        "entry_id": {"type": ["integer", "null"]}, "created_at": _TS,
        "replayed": {"type": "boolean", "description": "true: this reference was stored "
                                                       "before; nothing was added now."},
    },
}
TOPUP_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["meter_id", "amount", "reference"],
    "properties": {
        "meter_id": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "amount": {"type": "integer", "minimum": 1, "maximum": 10**12,
                   "description": "Minor units."},
        "reference": {"type": "string", "minLength": 1, "maxLength": 100,
                      "description": "Your unique reference: a top-up sent twice is "
                                     "stored once."},
    },
}


async def create_topup(call: Call) -> Any:
    body = call.body
    if call.caller.edges is not None:
        await meters.visible_meter(call, body["meter_id"])
    try:
        rows = await call.db.rows(
            "SELECT topup_id, created, balance, entry_id, created_at"
            " FROM credit_topup(%s, %s, %s)", (body["meter_id"], body["amount"],
                                              body["reference"]))
    except psycopg2.errors.NoDataFound:
        raise Problem("bad-body", f"meter {body['meter_id']} has no credit account") from None
    except psycopg2.errors.UniqueViolation:
        raise Problem("conflict", f"reference {body['reference']!r} was used for another "
                                  "top-up") from None
    except ValueError as exc:  # psycopg2 refuses a string with NUL before sending it
        raise Problem("bad-body", _why(exc)) from None
    topup_id, created, balance, entry_id, created_at = rows[0]
    return {"topup_id": topup_id, "meter_id": body["meter_id"], "amount": body["amount"],
            "reference": body["reference"], "balance": balance, "entry_id": entry_id,
            "created_at": rfc3339(created_at), "replayed": not created}


# -- ledger -------------------------------------------------------------------------------

ENTRY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["entry_id", "meter_id", "kind", "amount", "balance_after", "energy_wh",
                 "tariff_id", "edge_id", "first_seq", "last_seq", "first_interval_end",
                 "last_interval_end", "readings", "day", "topup_id", "created_at"],
    "properties": {
        "entry_id": {"type": "integer"}, "meter_id": {"type": "integer"},
        "kind": {"type": "string", "enum": ["topup", "energy", "standing"]},
        "amount": {"type": "integer", "description": "+ top-up, - charge (minor units)."},
        "balance_after": {"type": "integer"},
        "energy_wh": {"type": ["integer", "null"]},
        "tariff_id": {"type": ["integer", "null"]},
        "edge_id": {"type": ["string", "null"]},
        "first_seq": {"type": ["integer", "null"]}, "last_seq": {"type": ["integer", "null"]},
        "first_interval_end": {"type": ["string", "null"], "format": "date-time"},
        "last_interval_end": {"type": ["string", "null"], "format": "date-time"},
        "readings": {"type": ["integer", "null"]},
        "day": {"type": ["string", "null"], "format": "date"},
        "topup_id": {"type": ["integer", "null"]}, "created_at": _TS,
    },
}
_LEDGER_SQL = """
SELECT entry_id, meter_id, kind, amount, balance_after, energy_wh, tariff_id, edge_id,
       first_seq, last_seq, first_interval_end, last_interval_end, readings, day, topup_id,
       created_at
  FROM ledger
 WHERE meter_id = %(meter_id)s AND (%(after)s::bigint IS NULL OR entry_id > %(after)s)
 ORDER BY entry_id LIMIT %(limit)s
"""


def _entry(row: tuple[Any, ...]) -> dict[str, Any]:
    names = ENTRY["required"]
    out = dict(zip(names, row, strict=True))
    for key in ("first_interval_end", "last_interval_end", "created_at"):
        out[key] = rfc3339(out[key])
    out["day"] = out["day"].isoformat() if out["day"] else None
    return out


async def ledger(call: Call) -> Any:
    meter_id = call.path["meter_id"]
    await _visible_account(call, meter_id)
    query, after = paging.after({**call.query, "meter": meter_id}, "ledger", [int])
    limit = call.query["limit"]
    rows = await call.db.rows(_LEDGER_SQL, {"meter_id": meter_id, "limit": limit + 1,
                                            "after": after[0] if after else None})
    return paging.page(rows, limit, query, lambda r: [r[0]], _entry)


TARIFF_PATH = Param("tariff_id", "integer", "Tariff id.", where="path", minimum=1,
                    maximum=2**62)


def operations(config: ApiConfig) -> list[Operation]:
    pages = page_params(config.max_page)
    return [
        Operation("POST", "/v1/customers", "createCustomer", "Create a customer",
                  create_customer, scope="write", body=CUSTOMER_BODY, response=CUSTOMER,
                  status=201),
        Operation("GET", "/v1/customers", "listCustomers", "Customers", list_customers,
                  params=pages, response=paging.schema(CUSTOMER)),
        Operation("POST", "/v1/tariffs", "createTariff",
                  "Create a tariff (time-of-use bands, standing charge)", create_tariff,
                  scope="write", body=TARIFF_BODY, response=TARIFF, status=201),
        Operation("GET", "/v1/tariffs", "listTariffs", "Tariffs and their versions",
                  list_tariffs, params=pages, response=paging.schema(TARIFF)),
        Operation("GET", "/v1/tariffs/{tariff_id}", "getTariff", "One tariff", one_tariff,
                  params=(TARIFF_PATH,), response=TARIFF),
        Operation("POST", "/v1/tariffs/{tariff_id}/versions", "addTariffVersion",
                  "Change a tariff from a given instant on (e.g. mid-day)", add_version,
                  scope="write", params=(TARIFF_PATH,), body=VERSION_BODY, response=TARIFF,
                  status=201),
        Operation("POST", "/v1/accounts", "createAccount",
                  "Make a meter prepaid: its customer, tariff and low-balance threshold",
                  create_account, scope="write", body=ACCOUNT_BODY, response=ACCOUNT,
                  status=201),
        Operation("GET", "/v1/accounts", "listAccounts", "Prepaid accounts and balances",
                  list_accounts,
                  params=page_params(config.max_page, (
                      Param("customer_id", "integer", "Only this customer's accounts.",
                            minimum=1, maximum=2**62),)),
                  response=paging.schema(ACCOUNT)),
        Operation("GET", "/v1/meters/{meter_id}/account", "getAccount",
                  "One meter's prepaid account and balance", one_account,
                  params=(METER_PATH,), response=ACCOUNT),
        Operation("POST", "/v1/topups", "createTopup",
                  "Add credit (idempotent by reference)", create_topup, scope="write",
                  body=TOPUP_BODY, response=TOPUP, status=201),
        Operation("GET", "/v1/meters/{meter_id}/ledger", "listLedger",
                  "Every change of a meter's balance, oldest first", ledger,
                  params=page_params(config.max_page, (METER_PATH,)),
                  response=paging.schema(ENTRY)),
    ]
