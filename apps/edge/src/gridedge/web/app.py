"""The page's routes (Klein), one class over mixins split by reason to change.

* gridedge.web.routing: the one Klein app, the rules every route follows (login, roles,
  CSRF and origin, error pages, static files);
* gridedge.web.account_routes: who uses the page (set-up with the provisioning token, log in,
  log out, accounts);
* gridedge.web.unit_routes: what the page shows (dashboard, meters, a meter, its chart, the
  live stream);
* gridedge.web.action_routes: what an operator does (poll, relay, upload now through an
  :class:`~gridedge.web.actions.ActionPort`; firmware upload; diagnostics).

Tests: tests/web/test_web_browser.py, tests/edge/test_web_parts.py.
"""

from __future__ import annotations

from .account_routes import AccountRoutes
from .action_routes import ActionRoutes
from .routing import COOKIE, HTTPError
from .unit_routes import PAGE_SIZE, UnitRoutes

__all__ = ["COOKIE", "PAGE_SIZE", "HTTPError", "WebApp"]


class WebApp(AccountRoutes, UnitRoutes, ActionRoutes):
    """The routes over the unit; one instance per running web service (``WebApp(...).app``
    is its Klein app, bound to it)."""
