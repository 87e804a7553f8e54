"""The page's routes (Klein): who may see and do what, and which page answers.

Rules every route follows:

* A unit without an administrator answers only ``/setup`` (with the provisioning token) and
  the static files; everything else redirects there.
* Every other page needs a login; every state-changing request (POST) needs the session's
  CSRF token (form field ``csrf`` or header ``X-CSRF-Token``) and, when the browser sends one,
  an ``Origin`` equal to the page's own, on top of the SameSite=Strict session cookie.
* Roles: viewer sees, operator acts, admin manages accounts (gridedge.web.accounts).
* Bad input is a 4xx page with a sentence, never a traceback (:class:`HTTPError` and the error
  handlers below); bodies are bounded before they are read (gridedge.web.service).

Operator actions go through an :class:`~gridedge.web.actions.ActionPort`.

Tests: tests/web/test_web_browser.py, tests/edge/test_web_parts.py.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed, NotFound

from . import pages
from .accounts import Account, AccountError, Accounts
from .actions import ActionPort, Outcome
from .chart import energy_chart
from .diagnostics import LogTail, bundle
from .firmware import BundleError, BundleStore
from .history import History
from .live import LiveHub
from .sessions import LoginLimiter, Session, Sessions
from .status import Dashboard, UnitView, meter_row

__all__ = ["COOKIE", "HTTPError", "WebApp"]

#: twisted.web's Request: its methods are unannotated, so it is typed as Any here.
Request = Any

COOKIE = b"gridedge_session"
_CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
_STATIC = {"app.css": b"text/css; charset=utf-8", "app.js": b"text/javascript; charset=utf-8"}
PAGE_SIZE = 100


class HTTPError(Exception):
    """A refused request: ``status`` and the sentence shown."""

    def __init__(self, status: int, text: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


class _Redirect(Exception):
    def __init__(self, to: str) -> None:
        super().__init__(to)
        self.to = to


def _arg(request: Request, name: str, limit: int = 512) -> str:
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


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HTTPError(400, f"{what} must be a number") from None
    if not 0 <= value < 2**32:
        raise HTTPError(400, f"{what} is out of range")
    return value


class WebApp:
    """The routes over the unit; one instance per running web service."""

    app = Klein()
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
            raise _Redirect("/setup")
        token = request.getCookie(COOKIE)
        token_text = token.decode("ascii", "replace") if token else None
        session = self.sessions.get(token_text)
        account = self.accounts.get(session.user) if session else None
        if session is None or account is None or token_text is None:
            if request.method == b"GET":
                raise _Redirect("/login")
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
        given = header.decode("ascii", "replace") if header else _arg(request, "csrf")
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

    @app.handle_errors(_Redirect)
    def redirect(self, request: Request, failure: Failure) -> bytes:
        err = failure.value
        assert isinstance(err, _Redirect)
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

    # -- set up, log in, log out ----------------------------------------------------------

    @app.route("/setup", methods=["GET"])
    def setup_page(self, request: Request) -> bytes:
        self._common(request)
        if self.accounts.provisioned:
            raise _Redirect("/login")
        return self._html(request, "Set up this unit", pages.setup_form(), None)

    @app.route("/setup", methods=["POST"])
    def setup(self, request: Request) -> bytes:
        self._common(request)
        self._same_origin(request)
        if self.accounts.provisioned:
            raise HTTPError(409, "this unit already has an administrator")
        address = self._limited(request)
        try:
            account = self.accounts.provision(_arg(request, "token"), _arg(request, "name"),
                                              _arg(request, "password"))
        except AccountError as exc:
            if "token" in str(exc):
                self.limiter.failed(address)
            request.setResponseCode(403 if "token" in str(exc) else 400)
            return self._html(request, "Set up this unit", pages.setup_form(str(exc)), None)
        self.log.info("web: administrator {name} created with the provisioning token",
                      name=account.name)
        return self._login_as(request, account)

    @app.route("/login", methods=["GET"])
    def login_page(self, request: Request) -> bytes:
        self._common(request)
        if not self.accounts.provisioned:
            raise _Redirect("/setup")
        return self._html(request, "Log in", pages.login_form(), None)

    @app.route("/login", methods=["POST"])
    def login(self, request: Request) -> bytes:
        self._common(request)
        self._same_origin(request)
        address = self._limited(request)
        account = self.accounts.check(_arg(request, "name", 64), _arg(request, "password"))
        if account is None:
            self.limiter.failed(address)
            self.log.warn("web: failed login from {address}", address=address)
            request.setResponseCode(401)
            return self._html(request, "Log in",
                              pages.login_form("wrong name or password"), None)
        self.log.info("web: {name} logged in from {address}", name=account.name,
                      address=address)
        return self._login_as(request, account)

    def _limited(self, request: Request) -> str:
        address = str(getattr(request.getClientAddress(), "host", "?"))
        wait = self.limiter.retry_after(address)
        if wait > 0:
            raise HTTPError(429, f"too many failed attempts from {address}: "
                                 f"try again in {math.ceil(wait)} s",
                            {b"retry-after": str(math.ceil(wait)).encode()})
        return address

    def _login_as(self, request: Request, account: Account) -> bytes:
        token, _ = self.sessions.open(account.name)
        request.addCookie(COOKIE, token.encode(), path=b"/", secure=True,
                          httpOnly=True, sameSite="strict")
        raise _Redirect("/")

    @app.route("/logout", methods=["POST"])
    def logout(self, request: Request) -> bytes:
        _, _, token = self._change(request)
        self.sessions.close(token)
        request.addCookie(COOKIE, b"", path=b"/", secure=True, httpOnly=True,
                          sameSite="strict", max_age=b"0")
        raise _Redirect("/login")

    # -- dashboard and meters -------------------------------------------------------------

    def dash_values(self) -> dict[str, str]:
        return pages.dashboard_values(self.dashboard.numbers())

    @app.route("/", methods=["GET"])
    def home(self, request: Request) -> bytes:
        account, session, _ = self._who(request)
        body = pages.dashboard(self.dash_values(), account, session.csrf)
        return self._html(request, "Dashboard", body, account, session, live="dash")

    def rows(self, meter_ids: list[int] | None = None) -> list[dict[str, Any]]:
        link = self.unit.radio_link()
        now = self.dashboard.clock()
        if link is None:
            return []
        statuses = {m.meter_id: m for m in link.meters()} if meter_ids is None else {
            i: link.meter(i) for i in meter_ids}
        return [meter_row(i, s, self.history, now) for i, s in statuses.items()]

    def live_rows(self, meter_ids: list[int]) -> list[dict[str, Any]]:
        return [{"id": r["id"], "cells": pages.meter_cells(r)}
                for r in self.rows([m for m in meter_ids if m])]

    @app.route("/meters", methods=["GET"])
    def meters(self, request: Request) -> bytes:
        account, session, _ = self._who(request)
        q = _arg(request, "q", 64).strip().lower()
        sort = _arg(request, "sort", 16) or "id"
        if sort not in dict(pages.METER_COLUMNS):
            raise HTTPError(400, "unknown sort column")
        desc = _arg(request, "desc", 1) == "1"
        rows = self.rows()
        if q:
            rows = [r for r in rows if q in str(r["id"]) or any(q in a for a in r["alarms"])
                    or q == r["relay"]]

        def key(r: dict[str, Any]) -> tuple[bool, Any]:
            v = r[sort]
            v = ",".join(v) if isinstance(v, list) else v
            return (v is None, v if v is not None else 0)

        rows.sort(key=key, reverse=desc)
        pages_n = max(1, math.ceil(len(rows) / PAGE_SIZE))
        page_no = min(max(1, _int(_arg(request, "page", 6) or "1", "page")), pages_n)
        shown = rows[(page_no - 1) * PAGE_SIZE: page_no * PAGE_SIZE]
        body = pages.meters_table(shown, q=q, sort=sort, desc=desc, page_no=page_no,
                                  pages=pages_n, total=len(rows), page_size=PAGE_SIZE)
        return self._html(request, "Meters", body, account, session, live="meters")

    def meter_fragment(self, meter_id: int) -> dict[str, Any]:
        rows = self.rows([meter_id])
        records = self.history.records(meter_id)
        return {
            "cells": pages.meter_cells(rows[0]) if rows else {},
            "chart": energy_chart(records),
            "records": pages.records_rows(reversed(records[-24:])),
            "events": pages.events_list(reversed(self.history.events(meter_id))),
        }

    def _known(self, meter_text: str) -> int:
        meter_id = _int(meter_text, "the meter id")
        link = self.unit.radio_link()
        if link is None or link.meter(meter_id) is None:
            raise HTTPError(404, f"no meter {meter_id} is known to this unit")
        return meter_id

    @app.route("/meters/<meter>", methods=["GET"])
    def meter(self, request: Request, meter: str) -> bytes:
        account, session, _ = self._who(request)
        meter_id = self._known(meter)
        f = self.meter_fragment(meter_id)
        body = pages.meter_page(meter_id, f["cells"], f["chart"], f["records"], f["events"],
                                account, session.csrf)
        return self._html(request, f"Meter {meter_id}", body, account, session, live="meter",
                          meter=meter_id)

    @app.route("/meters/<meter>/chart.svg", methods=["GET"])
    def chart(self, request: Request, meter: str) -> bytes:
        self._who(request)
        meter_id = self._known(meter)
        request.setHeader(b"content-type", b"image/svg+xml")
        return energy_chart(self.history.records(meter_id)).encode()

    # -- operator actions -----------------------------------------------------------------

    def _outcome(self, request: Request, account: Account, session: Session, what: str,
                 back: str, d: Deferred[Outcome]) -> Deferred[bytes]:
        def show(o: Outcome) -> bytes:
            self.log.info("web: {who}: {what}: {reason}", who=account.name, what=what,
                          reason=o.reason)
            if not o.ok:
                request.setResponseCode(502)
            return self._html(request, what, pages.outcome(what, o.ok, o.reason, back),
                              account, session)
        return d.addCallback(show)

    @app.route("/meters/<meter>/poll", methods=["POST"])
    def poll(self, request: Request, meter: str) -> Deferred[bytes]:
        account, session, _ = self._change(request, "operator")
        meter_id = self._known(meter)
        return self._outcome(request, account, session, f"Poll meter {meter_id}",
                             f"/meters/{meter_id}", self.actions.poll_meter(meter_id))

    @app.route("/meters/<meter>/relay", methods=["POST"])
    def relay(self, request: Request, meter: str) -> Any:
        account, session, _ = self._change(request, "operator")
        meter_id = self._known(meter)
        state = _arg(request, "state", 8)
        if state not in ("open", "close"):
            raise HTTPError(400, "state must be open or close")
        if _arg(request, "confirm", 8) != "yes":
            return self._html(request, "Confirm", pages.confirm_relay(meter_id, state,
                                                                      session.csrf),
                              account, session)
        return self._outcome(request, account, session,
                             f"Relay {state} on meter {meter_id}", f"/meters/{meter_id}",
                             self.actions.set_relay(meter_id, state == "open"))

    @app.route("/upload-now", methods=["POST"])
    def upload_now(self, request: Request) -> Deferred[bytes]:
        account, session, _ = self._change(request, "operator")
        return self._outcome(request, account, session, "Upload now", "/",
                             self.actions.upload_now())

    # -- firmware and diagnostics ---------------------------------------------------------

    @app.route("/firmware", methods=["GET"])
    def firmware(self, request: Request) -> bytes:
        account, session, _ = self._who(request)
        body = pages.firmware(self.dash_values(), self.bundles.status(), account,
                              session.csrf, self.bundles.max_bytes)
        return self._html(request, "Firmware", body, account, session)

    @app.route("/firmware/upload", methods=["POST"])
    def upload(self, request: Request) -> bytes:
        account, _, _ = self._change(request, "operator")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        name = (request.getHeader(b"x-bundle-name") or b"").decode("utf-8", "replace").strip()
        content = request.content
        content.seek(0, 2)
        size = content.tell()
        try:
            status = self.bundles.receive(name, content, size)
        except BundleError as exc:
            request.setResponseCode(400)
            return f"refused: {exc}".encode()
        self.log.info("web: {who} uploaded bundle {name} ({size} bytes, sha256 {sha})",
                      who=account.name, name=status.name, size=status.size, sha=status.sha256)
        return f"received {status.name} ({status.size} bytes): waiting for installation".encode()

    @app.route("/diagnostics", methods=["GET"])
    def diagnostics(self, request: Request) -> bytes:
        account, session, _ = self._who(request)
        return self._html(request, "Diagnostics", pages.diagnostics(), account, session)

    @app.route("/diagnostics/bundle.tar.gz", methods=["GET"])
    def diagnostics_bundle(self, request: Request) -> bytes:
        self._who(request)
        journal = self.unit.journal
        link = self.unit.radio_link()
        up = self.unit.uplink_status()
        stats = {
            "dashboard": self.dashboard.numbers(),
            "journal": journal.stats() if journal.is_open else None,
            "radio": link.stats() if link is not None else None,
            "uplink": up,
        }
        data = bundle(self.unit.config.source, list(self.logs.lines),
                      json.loads(json.dumps(stats, default=_plain)))
        request.setHeader(b"content-type", b"application/gzip")
        request.setHeader(b"content-disposition",
                          b'attachment; filename="gridedge-diagnostics.tar.gz"')
        return data

    # -- accounts -------------------------------------------------------------------------

    @app.route("/accounts", methods=["GET"])
    def accounts_page(self, request: Request) -> bytes:
        account, session, _ = self._who(request, "admin")
        return self._html(request, "Accounts",
                          pages.accounts(self.accounts.all(), account, session.csrf),
                          account, session)

    @app.route("/accounts", methods=["POST"])
    def create_account(self, request: Request) -> bytes:
        account, session, _ = self._change(request, "admin")
        try:
            new = self.accounts.create(_arg(request, "name", 64), _arg(request, "password"),
                                       _arg(request, "role", 16))
        except AccountError as exc:
            request.setResponseCode(400)
            note = str(exc)
        else:
            note = f"account {new.name} ({new.role}) created"
            self.log.info("web: {who} created account {name} ({role})", who=account.name,
                          name=new.name, role=new.role)
        return self._html(request, "Accounts",
                          pages.accounts(self.accounts.all(), account, session.csrf, note),
                          account, session)

    @app.route("/accounts/<name>/delete", methods=["POST"])
    def delete_account(self, request: Request, name: str) -> bytes:
        account, session, _ = self._change(request, "admin")
        if name == account.name:
            raise HTTPError(400, "you cannot delete your own account")
        try:
            self.accounts.delete(name)
        except AccountError as exc:
            raise HTTPError(400, str(exc)) from None
        self.sessions.close_user(name)
        return self._html(request, "Accounts",
                          pages.accounts(self.accounts.all(), account, session.csrf,
                                         f"account {name} deleted"), account, session)

    # -- live -----------------------------------------------------------------------------

    @app.route("/events", methods=["GET"])
    def events(self, request: Request) -> Deferred[None]:
        self._who(request)
        view = _arg(request, "view", 8)
        if view not in ("dash", "meters", "meter"):
            raise HTTPError(400, "view must be dash, meters or meter")
        meter = self._known(_arg(request, "meter", 12)) if view == "meter" else None
        assert self.hub is not None
        if not self.hub.subscribe(request, view, meter):
            raise HTTPError(503, "too many live pages open", {b"retry-after": b"5"})
        # Klein finishes the request when this fires: never, until the browser goes away
        # (then Klein cancels it).
        return Deferred(lambda d: None)


def _plain(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict
        return asdict(value)  # type: ignore[call-overload]
    return str(value)
