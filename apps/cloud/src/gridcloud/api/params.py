"""Query and path parameters: one declaration both parses requests and documents them.

Why declarative: the OpenAPI document (gridcloud.api.openapi) is built from the
same :class:`Param` objects that check each request, so the two cannot drift.
Everything is refused that the declaration does not allow: unknown or repeated
parameters, values out of range, times without a zone.  Each refusal is a 400
problem naming the parameter.

Tests: tests/cloud/test_api_bad_input.py.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .problems import Problem

#: Edge ids as gridcloud.pki allows them (letters, digits, dot, dash, underscore).
EDGE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: The oldest and newest instants accepted in a time filter.
EARLIEST = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
LATEST = datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: ``kind`` is "string", "integer" or "date-time"."""

    name: str
    kind: str
    description: str
    where: str = "query"  # or "path"
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    default: int | None = None

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any]
        if self.kind == "integer":
            s = {"type": "integer"}
            if self.minimum is not None:
                s["minimum"] = self.minimum
            if self.maximum is not None:
                s["maximum"] = self.maximum
            if self.default is not None:
                s["default"] = self.default
        elif self.kind == "date-time":
            s = {"type": "string", "format": "date-time"}
        else:
            s = {"type": "string"}
            if self.pattern:
                s["pattern"] = self.pattern
            if self.enum:
                s["enum"] = list(self.enum)
        return s

    def document(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "description": self.description,
            "schema": self.schema(),
        }

    def parse(self, text: str) -> Any:
        """The value of ``text``, or a bad-parameter Problem saying why not."""
        if self.kind == "integer":
            if not re.fullmatch(r"-?[0-9]{1,19}", text):
                raise self._bad("must be an integer")
            value = int(text)
            if self.minimum is not None and value < self.minimum:
                raise self._bad(f"must be at least {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise self._bad(f"must be at most {self.maximum}")
            return value
        if self.kind == "date-time":
            return parse_time(text, self)
        if self.pattern and not re.fullmatch(self.pattern.strip("^$"), text):
            raise self._bad(f"must match {self.pattern}")
        if self.enum and text not in self.enum:
            raise self._bad(f"must be one of {', '.join(self.enum)}")
        return text

    def _bad(self, why: str) -> Problem:
        return Problem("bad-parameter", f"{self.name}: {why}", extra={"parameter": self.name})


def parse_time(text: str, param: Param) -> datetime.datetime:
    """An RFC 3339 date-time with a zone (``Z`` or an offset), as UTC."""
    if not re.fullmatch(
        r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,6})?([Zz]|[+-]\d\d:\d\d)", text
    ):
        raise param._bad("must be an RFC 3339 date-time with a zone, e.g. 2026-11-17T00:00:00Z")
    try:
        value = datetime.datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError:
        raise param._bad("is not a valid date-time") from None
    value = value.astimezone(datetime.UTC)
    if not EARLIEST <= value < LATEST:
        raise param._bad("is out of range")
    return value


def parse_query(args: Mapping[bytes, Sequence[bytes]], params: Sequence[Param]) -> dict[str, Any]:
    """The query parameters of a request checked against ``params`` (defaults filled in)."""
    known = {p.name: p for p in params if p.where == "query"}
    values: dict[str, Any] = {}
    for raw_name, raw_values in args.items():
        name = raw_name.decode("utf-8", "replace")
        param = known.get(name)
        if param is None:
            raise Problem("bad-parameter", f"unknown query parameter {name!r}",
                          extra={"parameter": name})
        if len(raw_values) != 1:
            raise param._bad("given more than once")
        try:
            text = raw_values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise param._bad("is not UTF-8") from None
        values[name] = param.parse(text)
    for param in known.values():
        if param.name not in values:
            if param.required:
                raise param._bad("is required")
            values[param.name] = param.default
    return values


def time_range(values: Mapping[str, Any]) -> None:
    """Refuse a ``from`` that is not before ``to`` (both optional)."""
    start, end = values.get("from"), values.get("to")
    if start is not None and end is not None and start >= end:
        raise Problem("bad-parameter", "from must be before to", extra={"parameter": "from"})


def rfc3339(value: datetime.datetime | None) -> str | None:
    """A timestamp as RFC 3339 UTC with ``Z`` (microseconds only when there are any)."""
    if value is None:
        return None
    return value.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def page_params(max_page: int, extra: Sequence[Param] = ()) -> tuple[Param, ...]:
    """``limit`` and ``cursor``, and ``extra``: the parameters of every paged list."""
    return (
        *extra,
        Param("limit", "integer", "Items per page.", minimum=1, maximum=max_page,
              default=min(100, max_page)),
        Param("cursor", "string", "The `next` cursor of the previous page (opaque).",
              pattern=r"^[A-Za-z0-9_-]{1,512}$"),
    )


FROM = Param("from", "date-time", "Start of the time range (inclusive), RFC 3339.")
TO = Param("to", "date-time", "End of the time range (exclusive), RFC 3339.")
EDGE_PATH = Param("edge_id", "string", "Edge id.", where="path", pattern=EDGE_ID_PATTERN)
METER_PATH = Param("meter_id", "integer", "Meter radio address.", where="path",
                   minimum=0, maximum=2**32 - 1)
