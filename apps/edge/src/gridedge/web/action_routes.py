"""The routes of what an operator does from the page: poll a meter, open or close its
relay (after a confirmation), upload now (all through gridedge.web.actions' ActionPort),
upload a firmware bundle, and download the diagnostics bundle.

Tests: tests/web/test_web_browser.py, tests/edge/test_web_parts.py.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from . import pages
from .accounts import Account
from .actions import Outcome
from .diagnostics import bundle
from .firmware import BundleError
from .routing import HTTPError, Request, Routes, app, arg
from .sessions import Session

__all__ = ["ActionRoutes"]


class ActionRoutes(Routes):
    """Operator actions, firmware, diagnostics."""

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
        state = arg(request, "state", 8)
        if state not in ("open", "close"):
            raise HTTPError(400, "state must be open or close")
        if arg(request, "confirm", 8) != "yes":
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
                              session.csrf, self.bundles.max_bytes, self.unit.firmware.view())
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
        # The same path as an update from the cloud: signature and compatible (rauc), the
        # running slot good, install, reboot as [firmware] says.  The page shows the outcome.
        self.unit.firmware.install_local(self.bundles.path, status.sha256).addErrback(
            lambda failure: self.log.warn("web: bundle {name} not installed: {why}",
                                          name=status.name, why=failure.getErrorMessage()))
        return f"received {status.name} ({status.size} bytes): installing".encode()

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


def _plain(value: object) -> object:
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict
        return asdict(value)  # type: ignore[call-overload]
    return str(value)
