"""The suite's shared fixtures, loaded as plugins from tests/support (see its __init__)."""

pytest_plugins = ["support.postgres", "support.cloud_fixtures", "support.reactor_guard"]
