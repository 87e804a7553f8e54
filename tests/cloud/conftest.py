"""Every cloud test watches Twisted's log (fixture ``logs`` of tests/support/cloud_fixtures.py):
an unhandled error logged while it runs fails it, whatever it asserted."""

from __future__ import annotations

import pytest

from support.cloud_harness import LogCapture


@pytest.fixture(autouse=True)
def _watch_logs(logs: LogCapture) -> LogCapture:
    return logs
