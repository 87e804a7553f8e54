"""The API's resources, one module each; :func:`operations` is the whole route table.

Tests: tests/cloud/test_api_resources.py, tests/cloud/test_api_openapi.py,
tests/cloud/test_api_commands.py, tests/pipeline/test_pipeline_api.py,
tests/cloud/test_cloud_releases.py, tests/cloud/test_cloud_rollouts.py.
"""

from __future__ import annotations

from typing import Any

from ..config import ApiConfig
from ..deltas import DeltaMaker
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
    releases,
    rollouts,
)


def operations(config: ApiConfig, feed: list[Operation], deltas: DeltaMaker, reactor: Any
               ) -> list[Operation]:
    """Every operation the API serves, the feed's (gridcloud.api.feed) included; ``deltas``
    makes the deltas of uploaded releases, ``reactor`` runs RAUC's checks as processes."""
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
        *releases.operations(config, reactor, deltas),
        *rollouts.operations(config),
        *feed,
    ]
    return [*ops, document.operation(ops, config)]
