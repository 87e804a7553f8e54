"""The routes of who uses the page: first set-up with the provisioning token, log in and
out, accounts (admin).  Passwords are hashed off the reactor (gridedge.web.hashing), so the
routes that hash answer with a Deferred.

Tests: tests/web/test_web_browser.py, tests/edge/test_web_parts.py.
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred

from . import pages
from .accounts import Account, AccountError
from .routing import COOKIE, HTTPError, Redirect, Request, Routes, account_error, app, arg

__all__ = ["AccountRoutes"]


class AccountRoutes(Routes):
    """Set-up, log in, log out, accounts."""

    @app.route("/setup", methods=["GET"])
    def setup_page(self, request: Request) -> bytes:
        self._common(request)
        if self.accounts.provisioned:
            raise Redirect("/login")
        return self._html(request, "Set up this unit", pages.setup_form(), None)

    @app.route("/setup", methods=["POST"])
    def setup(self, request: Request) -> Deferred[bytes] | bytes:
        self._common(request)
        self._same_origin(request)
        if self.accounts.provisioned:
            raise HTTPError(409, "this unit already has an administrator")
        address = self._limited(request)

        def refused(exc: Exception) -> bytes:
            if "token" in str(exc):
                self.limiter.failed(address)
            request.setResponseCode(403 if "token" in str(exc) else 400)
            return self._html(request, "Set up this unit", pages.setup_form(str(exc)), None)

        def made(account: Account) -> bytes:
            self.log.info("web: administrator {name} created with the provisioning token",
                          name=account.name)
            return self._login_as(request, account)

        try:
            d = self.accounts.provision(arg(request, "token"), arg(request, "name"),
                                        arg(request, "password"))
        except AccountError as exc:
            return refused(exc)
        return d.addCallbacks(made, lambda f: refused(account_error(f)))

    @app.route("/login", methods=["GET"])
    def login_page(self, request: Request) -> bytes:
        self._common(request)
        if not self.accounts.provisioned:
            raise Redirect("/setup")
        return self._html(request, "Log in", pages.login_form(), None)

    @app.route("/login", methods=["POST"])
    def login(self, request: Request) -> Deferred[bytes]:
        self._common(request)
        self._same_origin(request)
        address = self._limited(request)

        def checked(account: Account | None) -> bytes:
            if account is None:
                self.limiter.failed(address)
                self.log.warn("web: failed login from {address}", address=address)
                request.setResponseCode(401)
                return self._html(request, "Log in",
                                  pages.login_form("wrong name or password"), None)
            self.log.info("web: {name} logged in from {address}", name=account.name,
                          address=address)
            return self._login_as(request, account)

        return self.accounts.check(arg(request, "name", 64),
                                   arg(request, "password")).addCallback(checked)

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
        raise Redirect("/")

    @app.route("/logout", methods=["POST"])
    def logout(self, request: Request) -> bytes:
        _, _, token = self._change(request)
        self.sessions.close(token)
        request.addCookie(COOKIE, b"", path=b"/", secure=True, httpOnly=True,
                          sameSite="strict", max_age=b"0")
        raise Redirect("/login")

    @app.route("/accounts", methods=["GET"])
    def accounts_page(self, request: Request) -> bytes:
        account, session, _ = self._who(request, "admin")
        return self._html(request, "Accounts",
                          pages.accounts(self.accounts.all(), account, session.csrf),
                          account, session)

    @app.route("/accounts", methods=["POST"])
    def create_account(self, request: Request) -> Deferred[bytes] | bytes:
        account, session, _ = self._change(request, "admin")

        def show(note: str) -> bytes:
            return self._html(request, "Accounts",
                              pages.accounts(self.accounts.all(), account, session.csrf, note),
                              account, session)

        def refused(exc: Exception) -> bytes:
            request.setResponseCode(400)
            return show(str(exc))

        def made(new: Account) -> bytes:
            self.log.info("web: {who} created account {name} ({role})", who=account.name,
                          name=new.name, role=new.role)
            return show(f"account {new.name} ({new.role}) created")

        try:
            d = self.accounts.create(arg(request, "name", 64), arg(request, "password"),
                                     arg(request, "role", 16))
        except AccountError as exc:
            return refused(exc)
        return d.addCallbacks(made, lambda f: refused(account_error(f)))

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
