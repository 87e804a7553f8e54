"""``gridcloud pipeline``: energy aggregates, prepaid credit and alarms from stored readings.

The work itself is set-based SQL (migration 0008: ``pipeline_claim``,
``pipeline_process``, ``pipeline_failed``, ``pipeline_sweep``); this package is
the runtime around it: configuration (:mod:`.config`) and the Twisted service
that claims, processes, retries and drains (:mod:`.service`).  Operators' guide:
docs/pipeline.md.

Tests: tests/pipeline/test_pipeline_correctness.py, tests/pipeline/test_pipeline_service.py.
"""

from .config import PipelineConfig, load_pipeline_config
from .service import PipelineService

__all__ = ["PipelineConfig", "PipelineService", "load_pipeline_config"]
