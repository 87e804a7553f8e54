"""Schemathesis over every operation of the real ``gridcloud api`` with real, ingested data:
no 5xx, and every response (status, media type, body, headers) conforms to the document.

Each operation is driven with Hypothesis directly (``APIOperation.as_strategy``), both with
data the document allows and with data it forbids (which must be a 4xx, never a 5xx).
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks
from schemathesis.specs.openapi import checks as openapi_checks

from support.api_harness import ApiProcess, World

CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.response_headers_conformance,
]


def operations(api: ApiProcess) -> list[Any]:
    schema = schemathesis.openapi.from_url(api.url + "/v1/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_conforms(api: ApiProcess, world: World, mode: GenerationMode) -> None:
    ops = operations(api)
    assert len(ops) >= 10
    headers = {"Authorization": f"Bearer {world.admin}"}
    for op in ops:
        conforms(op, mode, headers)()


def conforms(op: Any, mode: GenerationMode, headers: dict[str, str]) -> Any:
    """The Hypothesis test of one operation."""
    feed = op.path == "/v1/feed"

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=20, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def test(case: schemathesis.Case) -> None:
        if feed and (mode is GenerationMode.POSITIVE or "wait" not in (case.query or {})):
            case.query = {**(case.query or {}), "wait": 0}  # an answer that ends
        case.call_and_validate(headers=headers, checks=CHECKS)

    return test
