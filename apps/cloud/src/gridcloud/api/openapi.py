"""The OpenAPI 3.1 document, built from the route table (gridcloud.api.routes).

Every operation's parameters, body, success and error responses come from the
same :class:`~gridcloud.api.routes.Operation` that serves it.

Tests: tests/cloud/test_api_openapi.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from . import problems
from .routes import JSON, Operation

TITLE = "gridcloud API"
VERSION = "1.0.0"


def document(operations: Sequence[Operation], public_url: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document describing ``operations``."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "HTTP API of the gridedge cloud for internal systems. "
                           "Guide: docs/api.md.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Problem": problems.schema()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if public_url:
        doc["servers"] = [{"url": public_url}]
    return doc


def _operation(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.params:
        out["parameters"] = [p.document() for p in op.params]
    out["security"] = [{"bearer": []}] if op.scope is not None else []
    if op.scope is not None:
        out["x-scope"] = op.scope
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {op.body_media: {"schema": op.body}}}
    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": HTTPStatus(op.status).phrase}
    if op.status != 204:
        content = {JSON: {"schema": op.response}}
        for media in op.media:
            content[media] = {"schema": {"type": "string"}}
        success["content"] = content
    responses[str(op.status)] = success
    problem = {problems.MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for code in op.error_statuses:
        responses[str(code)] = {"description": HTTPStatus(code).phrase, "content": problem}
    out["responses"] = responses
    return out
