"""Errors as RFC 9457 problem details (``application/problem+json``) with stable types.

Why a closed list: a client branches on ``type``, so each kind of error has one
URI that never changes, and the OpenAPI document lists them.  A handler raises
:class:`Problem`; the route layer turns it into the response.  Anything else a
handler raises is a bug: it is logged and answered with a bare 500 problem that
leaks nothing.

Tests: tests/cloud/test_api_bad_input.py, tests/cloud/test_api_auth.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MEDIA_TYPE = "application/problem+json"

#: The base of every problem type URI (documented in docs/api.md, "Errors").
TYPE_BASE = "https://gridedge.example/problems/"

#: type slug -> (HTTP status, title)
TYPES: dict[str, tuple[int, str]] = {
    "bad-request": (400, "The request is malformed"),
    "bad-parameter": (400, "A query parameter is invalid"),
    "bad-cursor": (400, "The cursor does not belong to this query"),
    "bad-body": (400, "The request body is not acceptable JSON"),
    "unauthorized": (401, "A valid API key is required"),
    "forbidden": (403, "The API key lacks the scope this needs"),
    "not-found": (404, "No such resource"),
    "method-not-allowed": (405, "The method is not allowed here"),
    "not-acceptable": (406, "No acceptable representation"),
    "conflict": (409, "The resource already exists"),
    "body-too-large": (413, "The request body is too large"),
    "unsupported-media-type": (415, "The body's media type is not the one this needs"),
    "bad-bundle": (422, "The update bundle was refused"),
    "rate-limited": (429, "Too many requests for this key"),
    "internal": (500, "Internal error"),
    "not-configured": (501, "Not configured on this server"),
    "unavailable": (503, "The database is unavailable"),
}


@dataclass
class Problem(Exception):
    """An error answer: ``kind`` is a TYPES slug, ``detail`` says what exactly."""

    kind: str
    detail: str = ""
    #: extra HTTP headers (Retry-After, WWW-Authenticate)
    headers: dict[str, str] = field(default_factory=dict)
    #: extension members of the problem object (e.g. the offending parameter)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TYPES:
            raise ValueError(f"unknown problem type {self.kind!r}")

    @property
    def status(self) -> int:
        return TYPES[self.kind][0]

    def body(self, instance: str) -> bytes:
        """The problem document, for the request path ``instance``."""
        doc: dict[str, Any] = {
            "type": TYPE_BASE + self.kind,
            "title": TYPES[self.kind][1],
            "status": self.status,
        }
        if self.detail:
            doc["detail"] = self.detail
        doc["instance"] = instance
        doc.update(self.extra)
        return json.dumps(doc).encode()


def schema() -> dict[str, Any]:
    """The JSON Schema of a problem document (for the OpenAPI document)."""
    return {
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string", "enum": [TYPE_BASE + k for k in TYPES]},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "parameter": {"type": "string"},
        },
    }
