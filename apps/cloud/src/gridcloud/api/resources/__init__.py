"""The API's resources, one module each; :func:`operations` is the whole route table.

Tests: tests/cloud/test_api_resources.py, tests/cloud/test_api_openapi.py,
tests/cloud/test_api_commands.py, tests/pipeline/test_pipeline_api.py.
"""

from __future__ import annotations

from ..config import ApiConfig
from ..routes import Operation
from . import (
    alarms,
    apikeys,
    commands,
    credit,
    document,
    edges,
    energy,
    events,
    meters,
    readings,
)


def operations(config: ApiConfig, feed: list[Operation]) -> list[Operation]:
    """Every operation the API serves, the feed's (gridcloud.api.feed) included."""
    ops = [
        *edges.operations(config),
        *meters.operations(config),
        *readings.operations(config),
        *events.operations(config),
        *energy.operations(config),
        *credit.operations(config),
        *alarms.operations(config),
        *apikeys.operations(config),
        *commands.operations(config),
        *feed,
    ]
    return [*ops, document.operation(ops, config)]
