"""A lean HTTP/1.1 keep-alive client for benchmarks, in the caller's Twisted reactor.

Why not twisted.web's ``Agent`` + ``readBody``: per request they build a ``Request``,
``Headers``, a producer, a response object, a body protocol and several Deferred chains,
which cost the client more Python than a bare twisted.web server spends answering.  A
latency measured with them counts that client time against the server, and a load
generator (wrk, h2load) would not.  Here a request is bytes formatted once by the caller
and written to a persistent connection; the answer is parsed by :class:`ResponseParser`
(sans-IO: status line, headers, then a Content-Length or chunked body) and handed over
whole, status and body, when its last byte arrives.

:class:`ConnectionPool` keeps persistent connections per ``host:port`` and opens another
when every one is busy, so an open-loop driver's requests never queue behind each other
on the client side.  Only what the benchmarks send is supported: GET without a body,
answers without ``1xx``, no pipelining (one request in flight per connection).

Tests: tests/test_bench_http_client.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, endpoints, protocol
from twisted.python.failure import Failure


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it."""


def get_request(host: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of ``GET path`` (keep-alive), formatted once and sent as they are."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ResponseParser:
    """One response at a time, fed as bytes arrive: :meth:`feed` returns ``(status, body)``
    once the response is complete, else None.  Bytes past the end are an error (nothing
    was pipelined)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        #: whether the server will close the connection after this response
        self.closing = False
        self._length: int | None = None  # Content-Length; None: chunked
        self._in_head = True
        self._chunk: int | None = None  # size of the chunk being read
        self._body = bytearray()

    def feed(self, data: bytes) -> tuple[int, bytes] | None:
        buffer = self._buffer
        buffer += data
        if self._in_head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return None
            self._head(bytes(buffer[:end]))
            del buffer[:end + 4]
        if self._length is not None:
            if len(buffer) < self._length:
                return None
            if len(buffer) > self._length:
                raise ProtocolError("bytes after the response's body")
            body = bytes(buffer)
            buffer.clear()
            return self._done(body)
        return self._chunked()

    def _head(self, head: bytes) -> None:
        status_line, *fields = head.split(b"\r\n")
        version, _, rest = status_line.partition(b" ")
        if version != b"HTTP/1.1":
            raise ProtocolError(f"not an HTTP/1.1 status line: {status_line!r}")
        self.status = int(rest[:3])
        chunked = False
        for field in fields:
            name, _, value = field.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                self._length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.strip().lower() == b"chunked"
            elif name == b"connection":
                self.closing = value.strip().lower() == b"close"
        if chunked:
            self._length = None
        elif self._length is None:
            raise ProtocolError("neither Content-Length nor chunked: cannot find the end")
        self._in_head = False

    def _chunked(self) -> tuple[int, bytes] | None:
        buffer = self._buffer
        at = 0
        while True:
            if self._chunk is None:
                eol = buffer.find(b"\r\n", at)
                if eol < 0:
                    break
                size = int(bytes(buffer[at:eol]).split(b";")[0], 16)
                if size == 0:  # the last chunk: then the final CRLF (no trailers are sent)
                    if len(buffer) < eol + 4:
                        break  # keep its size line until the CRLF is here too
                    if buffer[eol + 2:] != b"\r\n":
                        raise ProtocolError("trailers or bytes after the last chunk")
                    buffer.clear()
                    return self._done(bytes(self._body))
                at = eol + 2
                self._chunk = size
            if len(buffer) - at < self._chunk + 2:
                break
            end = at + self._chunk
            if buffer[end:end + 2] != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")
            self._body += buffer[at:end]
            at = end + 2
            self._chunk = None
        del buffer[:at]
        return None

    def _done(self, body: bytes) -> tuple[int, bytes]:
        status = self.status
        self._reset()
        return status, body


class _Connection(protocol.Protocol):
    """One persistent connection: a request is written, its answer fires ``waiting``."""

    def __init__(self, pool: ConnectionPool, key: tuple[str, int]) -> None:
        self._pool = pool
        self._key = key
        self._parser = ResponseParser()
        self.waiting: defer.Deferred[tuple[int, bytes]] | None = None

    def request(self, data: bytes) -> defer.Deferred[tuple[int, bytes]]:
        self.waiting = defer.Deferred()
        self.transport.write(data)  # type: ignore[union-attr]
        return self.waiting

    def dataReceived(self, data: bytes) -> None:
        try:
            answer = self._parser.feed(data)
        except (ProtocolError, ValueError):
            self.transport.abortConnection()  # type: ignore[union-attr]
            raise
        if answer is None:
            return
        waiting, self.waiting = self.waiting, None
        if self._parser.closing:
            self.transport.loseConnection()  # type: ignore[union-attr]
        else:
            self._pool.idle(self._key, self)
        assert waiting is not None, "an answer nobody asked for"
        waiting.callback(answer)

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._pool.lost(self._key, self)
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.errback(reason)


class ConnectionPool:
    """Persistent connections per ``(host, port)``; a new one when all are busy."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._all: set[_Connection] = set()

    async def open(self, host: str, port: int, count: int) -> None:
        """Open ``count`` idle connections to ``host:port`` ahead of the requests."""
        key = (host, port)
        for _ in range(count):
            self.idle(key, await self._connect(key))

    def get(self, host: str, port: int, request: bytes) -> defer.Deferred[tuple[int, bytes]]:
        """Send ``request`` (from :func:`get_request`); fires with (status, body)."""
        key = (host, port)
        idle = self._idle.get(key)
        if idle:
            return idle.pop().request(request)
        return defer.ensureDeferred(self._fresh(key, request))

    async def _fresh(self, key: tuple[str, int], request: bytes) -> tuple[int, bytes]:
        connection = await self._connect(key)
        return await connection.request(request)

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        endpoint = endpoints.TCP4ClientEndpoint(self._reactor, *key)
        connection: _Connection = await endpoints.connectProtocol(
            endpoint, _Connection(self, key))
        connection.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        self._all.add(connection)
        return connection

    def idle(self, key: tuple[str, int], connection: _Connection) -> None:
        self._idle.setdefault(key, []).append(connection)

    def lost(self, key: tuple[str, int], connection: _Connection) -> None:
        self._all.discard(connection)
        idle = self._idle.get(key, [])
        if connection in idle:
            idle.remove(connection)

    def close(self) -> None:
        """Close every connection."""
        for connection in list(self._all):
            connection.transport.loseConnection()  # type: ignore[union-attr]
