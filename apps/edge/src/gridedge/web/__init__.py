"""gridedge.web: the unit's local page for technicians on site (Klein, HTTPS, Server-Sent
Events), served by `gridedge run` as a supervised child when ``[web] enabled = true``.

Public surface:

* :class:`WebService`: the page as a Twisted service (gridedge.services wires it);
* :class:`ActionPort`, :class:`Outcome`: what operator actions go through, and
  :class:`CommandActions`, the implementation over the unit's command executor;
* :class:`History`, :class:`HistorySink`: the last 24 hours per meter, kept in memory;
* :class:`UnitView`: what the page reads of the running unit.

Modules: ``app`` (the routes' class), ``routing`` (rules every route follows),
``account_routes``, ``unit_routes``, ``action_routes`` (the routes, by reason to change),
``pages`` (HTML), ``live`` (SSE), ``accounts``, ``hashing`` (scrypt in a child process),
``sessions``, ``tlscert``, ``status``, ``chart``, ``firmware``, ``diagnostics``, ``history``,
``actions``, ``files``, ``service``.  docs/edge.md, "Local web page", is the operator's guide.

Tests: tests/web/test_web_browser.py, tests/edge/test_web_parts.py.
"""

from .actions import ActionPort, CommandActions, Outcome
from .history import History, HistorySink
from .service import WebService
from .status import UnitView

__all__ = ["ActionPort", "CommandActions", "History", "HistorySink", "Outcome", "UnitView",
           "WebService"]
