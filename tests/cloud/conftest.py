"""Every cloud test watches Twisted's log (fixture ``logs`` of tests/support/cloud_fixtures.py):
an unhandled error logged while it runs fails it, whatever it asserted.

The HTTP API's fixtures (tests/support/api_fixtures.py) are imported here rather than loaded as
a suite-wide plugin: only the cloud tests use them, and the edge tests also run in .venv-unit
(mk/unit-libs.mk), which has none of the API tests' tools.
"""

from __future__ import annotations

import pytest

from support.api_fixtures import api, module_dsn, world
from support.cloud_harness import LogCapture

__all__ = ["api", "module_dsn", "world"]


@pytest.fixture(autouse=True)
def _watch_logs(logs: LogCapture) -> LogCapture:
    return logs
