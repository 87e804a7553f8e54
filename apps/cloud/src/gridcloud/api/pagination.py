"""Opaque cursors for keyset pagination, bound to the query that made them.

Why keyset and not OFFSET: a page is "the next ``limit`` rows after this
position" in a total order, so it costs the same at row 10 million as at row 1
and is stable under inserts (new rows never shift pages already read).

A cursor is base64url JSON of ``[query, position...]``, where ``query`` is a
short hash of the operation and its filters.  A cursor used with another query
(other filters, another resource) is a 400 problem, not a silently wrong page.
It is not signed: the position only says where to resume within what the key
may see anyway, every value is checked against the type it must have and goes
to PostgreSQL as a bound parameter, and no secret has to be shared by the N API
processes behind the load balancer.

Tests: tests/cloud/test_api_bad_input.py, tests/cloud/test_api_resources.py.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from .problems import Problem


def fingerprint(operation: str, filters: Mapping[str, Any]) -> str:
    """A short hash of the operation and its filters (not the cursor and limit)."""
    canonical = json.dumps(
        [operation, sorted((k, str(v)) for k, v in filters.items()
                           if k not in ("cursor", "limit") and v is not None)]
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


def encode(query: str, position: Sequence[Any]) -> str:
    """The cursor for resuming ``query`` after ``position``."""
    raw = json.dumps([query, *map(_plain, position)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str, query: str, kinds: Sequence[type]) -> tuple[Any, ...]:
    """The position in ``cursor``, checked to belong to ``query`` and to have ``kinds``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise Problem("bad-cursor", "the cursor is not one this API made") from None
    if not isinstance(data, list) or len(data) != len(kinds) + 1 or data[0] != query:
        raise Problem("bad-cursor", "the cursor was made by another query")
    position = []
    for value, kind in zip(data[1:], kinds, strict=True):
        if kind is datetime.datetime:
            try:
                value = datetime.datetime.fromisoformat(value)
            except (TypeError, ValueError):
                raise Problem("bad-cursor", "the cursor is damaged") from None
        elif not _fits(value, kind):
            raise Problem("bad-cursor", "the cursor is damaged")
        position.append(value)
    return tuple(position)


def _fits(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or not isinstance(value, kind):
        return False
    return not isinstance(value, int) or -(2**63) <= value < 2**63
