"""Fixtures of the cloud tests: a test PKI, captured logs, a running CloudService."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_twisted
from cloud_harness import CloudPKI, LogCapture, capture_logs, make_pki, start_cloud
from gridcloud.server import CloudService


@pytest.fixture
def cloud_pki(tmp_path: Path) -> CloudPKI:
    """A fresh project CA, server certificate, and a folder for edge certificates."""
    return make_pki(tmp_path)


@pytest.fixture(autouse=True)
def logs() -> Iterator[LogCapture]:
    """Twisted log lines emitted during the test."""
    yield from capture_logs()


@pytest_twisted.async_yield_fixture
async def cloud(cloud_pki: CloudPKI, pg_dsn: str) -> AsyncIterator[CloudService]:
    """A CloudService with default settings on a loopback port, over a migrated database."""
    from twisted.internet import reactor

    service = await start_cloud(reactor, cloud_pki, pg_dsn)
    yield service
    await service.stopService()
