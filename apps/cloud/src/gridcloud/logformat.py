"""Log lines as text (for a terminal) or one JSON object a line (for a log pipeline).

Why JSON lines: an operator following one unit through several nodes, the API
and (later) commands and rollouts wants ``grep '"unit":"bbb-0001"'`` or
``jq 'select(.unit == "bbb-0001")'`` over every process's journal, not a
regular expression per message.  So each object carries the rendered message
and, lifted out of the event under fixed names, the ids an operator follows:

- ``unit``: the edge id (the server's events carry it as ``edge`` or ``edge_id``);
- ``command_id``, ``rollout_id``: when an event names them (commands and
  rollouts log them under these names).

The other fields are ``ts`` (ISO 8601 UTC), ``level``, ``logger`` (the
Twisted namespace), ``msg``, and ``error`` with the traceback for a logged
failure.  Chosen by ``--log-format json`` or ``GRIDCLOUD_LOG_FORMAT=json``
(docs/operations.md).

Tests: tests/cloud/test_cloud_logformat.py.
"""

from __future__ import annotations

import datetime
import json
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    formatEvent,
    textFileLogObserver,
)

FORMATS = ("text", "json")
ENV = "GRIDCLOUD_LOG_FORMAT"

#: event keys naming the unit, in order of preference
_UNIT_KEYS = ("edge_id", "edge", "unit")
#: event keys copied as they are
_ID_KEYS = ("command_id", "rollout_id")


def json_line(event: dict[str, Any]) -> str:
    """One log event as one JSON object and a newline."""
    when = event.get("log_time")
    record: dict[str, Any] = {
        "ts": datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(
            timespec="milliseconds") if when is not None else None,
        "level": getattr(event.get("log_level"), "name", "info"),
        "logger": event.get("log_namespace", ""),
        "msg": formatEvent(event),
    }
    for key in _UNIT_KEYS:
        value = event.get(key)
        if isinstance(value, str) and value:
            record["unit"] = value
            break
    for key in _ID_KEYS:
        if event.get(key) is not None:
            record[key] = str(event[key])
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def observer(stream: IO[str], fmt: str) -> ILogObserver:
    """The observer writing ``fmt`` ("text" or "json") lines to ``stream``."""
    if fmt == "json":
        return FileLogObserver(stream, json_line)
    if fmt == "text":
        return textFileLogObserver(stream)
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
