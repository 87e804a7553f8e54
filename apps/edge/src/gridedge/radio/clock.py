"""What the radio link's parts use of the reactor's time: ``seconds`` and ``callLater``.

Why a module of its own: every part of the link (poll scheduler, delivery
retries, relay commands) takes the clock as a parameter, so tests drive them
all with ``task.Clock``; these structural types say exactly what they may call.
They are ``typing.Protocol`` rather than the zope interfaces, so mypy checks
the calls.

Tests: tests/radio/test_link.py (every part runs on task.Clock there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Clock", "DelayedCall"]


class DelayedCall(Protocol):
    """What the link uses of twisted's DelayedCall."""

    def active(self) -> bool: ...
    def cancel(self) -> None: ...
    def getTime(self) -> float: ...


class Clock(Protocol):
    """What the link uses of IReactorTime (the reactor, or task.Clock in tests)."""

    def seconds(self) -> float: ...
    def callLater(
        self, delay: float, callable: Callable[..., object], *args: Any, **kw: Any
    ) -> DelayedCall: ...
