"""Commands on the unit: from the cloud or the local page, stored durably, executed once.

* :class:`CommandExecutor` (:mod:`~gridedge.commands.executor`): accepts, runs and
  reports commands; :meth:`CommandExecutor.submit_local` is the local page's entry.
* :class:`CommandStore` (:mod:`~gridedge.commands.store`): the SQLite file behind
  "accepted" and "executed once".
* :mod:`~gridedge.commands.settings`: the whitelisted settings ``set_config`` may change.

Tests: tests/edge/test_edge_commands.py, tests/system/test_commands_e2e.py.
"""

from __future__ import annotations

from .executor import CommandExecutor, Outcome, UnitHooks
from .store import CommandStore, CommandStoreError

__all__ = ["CommandExecutor", "CommandStore", "CommandStoreError", "Outcome", "UnitHooks"]
