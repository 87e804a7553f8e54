"""What every route of the page shares: the one Klein app, the rules of who may ask, the
error pages and the static files.

Rules every route follows:

* A unit without an administrator answers only ``/setup`` (with the provisioning token) and
  the static files; everything else redirects there.
* Every other page needs a login; every state-changing request (POST) needs the session's
  CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) and, when the browser sends one,
  an ``Origin`` equal to the page's own, on top of the SameSite=Strict session cookie.
* Roles: viewer sees, operator acts, admin manages accounts (gridedge.web.accounts).
* Bad input is a 4xx page with a sentence, never a traceback (:class:`HTTPError` and the error
  handlers below); bodies are bounded before they are read (gridedge.web.service).

Why one Klein object shared by several classes: the routes are split by reason to change
(gridedge.web.app says which module holds which), each module a mixin of :class:`Routes`
decorating its methods with this module's ``app``; Klein calls each route with the
:class:`~gridedge.web.app.WebApp` instance the app was reached through, so every route sees
the same injected state.

Tests: tests/web/test_web_browser.py, tests/edge/test_web_parts.py.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed, NotFound

from . import pages
from .accounts import Account, AccountError, Accounts
from .actions import ActionPort
from .diagnostics import LogTail
from .firmware import BundleStore
from .history import History
from .live import LiveHub
from .sessions import LoginLimiter, Session, Sessions
from .status import Dashboard, UnitView

__all__ = ["COOKIE", "HTTPError", "Redirect", "Request", "Routes", "account_error", "app", "arg",
           "number"]

#: twisted.web's Request: its methods are unannotated, so it is typed as Any here.
Request = Any

COOKIE = b"gridedge_session"
_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
_STATIC = {"app.css": b"text/css; charset=utf-8", "app.js": b"text/javascript; charset=utf-8"}

#: The page's one Klein app (see the module docstring).
app = Klein()


class HTTPError(Exception):
    """A refused request: ``status`` and the sentence shown."""

    def __init__(self, status: int, text: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


class Redirect(Exception):
    """Answer with a redirect to ``to`` (raised anywhere in a route)."""


    def __init__(self, to: str) -> None:
        super().__init__(to)
        self.to = to


def arg(request: Request, name: str, limit: int = 512) -> str:
    values = (request.args or {}).get(name.encode())
    if not values:
        return ""
    try:
        text: str = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"field {name} is not UTF-8 text") from None
    if len(text) > limit:
        raise HTTPError(400, f"field {name} is too long")
    return text


def number(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HTTPError(400, f"{what} must be a number") from None
    if not 0 <= value < 2**32:
        raise HTTPError(400, f"{what} is out of range")
    return value


def account_error(failure: Failure) -> Exception:
    """The AccountError a hashing Deferred failed with (anything else passes on)."""
    failure.trap(AccountError)  # type: ignore[no-untyped-call]
    assert isinstance(failure.value, Exception)
    return failure.value


class Routes:
    """The state every route reads, and the checks and error pages they share."""

    app = app
    log = Logger()

    def __init__(self, unit: UnitView, history: History, actions: ActionPort,
                 accounts: Accounts, sessions: Sessions, limiter: LoginLimiter,
                 bundles: BundleStore, logs: LogTail, dashboard: Dashboard) -> None:
        self.unit = unit
        self.history = history
        self.actions = actions
        self.accounts = accounts
        self.sessions = sessions
        self.limiter = limiter
        self.bundles = bundles
        self.logs = logs
        self.dashboard = dashboard
        self.hub: LiveHub | None = None

    # -- who is asking ---------------------------------------------------------------------

    def _common(self, request: Request) -> None:
        request.setHeader(b"content-security-policy", _CSP)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"same-origin")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"strict-transport-security", b"max-age=31536000")

    def _who(self, request: Request, role: str = "viewer") -> tuple[Account, Session, str]:
        """The logged-in account (with ``role`` at least), its session and token."""
        self._common(request)
        if not self.accounts.provisioned:
            raise Redirect("/setup")
        token = request.getCookie(COOKIE)
        token_text = token.decode("ascii", "replace") if token else None
        session = self.sessions.get(token_text)
        account = self.accounts.get(session.user) if session else None
        if session is None or account is None or token_text is None:
            if request.method == b"GET":
                raise Redirect("/login")
            raise HTTPError(403, "not logged in (or the session expired): log in again")
        if not account.may(role):
            raise HTTPError(403, f"your role ({account.role}) may not do this; "
                                 f"it needs {role} or higher")
        return account, session, token_text

    def _change(self, request: Request, role: str = "viewer") -> tuple[Account, Session, str]:
        """Like _who, for a state-changing request: the CSRF token and origin are checked."""
        self._same_origin(request)
        account, session, token = self._who(request, role)
        header = request.getHeader(b"x-csrf-token")
        given = header.decode("ascii", "replace") if header else arg(request, "csrf")
        if not self.sessions.csrf_ok(session, given):
            raise HTTPError(403, "the form's security token is missing or stale: "
                                 "reload the page and try again")
        return account, session, token

    def _same_origin(self, request: Request) -> None:
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host") or b""
        if origin is not None and origin != b"https://" + host:
            self.log.warn("web: cross-site request refused: origin {origin!r}, host {host!r}",
                          origin=origin, host=host)
            raise HTTPError(403, "cross-site request refused")

    def _html(self, request: Request, title: str, body: str, account: Account | None,
              session: Session | None = None, **kw: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return pages.page(title, body, user=account, csrf=session.csrf if session else "",
                          **kw).encode()

    # -- errors ----------------------------------------------------------------------------

    @app.handle_errors(Redirect)
    def redirect(self, request: Request, failure: Failure) -> bytes:
        err = failure.value
        assert isinstance(err, Redirect)
        request.redirect(err.to.encode())
        return b""

    @app.handle_errors(HTTPError)
    def refused(self, request: Request, failure: Failure) -> bytes:
        err = failure.value
        assert isinstance(err, HTTPError)
        return self._error(request, err.status, err.text, err.headers)

    @app.handle_errors(NotFound)
    def not_found(self, request: Request, failure: Failure) -> bytes:
        return self._error(request, 404, "no such page")

    @app.handle_errors(MethodNotAllowed)
    def not_allowed(self, request: Request, failure: Failure) -> bytes:
        return self._error(request, 405, "this page does not take that method")

    @app.handle_errors(Exception)
    def failed(self, request: Request, failure: Failure) -> bytes:
        self.log.failure("web page failed", failure)
        return self._error(request, 500, "the unit could not answer this page; "
                                         "the diagnostics bundle has the details")

    def _error(self, request: Request, status: int, text: str,
               headers: dict[bytes, bytes] | None = None) -> bytes:
        self._common(request)
        request.setResponseCode(status)
        for k, v in (headers or {}).items():
            request.setHeader(k, v)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return pages.error_page(status, text).encode()

    # -- static ----------------------------------------------------------------------------

    @app.route("/static/<name>", methods=["GET"])
    def static(self, request: Request, name: str) -> bytes:
        kind = _STATIC.get(name)
        if kind is None:
            raise HTTPError(404, "no such file")
        request.setHeader(b"content-type", kind)
        request.setHeader(b"cache-control", b"max-age=3600")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return resources.files("gridedge.web").joinpath("static", name).read_bytes()

    # -- what several groups of routes read -----------------------------------------------

    def dash_values(self) -> dict[str, str]:
        return pages.dashboard_values(self.dashboard.numbers())

    def _known(self, meter_text: str) -> int:
        meter_id = number(meter_text, "the meter id")
        link = self.unit.radio_link()
        if link is None or link.meter(meter_id) is None:
            raise HTTPError(404, f"no meter {meter_id} is known to this unit")
        return meter_id
