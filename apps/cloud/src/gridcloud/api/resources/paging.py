"""One page of a keyset-paginated list: ``limit`` items and the cursor of the next page.

Tests: tests/cloud/test_api_resources.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from .. import pagination
from ..routes import Encoded

#: The cursor types of a position: what pagination.decode checks
Kinds = Sequence[type]


def after(
    call_query: dict[str, Any], operation: str, kinds: Kinds
) -> tuple[str, tuple[Any, ...] | None]:
    """The query's fingerprint and the position its cursor resumes after (None: the start)."""
    query = pagination.fingerprint(operation, call_query)
    cursor = call_query.get("cursor")
    return query, (pagination.decode(cursor, query, kinds) if cursor else None)


def page(
    rows: Sequence[tuple[Any, ...]],
    limit: int,
    query: str,
    position: Callable[[tuple[Any, ...]], Sequence[Any]],
    item: Callable[[tuple[Any, ...]], dict[str, Any]],
) -> dict[str, Any]:
    """``{"items": [...], "next": cursor or null}`` from up to ``limit + 1`` rows."""
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "items": [item(r) for r in rows],
        "next": pagination.encode(query, position(rows[-1])) if more else None,
    }


def encoded_page(rows: Sequence[tuple[Any, ...]], limit: int, query: str) -> Encoded:
    """The page of up to ``limit + 1`` rows of (item's JSON text, *position), as JSON bytes:
    the items are joined as PostgreSQL wrote them, never parsed."""
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = json.dumps(pagination.encode(query, rows[-1][1:])) if more else "null"
    body = '{"items":[' + ",".join(r[0] for r in rows) + '],"next":' + cursor + "}"
    return Encoded(body.encode())


def schema(item: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a page of ``item``."""
    return {
        "type": "object",
        "required": ["items", "next"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": item},
            "next": {"type": ["string", "null"],
                     "description": "Cursor of the next page; null on the last page."},
        },
    }
