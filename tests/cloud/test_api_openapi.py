"""The OpenAPI document is served without a key and matches the routes one for one."""

from __future__ import annotations

import re

from gridcloud.api.config import ApiConfig
from gridcloud.api.service import ApiService
from twisted.internet import task

from support.api_harness import ApiProcess


def served_routes() -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every rule in the Klein app's URL map."""
    service = ApiService(task.Clock(), ApiConfig(dsn="dbname=unused"))  # never started
    found = set()
    for rule in service.api.app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((method, path))
    return found


def test_every_route_is_documented_and_every_documented_route_served(api: ApiProcess) -> None:
    r = api.get("/v1/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served_routes()
    assert len(documented) >= 10


def test_every_operation_documents_its_errors_as_problems(api: ApiProcess) -> None:
    doc = api.get("/v1/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "400" in op["responses"] and "500" in op["responses"], (method, path)
            if op["security"]:
                assert {"401", "403", "429"} <= set(op["responses"]), (method, path)
            assert op["responses"]["400"]["content"]["application/problem+json"]
