"""What the tests share: harnesses, helpers and the fixtures of the whole suite.

The root pyproject.toml puts tests/ (and tools/) on pytest's ``pythonpath``, so a test imports
``support.edge_harness`` and not a file found through ``sys.path`` edits; tests/conftest.py loads
the fixture modules (``support.postgres``, ``support.cloud_fixtures``) as pytest plugins. A child
Python started by a test gets the same path from ``support.processes.python_env()``.

Test directories hold tests and their conftest.py; anything two test files import lives here.

Tests: the suite itself; tests/test_test_pointers.py checks every "Tests:" line.
"""
