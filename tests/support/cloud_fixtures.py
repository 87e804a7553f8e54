"""Fixtures of the tests that run a real CloudService (a pytest plugin): a test PKI, the
Twisted log of the test, and the service itself on a loopback port.

tests/cloud and tests/system/test_certificates.py take them; both make ``logs`` apply to every
test of theirs, so that an unhandled error logged during a test fails it.

Tests: tests/cloud/, tests/system/test_certificates.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from gridcloud.server import CloudService

from support.cloud_harness import CloudPKI, LogCapture, capture_logs, make_pki, start_cloud


@pytest.fixture
def cloud_pki(tmp_path: Path) -> CloudPKI:
    """A fresh project CA, server certificate, and a folder for edge certificates."""
    return make_pki(tmp_path)


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Twisted log lines emitted during the test; an unhandled error in them fails it."""
    yield from capture_logs()


@pytest_twisted.async_yield_fixture
async def cloud(cloud_pki: CloudPKI, pg_dsn: str) -> AsyncIterator[CloudService]:
    """A CloudService with default settings on a loopback port, over a migrated database."""
    from twisted.internet import reactor

    service = await start_cloud(reactor, cloud_pki, pg_dsn)
    yield service
    await service.stopService()
