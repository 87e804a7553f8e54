"""``/v1/openapi.json``: the OpenAPI document of the API, served without a key.

Tests: tests/cloud/test_api_openapi.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import ApiConfig
from ..openapi import document
from ..routes import Call, Operation


def operation(others: Sequence[Operation], config: ApiConfig) -> Operation:
    """The operation serving the document of ``others`` and of itself."""
    built: list[dict[str, Any]] = []

    async def serve(call: Call) -> Any:
        return built[0]

    op = Operation("GET", "/v1/openapi.json", "getOpenApi", "This API's OpenAPI 3.1 document",
                   serve, scope=None, response={"type": "object"})
    built.append(document([*others, op], config.public_url))
    return op
