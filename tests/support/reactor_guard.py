"""The shared reactor's guard (a pytest plugin): a test that leaves a dead descriptor registered
with the session's one reactor fails, and not some later test that hangs.

Every test of the session runs on the same global reactor (pytest-twisted). When a descriptor is
closed behind the reactor's back (a socket or a connection closed without ``removeReader`` /
``removeWriter``, or a transport whose ``connectionLost`` never ran), the kernel drops it from the
epoll set but the reactor still counts its number as watched. The next socket that gets that
number is then never registered (``addReader`` believes it already is) and never wakes the
reactor: a later, innocent test waits forever.

After each test's teardown (its fixtures of every scope that ends there included), every
descriptor the reactor counts as watched is checked against the kernel's own list for the epoll
instance (``/proc/self/fdinfo``): its selectable must still answer the same ``fileno()``, and the
kernel must still watch that number, on the same file. A stale entry fails the test that left it
(an error in its teardown, naming the selectable), and is removed from the reactor so that the
rest of the session runs on a sound reactor. It costs a read of one small /proc file per test.

Tests: tests/test_reactor_guard.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Generator
from typing import Any

import pytest

_TFD = re.compile(r"^tfd:\s*(\d+)\s.*\bino:([0-9a-f]+)", re.MULTILINE)


class StaleRegistration(AssertionError):
    """The reactor watches a descriptor that is closed, or that is no longer its selectable's."""


def _kernel_watched(epoll_fd: int) -> dict[int, int] | None:
    """Descriptor number -> inode of every file the kernel's epoll instance watches; None where
    /proc cannot say."""
    try:
        with open(f"/proc/self/fdinfo/{epoll_fd}") as info:
            text = info.read()
    except OSError:
        return None
    return {int(fd): int(ino, 16) for fd, ino in _TFD.findall(text)}


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def stale_registrations(reactor: Any) -> list[tuple[int, Any, str]]:
    """(fd, selectable, why) for each descriptor ``reactor`` watches that is dead or no longer
    the one its selectable holds. Empty for reactors that do not keep such tables."""
    selectables = getattr(reactor, "_selectables", None)
    reads = getattr(reactor, "_reads", None)
    writes = getattr(reactor, "_writes", None)
    if not isinstance(selectables, dict) or reads is None or writes is None:
        return []
    poller = getattr(reactor, "_poller", None)
    kernel = None
    if poller is not None and type(poller).__name__ == "epoll":
        kernel = _kernel_watched(poller.fileno())
    found = []
    for fd in sorted(set(reads) | set(writes)):
        selectable = selectables.get(fd)
        try:
            current = selectable.fileno() if selectable is not None else None
        except Exception as e:  # a closed psycopg2 connection raises, a socket returns -1
            current = None
            why = f"its fileno() raises {type(e).__name__}: {e}"
        else:
            why = f"its fileno() is now {current}"
        if current != fd:
            found.append((fd, selectable, why))
            continue
        inode = _inode(fd)
        if inode is None:
            found.append((fd, selectable, "the descriptor is closed"))
        elif kernel is not None and fd not in kernel:
            found.append((fd, selectable, "the descriptor was closed and its number reused "
                                          "(epoll no longer watches it)"))
        elif kernel is not None and kernel[fd] != inode:
            found.append((fd, selectable, "epoll watches another file under that number"))
    return found


def forget(reactor: Any, fd: int) -> None:
    """Take ``fd`` out of the reactor's tables (and out of epoll if it is there)."""
    for table in (reactor._reads, reactor._writes):
        if isinstance(table, set):
            table.discard(fd)
        else:
            table.pop(fd, None)
    reactor._selectables.pop(fd, None)
    poller = getattr(reactor, "_poller", None)
    if poller is not None:
        with contextlib.suppress(OSError, KeyError, ValueError):
            poller.unregister(fd)


def check_reactor() -> None:
    """Raise StaleRegistration (after cleaning them up) if the global reactor watches dead
    descriptors."""
    if "twisted.internet.reactor" not in sys.modules:
        return
    from twisted.internet import reactor

    stale = stale_registrations(reactor)
    if not stale:
        return
    for fd, _selectable, _why in stale:
        forget(reactor, fd)
    raise StaleRegistration(
        "this test left the shared reactor watching dead descriptors (a later test binding "
        "that number would never be woken):\n"
        + "\n".join(f"  fd {fd}: {selectable!r} ({type(selectable).__module__}."
                    f"{type(selectable).__qualname__}): {why}"
                    for fd, selectable, why in stale))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[
        None, None, None]:
    result = yield
    check_reactor()
    return result
