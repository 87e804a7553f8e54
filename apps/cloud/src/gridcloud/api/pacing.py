"""Flow control of a streamed response: wait while the client's socket is full.

Registered as the request's push producer, a :class:`Pacer` is paused by
Twisted when the transport's buffer is full and resumed when it drains; the
streaming code awaits :meth:`Pacer.ready` after each write, so a slow client
slows the stream down instead of filling the API's memory.  ``stopped`` turns
true when the client goes away.

Tests: tests/cloud/test_api_csv.py, tests/cloud/test_api_feed.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class Pacer:
    """The streaming side of a request's flow control: paused, resumed, or stopped."""

    def __init__(self, request: Any) -> None:
        self.stopped = False
        self._waiting: defer.Deferred[None] | None = None
        self._gone: list[defer.Deferred[None]] = []
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(lambda _: self.stopProducing())

    def pauseProducing(self) -> None:
        if self._waiting is None:
            self._waiting = defer.Deferred()

    def resumeProducing(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()
        gone, self._gone = self._gone, []
        for d in gone:
            d.callback(None)

    def ready(self) -> defer.Deferred[None]:
        """Fires when the client can take more (at once if it can now)."""
        return self._waiting if self._waiting is not None else defer.succeed(None)

    def gone(self) -> defer.Deferred[None]:
        """Fires when the client has gone away."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.stopped:
            d.callback(None)
        else:
            self._gone.append(d)
        return d
