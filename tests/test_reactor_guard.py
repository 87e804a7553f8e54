"""The shared reactor's guard (tests/support/reactor_guard.py): it names a descriptor left
registered after its file was closed, whether its selectable knows it (a closed socket) or not
(a bare number whose file was closed and the number reused), takes it out of the reactor, and
says nothing about a reactor in order. Cheap enough to run after every test.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import abstract, defer, endpoints, protocol, reactor

from support import reactor_guard


class _Watched(abstract.FileDescriptor):
    """A reader on a descriptor given by number (as a serial port or a pty is)."""

    def __init__(self, fd: int) -> None:
        super().__init__(reactor)
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        pass


class _OnSocket(_Watched):
    """A reader that asks its socket for its number (as Twisted's transports do)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock.fileno())
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()


def _stale_fds() -> list[int]:
    return [fd for fd, _, _ in reactor_guard.stale_registrations(reactor)]


@pytest_twisted.ensureDeferred
async def test_a_reactor_in_order_has_nothing_stale() -> None:
    port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(protocol.Protocol))
    assert port.fileno() in reactor._reads  # type: ignore[attr-defined]
    assert _stale_fds() == []
    await port.stopListening()
    assert _stale_fds() == []
    reactor_guard.check_reactor()


def test_a_socket_closed_while_registered_fails_and_is_forgotten() -> None:
    sock = socket.socket()
    reader = _OnSocket(sock)
    fd = sock.fileno()
    reactor.addReader(reader)
    sock.close()
    with pytest.raises(reactor_guard.StaleRegistration, match=rf"fd {fd}: .*_OnSocket.*-1"):
        reactor_guard.check_reactor()
    assert reader not in reactor.getReaders()
    assert _stale_fds() == []


def test_a_number_closed_and_reused_behind_the_reactor_is_found() -> None:
    first, other = socket.socketpair()
    fd = os.dup(first.fileno())
    first.close()
    reactor.addReader(_Watched(fd))
    os.close(fd)
    again = socket.socket()  # most likely takes the number just freed
    try:
        assert _stale_fds() == [fd]
        with pytest.raises(reactor_guard.StaleRegistration, match=rf"fd {fd}: "):
            reactor_guard.check_reactor()
        assert _stale_fds() == []
    finally:
        again.close()
        other.close()


@pytest_twisted.ensureDeferred
async def test_after_forgetting_a_stale_number_a_new_port_on_it_is_served() -> None:
    """What the guard prevents: a listening port that takes the number of a dead registration
    would never be accepted on; once forgotten, it is."""
    sock = socket.socket()
    fd = sock.fileno()
    reactor.addReader(_OnSocket(sock))
    sock.close()
    with pytest.raises(reactor_guard.StaleRegistration):
        reactor_guard.check_reactor()
    accepted: defer.Deferred[None] = defer.Deferred()

    class Server(protocol.Protocol):
        def connectionMade(self) -> None:
            accepted.callback(None)

    port: Any = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Server))
    try:
        assert port.fileno() == fd  # the lowest free number: the one just forgotten
        client = await endpoints.connectProtocol(
            endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            protocol.Protocol())
        await accepted.addTimeout(10, reactor)  # the reactor accepted on the new port
        client.transport.loseConnection()
    finally:
        await port.stopListening()


def test_the_check_costs_well_under_a_millisecond() -> None:
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        reactor_guard.check_reactor()
    assert (time.perf_counter() - started) / rounds < 0.001
