"""The route table: each :class:`Operation` is served by Klein and described in OpenAPI.

Why one table: the document at ``/v1/openapi.json`` (gridcloud.api.openapi) is
built from the very objects that route, authenticate and check each request,
and a test compares the two, so a route cannot go undocumented.

Every request goes through the same steps (:meth:`Api.handle`): the key
(401), the per-key rate limit (429), the scope (403), the parameters and body
(400/413/415), then the operation's handler.  A handler returns a JSON value,
an :class:`Encoded` body (JSON written by PostgreSQL), or :data:`STREAMED` when it
wrote the body itself (CSV, the feed).  Errors are
problem details (gridcloud.api.problems); an exception that is not a
:class:`Problem` is logged and answered with a bare 500.

Tests: tests/cloud/test_api_auth.py, tests/cloud/test_api_bad_input.py,
tests/cloud/test_api_openapi.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2
from klein import Klein
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from txpostgres import txpostgres
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ..connection import StoreUnavailable
from . import keys, problems
from .auth import Authenticator
from .config import ApiConfig
from .database import Database
from .params import Param, parse_query, parse_time
from .problems import Problem
from .ratelimit import RateLimiter, retry_after

log = Logger(namespace="gridcloud.api")

JSON = "application/json"


class _Streamed:
    """The handler wrote (and finished writing) the response body itself."""


STREAMED = _Streamed()


@dataclass(frozen=True, slots=True)
class Encoded:
    """A handler's result already encoded as JSON (e.g. written by PostgreSQL): sent as is."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Caller:
    """The key a request came with: its name, scopes and the edges it may see (None: all)."""

    name: str
    scopes: tuple[str, ...]
    edges: tuple[str, ...] | None


@dataclass
class Call:
    """One request as a handler sees it: who, which parameters, which body, and the database."""

    #: the twisted.web Request
    request: Any
    caller: Caller
    query: dict[str, Any]
    path: dict[str, Any]
    body: Any
    db: Database
    config: ApiConfig
    clock: Any
    #: the key lookups (revoking a key through the API forgets it here)
    auth: Authenticator

    def accepts_csv(self) -> bool:
        accept = (self.request.getHeader("accept") or "").lower()
        return "text/csv" in accept

    def edges(self) -> list[str] | None:
        """The edges the caller may see, as a query parameter (None: every edge)."""
        return list(self.caller.edges) if self.caller.edges is not None else None


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Operation:
    """One method on one path: how it is served and how it is documented."""

    method: str
    #: OpenAPI path template, e.g. ``/v1/edges/{edge_id}``
    path: str
    operation_id: str
    summary: str
    handler: Handler
    #: the scope the key needs; None: no key (the OpenAPI document)
    scope: str | None = "read"
    params: tuple[Param, ...] = ()
    #: JSON Schema of the success response body
    response: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    #: JSON Schema of the request body (None: no body)
    body: dict[str, Any] | None = None
    #: other media types of the success response than JSON (text/csv, text/event-stream)
    media: tuple[str, ...] = ()
    description: str = ""
    #: the request body's media type; other than JSON, the handler gets the spooled body as
    #: a file (``call.body``) and checks its size itself (a bundle upload)
    body_media: str = JSON
    #: error statuses beyond the common ones (422: refused as it is; 409: not in this state)
    errors: tuple[int, ...] = ()

    @property
    def klein_path(self) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: f"<{m.group(1)}>", self.path)

    @property
    def error_statuses(self) -> tuple[int, ...]:
        codes = [400, 405, 406, 429, 500, 503]
        if self.scope is not None:
            codes += [401, 403]
        if any(p.where == "path" for p in self.params):
            codes.append(404)
        if self.body is not None:
            codes += [409, 413, 415]
        codes += self.errors
        return tuple(sorted(set(codes)))


class Api:
    """The Klein application of ``gridcloud api`` over ``operations``."""

    def __init__(
        self,
        operations: Sequence[Operation],
        db: Database,
        config: ApiConfig,
        clock: Any,
    ) -> None:
        self.operations = tuple(operations)
        self.db = db
        self.config = config
        self.clock = clock
        self.limiter = RateLimiter(config.rate_limit, config.rate_burst)
        self.auth = Authenticator(db, clock)
        self.app = Klein()
        for op in self.operations:
            self._register(op)
        self.app.handle_errors(NotFound)(self._not_found)
        self.app.handle_errors(MethodNotAllowed)(self._not_allowed)

    def resource(self) -> Any:
        return self.app.resource()

    def _register(self, op: Operation) -> None:
        def endpoint(request: Any, **path: str) -> Any:
            return defer.ensureDeferred(self.handle(op, request, path))

        self.app.route(op.klein_path, methods=[op.method], endpoint=op.operation_id,
                       strict_slashes=True)(endpoint)

    def _not_found(self, request: Any, failure: Failure) -> bytes:
        return _problem(request, Problem("not-found", "no such path"))

    def _not_allowed(self, request: Any, failure: Failure) -> bytes:
        return _problem(request, Problem("method-not-allowed"))

    async def handle(self, op: Operation, request: Any, raw_path: dict[str, str]) -> Any:
        """Authenticate, check, run the handler, and answer (a problem on any refusal)."""
        try:
            caller = await self._authenticate(op, request)
            path = {}
            for param in op.params:
                if param.where == "path":
                    try:
                        path[param.name] = param.parse(raw_path[param.name])
                    except Problem as exc:
                        raise Problem("not-found", exc.detail) from None
            query = parse_query(request.args or {}, op.params)
            body = self._body(op, request)
            call = Call(request, caller, query, path, body, self.db, self.config, self.clock,
                        self.auth)
            result = await op.handler(call)
        except Problem as exc:
            if request.startedWriting:  # cannot happen: handlers refuse before streaming
                raise
            return _problem(request, exc)
        except (StoreUnavailable, psycopg2.OperationalError, txpostgres.AlreadyConnected,
                ConnectionLost, ConnectionDone) as exc:
            if not isinstance(exc, StoreUnavailable):  # the pool logs its outages itself
                log.warn("database unavailable: {why}", why=str(exc).strip())
            if request.startedWriting:
                request.channel.transport.abortConnection()
                return None
            retry = exc.retry_after if isinstance(exc, StoreUnavailable) else 1
            return _problem(request, Problem("unavailable", headers={"Retry-After": str(retry)}))
        except defer.CancelledError:
            raise  # the client went away: nothing to answer
        except Exception:
            log.failure("request {method} {path} failed", method=op.method, path=op.path)
            if request.startedWriting:  # a stream broke half-way: the client must see it
                request.channel.transport.abortConnection()
                return None
            return _problem(request, Problem("internal"))
        if result is STREAMED:
            return None
        request.setResponseCode(op.status)
        if result is None:
            return b""
        request.setHeader("content-type", JSON)
        body = result.data if isinstance(result, Encoded) else json.dumps(result).encode()
        # Klein writes the body through request.write(): without a length it would be sent
        # chunked, which costs both sides a framing layer for nothing.
        request.setHeader("content-length", b"%d" % len(body))
        return body

    async def _authenticate(self, op: Operation, request: Any) -> Caller:
        if op.scope is None:
            return Caller("", (), None)
        header = request.getHeader("authorization") or ""
        scheme, _, token = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="gridcloud"'}
        if scheme.lower() != "bearer" or not token.strip():
            raise Problem("unauthorized", "send Authorization: Bearer <key>", headers=challenge)
        digest = keys.digest(token.strip())
        key = await self.auth.lookup(digest)
        if key is None:
            raise Problem("unauthorized", "unknown key", headers=challenge)
        if key.revoked:
            raise Problem("unauthorized", "this key was revoked", headers=challenge)
        now = self.clock.seconds()
        if key.expired(now):
            raise Problem("unauthorized", "this key has expired", headers=challenge)
        wait = self.limiter.take(digest, now)
        if wait:
            raise Problem("rate-limited", f"at most {self.config.rate_limit:g} requests/s",
                          headers={"Retry-After": retry_after(wait)})
        if op.scope not in key.scopes:
            raise Problem("forbidden", f"this needs a key with scope {op.scope!r}")
        return Caller(key.name, key.scopes, key.edges)

    def _body(self, op: Operation, request: Any) -> Any:
        # twisted.web has already received the body: into memory up to 100 kB, else into a
        # temporary file, so an oversized body costs disk, never the API's memory.
        content = request.content
        size = 0
        if content is not None:
            content.seek(0, 2)
            size = content.tell()
            content.seek(0)
        if op.body is None:
            if size:
                raise Problem("bad-body", "this operation takes no body")
            return None
        ctype = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if op.body_media != JSON:
            if ctype != op.body_media:
                raise Problem("unsupported-media-type", f"send Content-Type: {op.body_media}")
            return content
        if size > self.config.max_body_bytes:
            raise Problem("body-too-large", f"at most {self.config.max_body_bytes} bytes")
        if ctype != JSON:
            raise Problem("unsupported-media-type", "send Content-Type: application/json")
        assert content is not None
        try:
            value = json.loads(content.read(size))
        except (UnicodeDecodeError, ValueError) as exc:
            raise Problem("bad-body", f"malformed JSON: {exc}") from None
        check_body(value, op.body)
        return value


def check_body(value: Any, schema: dict[str, Any], prefix: str = "") -> None:
    """Check a JSON body against the small schema subset the API uses (objects of scalars,
    string arrays and objects of numbers, additionalProperties false); a bad-body Problem
    says what is wrong."""
    if not isinstance(value, dict):
        what = f"{prefix.rstrip('.')} must be" if prefix else "the body must be"
        raise Problem("bad-body", f"{what} a JSON object")
    props: dict[str, Any] = schema["properties"]
    unknown = sorted(set(value) - set(props))
    if unknown:
        raise Problem("bad-body", f"unknown field(s): {', '.join(prefix + u for u in unknown)}")
    for name in schema.get("required", ()):
        if name not in value:
            raise Problem("bad-body", f"missing field: {prefix}{name}")
    if len(value) < schema.get("minProperties", 0):
        raise Problem("bad-body", f"{prefix.rstrip('.')}: at least "
                      f"{schema['minProperties']} field(s)")
    for name, item in value.items():
        _check_value(prefix + name, item, props[name])


def _check_value(name: str, item: Any, spec: dict[str, Any]) -> None:
    kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    if item is None and "null" in kinds:
        return
    if "object" in kinds and isinstance(item, dict):
        check_body(item, spec, prefix=name + ".")
        return
    numeric = ("integer" in kinds and type(item) is int) or (
        "number" in kinds and type(item) in (int, float))
    if numeric:
        if item != item or item in (float("inf"), float("-inf")):
            raise Problem("bad-body", f"{name}: must be a finite number")
        if "minimum" in spec and item < spec["minimum"]:
            raise Problem("bad-body", f"{name}: must be at least {spec['minimum']}")
        if "maximum" in spec and item > spec["maximum"]:
            raise Problem("bad-body", f"{name}: must be at most {spec['maximum']}")
        return
    if "array" in kinds and isinstance(item, list):
        if "maxItems" in spec and len(item) > spec["maxItems"]:
            raise Problem("bad-body", f"{name}: at most {spec['maxItems']} items")
        for element in item:
            _check_value(name, element, spec["items"])
        if spec.get("uniqueItems") and len(set(item)) != len(item):
            raise Problem("bad-body", f"{name}: items must be unique")
        if "minItems" in spec and len(item) < spec["minItems"]:
            raise Problem("bad-body", f"{name}: at least {spec['minItems']} item(s)")
        return
    if "string" in kinds and isinstance(item, str):
        if "maxLength" in spec and len(item) > spec["maxLength"]:
            raise Problem("bad-body", f"{name}: at most {spec['maxLength']} characters")
        if "minLength" in spec and len(item) < spec["minLength"]:
            raise Problem("bad-body", f"{name}: at least {spec['minLength']} character(s)")
        if "enum" in spec and item not in spec["enum"]:
            raise Problem("bad-body", f"{name}: must be one of {', '.join(spec['enum'])}")
        if "pattern" in spec and not re.fullmatch(spec["pattern"].strip("^$"), item):
            raise Problem("bad-body", f"{name}: must match {spec['pattern']}")
        if spec.get("format") == "date-time":
            try:
                parse_time(item, Param(name, "date-time", ""))
            except Problem as exc:
                raise Problem("bad-body", exc.detail) from None
        return
    raise Problem("bad-body", f"{name}: must be {' or '.join(kinds)}")


def _problem(request: Any, problem: Problem) -> bytes:
    request.setResponseCode(problem.status)
    request.setHeader("content-type", problems.MEDIA_TYPE)
    for name, value in problem.headers.items():
        request.setHeader(name, value)
    body = problem.body(request.path.decode("utf-8", "replace"))
    request.setHeader("content-length", b"%d" % len(body))
    return body
