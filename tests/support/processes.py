"""Child Pythons that import the test helpers, as a test's own process does.

Tests: tests/edge/test_journal.py, tests/edge/test_journal_disk_full.py.
"""

from __future__ import annotations

import os
from pathlib import Path

#: tests/, the folder that holds the ``support`` package.
TESTS = Path(__file__).resolve().parent.parent


def python_env() -> dict[str, str]:
    """This process's environment, with tests/ first on PYTHONPATH (pytest's ``pythonpath``
    setting applies to this process only)."""
    path = [str(TESTS), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
