"""The routes of what the page shows: the dashboard, the meters table, a meter's page and
chart, and the live stream (gridedge.web.live) that keeps them current.

Tests: tests/web/test_web_browser.py, tests/edge/test_web_parts.py.
"""

from __future__ import annotations

import math
from typing import Any

from twisted.internet.defer import Deferred

from . import pages
from .chart import energy_chart
from .routing import HTTPError, Request, Routes, app, arg, number
from .status import meter_row

__all__ = ["PAGE_SIZE", "UnitRoutes"]

PAGE_SIZE = 100


class UnitRoutes(Routes):
    """Dashboard, meters, meter, chart, live events."""

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
        q = arg(request, "q", 64).strip().lower()
        sort = arg(request, "sort", 16) or "id"
        if sort not in dict(pages.METER_COLUMNS):
            raise HTTPError(400, "unknown sort column")
        desc = arg(request, "desc", 1) == "1"
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
        page_no = min(max(1, number(arg(request, "page", 6) or "1", "page")), pages_n)
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

    @app.route("/events", methods=["GET"])
    def events(self, request: Request) -> Deferred[None]:
        self._who(request)
        view = arg(request, "view", 8)
        if view not in ("dash", "meters", "meter"):
            raise HTTPError(400, "view must be dash, meters or meter")
        meter = self._known(arg(request, "meter", 12)) if view == "meter" else None
        assert self.hub is not None
        if not self.hub.subscribe(request, view, meter):
            raise HTTPError(503, "too many live pages open", {b"retry-after": b"5"})
        # Klein finishes the request when this fires: never, until the browser goes away
        # (then Klein cancels it).
        return Deferred(lambda d: None)
