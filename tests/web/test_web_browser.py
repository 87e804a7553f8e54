"""The unit's local page in real headless Chromium (Debian's, driven by Playwright) against a
real `gridedge run` reading gridsim over a pty: set-up with the provisioning token, logins,
roles, CSRF, live updates, a relay round trip checked in gridsim's ground truth, the phone
layout.  One unit and one browser serve the whole module; tests run in file order and each
says what it proves.
"""

from __future__ import annotations

import calendar
import importlib
import io
import json
import math
import re
import sqlite3
import struct
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gridsim.truth import GroundTruth
from gridwire import Flags

from support.edge_harness import Edge, Sim, edge_config, free_port, running
from support.waiting import wait_until

# Both are set-up's job (requirements/dev.txt, the Makefile's apt list): a machine without them
# fails these tests rather than skipping them.
playwright_api = importlib.import_module("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.fail("Debian's chromium is not installed (make setup installs it)", pytrace=False)

pytestmark = pytest.mark.slow

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery"
METER = 100001  # gridsim numbers its meters from 100001


@dataclass
class Unit:
    root: Path
    data: Path
    url: str
    sim: Sim
    edge: Edge

    @property
    def token_file(self) -> Path:
        return self.data / "web" / "provisioning-token"

    def listening(self) -> bool:
        return "web page at" in self.edge.log.read_text(errors="replace")


def web_section(port: int) -> str:
    # live_every and live_gap are left at their defaults: the live bound is measured on them.
    return (f'[web]\nenabled = true\naddress = "127.0.0.1"\nport = {port}\n'
            "login_attempts = 3\nlogin_window = 4\nmax_upload = \"1 MiB\"\n")


#: Tests that run before gridsim starts: the unit has no meter yet.
BEFORE_RADIO = {"test_setup_refused_without_the_token",
                "test_setup_with_the_token_login_logout_wrong_password",
                "test_new_meters_appear_live"}


@pytest.fixture(scope="module")
def unit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Unit]:
    root = tmp_path_factory.mktemp("web")
    data = root / "data"
    port = free_port()
    # 450 simulated seconds per second: every meter reports a 15-minute interval each 2 s.
    # gridsim starts later (test_new_meters_appear_live): the unit begins with no meter.
    sim = Sim(root, root / "radio", meters=5, speed=450, duration="60d")
    config = edge_config(data, uplink_port=free_port(), radio=sim.port,
                         extra=web_section(port))
    edge = Edge(root, data, config).start()
    u = Unit(root, data, f"https://127.0.0.1:{port}", sim, edge)
    with running(edge, sim):
        wait_until(u.listening, 60, "the web page to listen", (edge.log,))
        yield u


@pytest.fixture(autouse=True)
def radio(request: pytest.FixtureRequest, unit: Unit) -> None:
    """gridsim runs for every test after those that need a unit without meters."""
    if request.node.name not in BEFORE_RADIO and not unit.sim.proc.alive:
        unit.sim.start()


@pytest.fixture(scope="module")
def browser(unit: Unit) -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280,
                                                                     "height": 900})
    p = context.new_page()
    p.set_default_timeout(15_000)
    yield p
    context.close()


def login(page: Any, unit: Unit, name: str, password: str = PASSWORD) -> None:
    page.goto(unit.url + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    submit(page, "button:has-text('Log in')")


def submit(page: Any, selector: str) -> None:
    """Click a form's button and wait for the page it leads to."""
    with page.expect_navigation():
        page.click(selector)


def truth_relay_open(unit: Unit, meter: int) -> list[bool]:
    with GroundTruth(unit.sim.truth_path) as truth:
        return [bool(r.flags & Flags.RELAY_OPEN) for r in truth.records(meter)]


def test_setup_refused_without_the_token(page: Any, unit: Unit) -> None:
    """A new unit has no password: every page leads to set-up, which refuses a wrong token."""
    page.goto(unit.url + "/")
    assert page.url.endswith("/setup")
    page.fill("input[name=token]", "not-the-token")
    page.fill("input[name=password]", PASSWORD)
    submit(page, "button:has-text('Create administrator')")
    assert "wrong provisioning token" in page.inner_text("main")
    resp = page.request.get(unit.url + "/meters", max_redirects=0)
    assert resp.status == 302 and resp.headers["location"].endswith("/setup")
    assert unit.token_file.exists()


def test_setup_with_the_token_login_logout_wrong_password(page: Any, unit: Unit) -> None:
    """The token creates the first administrator once; logout ends the session; a wrong
    password is refused; the admin creates an operator and a viewer."""
    token = unit.token_file.read_text().strip()
    page.goto(unit.url + "/setup")
    page.fill("input[name=token]", token)
    page.fill("input[name=name]", "admin")
    page.fill("input[name=password]", PASSWORD)
    submit(page, "button:has-text('Create administrator')")
    assert page.url == unit.url + "/"
    assert page.locator("h1").inner_text() == "Dashboard"
    assert not unit.token_file.exists(), "the provisioning token must be used up"
    cookie = next(c for c in page.context.cookies() if c["name"] == "gridedge_session")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    for name, role in (("olga", "operator"), ("victor", "viewer")):
        page.goto(unit.url + "/accounts")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", PASSWORD)
        page.select_option("select[name=role]", role)
        submit(page, "button:has-text('Create')")
        assert f"account {name} ({role}) created" in page.inner_text("main")
    submit(page, "button:has-text('Log out')")
    assert page.url.endswith("/login")
    assert page.request.get(unit.url + "/", max_redirects=0).status == 302
    page.goto(unit.url + "/setup")
    assert page.url.endswith("/login"), "set-up is closed once an administrator exists"
    login(page, unit, "admin", "wrong password!!")
    assert "wrong name or password" in page.inner_text("main")
    login(page, unit, "admin")
    assert page.locator("h1").inner_text() == "Dashboard"


def test_new_meters_appear_live(page: Any, unit: Unit) -> None:
    """A meters table opened before any meter was heard fills itself as gridsim's meters join
    (no reload), and counts them."""
    login(page, unit, "victor")
    page.goto(unit.url + "/meters")
    page.evaluate("window.__same_page = true")
    page.wait_for_selector("#live.ok")
    assert page.locator("#meters tbody tr").count() == 0
    assert page.inner_text("#meter-count") == "0"
    unit.sim.start()
    page.wait_for_function("() => document.querySelectorAll('#meters tbody tr').length === 5",
                           timeout=60_000)
    assert page.inner_text("#meter-count") == "5"
    assert page.evaluate("window.__same_page") is True, "the page was reloaded"
    ids = page.locator("#meters tbody td[data-c=id] a").all_inner_texts()
    assert sorted(ids) == [str(METER + i) for i in range(5)]
    # The added rows are live rows like the others: their readings arrive by themselves.
    page.wait_for_function(
        "() => [...document.querySelectorAll('#meters tbody td[data-c=end]')]"
        ".every(td => td.textContent !== 'never')", timeout=30_000)


def test_dashboard_and_meters_table(page: Any, unit: Unit) -> None:
    """The dashboard shows the unit's state; the meters table searches and sorts."""
    login(page, unit, "victor")
    wait_until(lambda: re.match(r"[1-5] of 5", page.inner_text("[data-k=meters]")) is not None,
               30, "meters heard on the dashboard")
    assert page.inner_text("[data-k=firmware]") == "test-1"
    assert page.inner_text("[data-k=slot]") == "A"
    assert page.inner_text("[data-k=cloud]") == "offline"
    page.goto(unit.url + "/meters?sort=id&desc=1")
    ids = [int(t) for t in page.locator("#meters tbody td[data-c=id]").all_inner_texts()]
    assert ids == sorted(ids, reverse=True) and len(ids) == 5
    page.fill("input[name=q]", "3")
    submit(page, "button:has-text('Search')")
    assert page.locator("#meters tbody td[data-c=id]").all_inner_texts() == ["100003"]


#: What the browser records: every change of a watched element's text, with Date.now().
WATCH_JS = """watch => {
  window.__seen = [];
  const last = {};
  const look = () => {
    const t = Date.now();
    for (const [key, sel] of Object.entries(watch)) {
      const el = document.querySelector(sel);
      const text = el ? el.textContent : null;
      if (text !== last[key]) { last[key] = text; window.__seen.push([key, text, t]); }
    }
  };
  new MutationObserver(look).observe(document.body,
                                     {subtree: true, childList: true, characterData: true});
  look();
}"""


def journal_changes(unit: Unit, seconds: float) -> list[tuple[str, int, float]]:
    """Poll the unit's journal (read-only, every 5 ms) for ``seconds``: (key, value, time) for
    each change of a meter's newest stored interval ("end <meter>") and of the number of
    entries stored ("backlog").  The time is when the poll *before* the one that saw the change
    started: the commit came after it, so a latency measured from it is never too short, even
    when this process was kept off the CPU between two polls."""
    db = sqlite3.connect(f"file:{unit.data / 'journal.db'}?mode=ro", uri=True)
    seen: dict[str, int] = {}
    out: list[tuple[str, int, float]] = []
    deadline = time.monotonic() + seconds
    previous = time.time()
    try:
        while time.monotonic() < deadline:
            started = time.time()
            rows = db.execute("SELECT 'end ' || meter_id, interval_end FROM watermarks "
                              "UNION ALL SELECT 'backlog', count(*) FROM entries").fetchall()
            for key, value in rows:
                if seen.get(key) != value:
                    if key in seen:  # a change, not the state found at the start
                        out.append((key, value, previous))
                    seen[key] = value
            previous = started
            time.sleep(0.005)
    finally:
        db.close()
    return out


def shown_value(key: str, text: str | None) -> int | None:
    if text is None or text in ("never", "-"):
        return None
    if key == "backlog":
        return int(text.split()[0])
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S UTC"))


def latencies(changes: list[tuple[str, int, float]], seen: list[list[Any]],
              view: dict[str, str]) -> list[float]:
    """For each change of the unit whose key the page shows (``view``: unit key -> page key),
    the time until the page first showed it or something newer (inf: never)."""
    out = []
    for key, value, at in changes:
        if key not in view:
            continue
        times = [t / 1000 for k, text, t in seen
                 if k == view[key] and (v := shown_value(key.split()[0], text)) is not None
                 and v >= value]
        out.append(min(times) - at if times else math.inf)
    return out


def test_new_reading_appears_live(page: Any, unit: Unit, tmp_path: Path) -> None:
    """A new reading shows on the meter page, the meters table and the dashboard without a
    reload, within 2 s of the unit storing it: every reading journalled during 15 s is
    timed from (just before) its commit in the journal to the moment the page's DOM shows it
    (both on this machine's clock); the distribution is kept as an artefact."""
    login(page, unit, "victor")
    context = page.context
    pages = {"meter": page, "meters": context.new_page(), "dash": context.new_page()}
    meters = [METER + i for i in range(5)]
    views = {
        "meter": ({f"end {METER}": "end"}, f"/meters/{METER}",
                  {"end": "#facts [data-c=end]"}),
        "meters": ({f"end {m}": f"end {m}" for m in meters}, "/meters",
                   {f"end {m}": f"#m-{m} [data-c=end]" for m in meters}),
        "dash": ({"backlog": "backlog"}, "/", {"backlog": "[data-k=backlog]"}),
    }
    for name, (_, path, watch) in views.items():
        p = pages[name]
        p.goto(unit.url + path)
        p.wait_for_selector("#live.ok")
        p.evaluate("window.__same_page = true")
        p.evaluate(WATCH_JS, watch)
    counted = 15.0
    changes = journal_changes(unit, counted)
    time.sleep(2.5)  # the last changes counted have had their 2 s (and some) to show
    result: dict[str, dict[str, float]] = {}
    for name, (keys, _, _) in views.items():
        p = pages[name]
        assert p.evaluate("window.__same_page") is True, f"the {name} page was reloaded"
        lat = sorted(latencies(changes, p.evaluate("window.__seen"), keys))
        assert len(lat) >= 5, f"{name}: only {len(lat)} changes in {counted} s"
        result[name] = {"n": len(lat), "p50": lat[len(lat) // 2],
                        "p95": lat[int(len(lat) * 0.95)], "max": lat[-1]}
    (tmp_path / "live-latency.json").write_text(json.dumps(result, indent=1))
    print("live latency (s):", json.dumps(result))
    for name, r in result.items():
        assert r["max"] <= 2.0, f"{name}: a change took {r['max']:.2f} s to show: {result}"
    assert page.locator("#records tr").count() >= 2
    assert page.locator("#chart svg").count() == 1


def test_relay_round_trip(page: Any, unit: Unit) -> None:
    """An operator opens a relay after confirming; the page shows the outcome and the relay
    state, and gridsim's ground truth shows the meter's later records with the relay open;
    closing it restores the supply."""
    login(page, unit, "olga")
    for state, flag in (("open", True), ("close", False)):
        page.goto(f"{unit.url}/meters/{METER}")
        before = len(truth_relay_open(unit, METER))
        submit(page, f"button:has-text('{state.capitalize()} relay…')")
        assert page.locator("h1").inner_text() == "Confirm"
        submit(page, f"button:has-text('Yes, {state} the relay')")
        assert f"Relay {state} on meter {METER}: meter confirmed" in page.inner_text("main")
        page.goto(f"{unit.url}/meters/{METER}")
        expected = "open" if flag else "closed"
        page.wait_for_function(
            "t => document.querySelector('#facts [data-c=relay]').textContent === t",
            arg=expected)
        wait_until(lambda flag=flag, before=before: any(  # type: ignore[misc]
                       f is flag for f in truth_relay_open(unit, METER)[before + 1:]),
                   20, f"gridsim's records of meter {METER} with the relay {expected}")
        assert f"relay {state}: succeeded, meter confirmed" in page.inner_text("#events")


def test_viewer_may_not_act(page: Any, unit: Unit) -> None:
    """A viewer sees no action buttons, and a forged request with the viewer's own token is
    refused with 403, leaving the relay alone."""
    login(page, unit, "victor")
    page.goto(f"{unit.url}/meters/{METER}")
    assert page.locator("button:has-text('Open relay')").count() == 0
    csrf = page.get_attribute("form[action='/logout'] input[name=csrf]", "value")
    before = truth_relay_open(unit, METER)
    resp = page.request.post(f"{unit.url}/meters/{METER}/relay",
                             form={"csrf": csrf, "state": "open", "confirm": "yes"},
                             headers={"origin": unit.url})
    assert resp.status == 403 and "operator" in resp.text()
    assert "Traceback" not in resp.text()
    assert page.inner_text("#facts [data-c=relay]") == "closed"
    assert not any(truth_relay_open(unit, METER)[len(before):])


def test_cross_site_post_refused(page: Any, unit: Unit) -> None:
    """A page from elsewhere that posts a relay command to the unit, in the browser of a
    logged-in operator, is refused; so is a same-site post without the CSRF token."""
    login(page, unit, "olga")
    attack = (f'<form id="f" method="post" action="{unit.url}/meters/{METER}/relay">'
              '<input name="state" value="open"><input name="confirm" value="yes"></form>')
    # The attacker's page, served by Playwright under another origin (no network involved).
    page.route("https://attacker.test/**",
               lambda route: route.fulfill(body=attack, content_type="text/html"))
    page.goto("https://attacker.test/win-a-prize")
    with page.expect_navigation():
        page.evaluate("document.getElementById('f').submit()")
    assert page.locator("h1").inner_text() == "403"
    assert "cross-site request refused" in page.inner_text("main")
    resp = page.request.post(f"{unit.url}/meters/{METER}/relay",
                             form={"state": "open", "confirm": "yes"},
                             headers={"origin": unit.url})
    assert resp.status == 403 and "security token" in resp.text()
    page.goto(f"{unit.url}/meters/{METER}")
    assert page.inner_text("#facts [data-c=relay]") == "closed"


def test_bad_input_is_a_clear_4xx(page: Any, unit: Unit) -> None:
    """Actions say their outcome (no cloud here: upload now cannot send); unknown pages and
    meters, bad numbers and oversized bodies get a 4xx, never a traceback; the firmware upload
    checks type and size; diagnostics download works."""
    login(page, unit, "olga")
    submit(page, "button:has-text('Upload to the cloud now')")
    # No cloud and no device certificate here: the uplink is down, and the page says so.
    assert "Upload now: not connected to the cloud" in page.inner_text("main")
    page.goto(f"{unit.url}/meters/{METER}")
    submit(page, "button:has-text('Poll now')")
    assert f"Poll meter {METER}:" in page.inner_text("main")
    for path, status in (("/nope", 404), ("/meters/abc", 400), ("/meters/999", 404),
                         ("/meters?sort=evil", 400)):
        resp = page.request.get(unit.url + path)
        assert resp.status == status, path
        assert "Traceback" not in resp.text() and "<h1>" in resp.text()
    csrf = page.get_attribute("form[action='/logout'] input[name=csrf]", "value")
    big = page.request.post(unit.url + "/login", data=b"x" * (64 << 10),
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert big.status == 413
    headers = {"x-csrf-token": csrf, "origin": unit.url, "x-bundle-name": "update.raucb",
               "content-type": "application/octet-stream"}
    bad = page.request.post(unit.url + "/firmware/upload", data=b"MZ" + b"\0" * 100,
                            headers=headers)
    assert bad.status == 400 and "not a RAUC bundle" in bad.text()
    payload = b"hsqs" + bytes(range(256)) * 40
    signature = b"\x30\x82" + b"\x01" * 300
    bundle = payload + signature + struct.pack(">Q", len(signature))
    good = page.request.post(unit.url + "/firmware/upload", data=bundle, headers=headers)
    assert good.status == 200, good.text()
    huge = page.request.post(unit.url + "/firmware/upload", data=bundle * 100, headers=headers)
    assert huge.status == 413
    page.goto(unit.url + "/firmware")
    assert "update.raucb" in page.inner_text("#bundle")
    # The upload goes to the update agent (docs/updates.md, "The local page"); this host has
    # no rauc service, so the agent stops at `rauc status` and the page says so.

    def agent_done() -> bool:
        page.goto(unit.url + "/firmware")
        return "failed: rauc status" in page.inner_text("#update")
    wait_until(agent_done, 30, "the update agent's outcome on the page", (unit.edge.log,))
    diag = page.request.get(unit.url + "/diagnostics/bundle.tar.gz")
    assert diag.status == 200
    with tarfile.open(fileobj=io.BytesIO(diag.body()), mode="r:gz") as tar:
        names = {m.name.split("/")[-1] for m in tar.getmembers()}
        log = tar.extractfile("gridedge-diagnostics/log.txt").read().decode()  # type: ignore[union-attr]
    assert names == {"gridedge.toml", "log.txt", "stats.json"}
    assert "olga logged in" in log


def test_phone_width_page_weight_and_screenshots(browser: Any, unit: Unit,
                                                 tmp_path: Path) -> None:
    """At 360 px the dashboard and a meter page fit without sideways scrolling and a full
    load weighs under 100 KB; screenshots are kept in the test's folder."""
    context = browser.new_context(ignore_https_errors=True,
                                  viewport={"width": 360, "height": 740})
    page = context.new_page()
    try:
        login(page, unit, "victor")
        sizes: list[int] = []

        def count(response: Any) -> None:
            if response.request.resource_type != "eventsource":
                sizes.append(len(response.body()))

        page.on("response", count)
        for name, path in (("dashboard", "/"), ("meter", f"/meters/{METER}")):
            sizes.clear()
            page.goto(unit.url + path)
            page.wait_for_selector("#live.ok")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 360, f"{name} is {width} px wide at 360 px"
            assert sizes and sum(sizes) < 100_000, f"{name} weighs {sum(sizes)} bytes"
            shot = tmp_path / f"{name}-360px.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5000
    finally:
        context.close()


def test_login_rate_limit(page: Any, unit: Unit) -> None:
    """After three wrong passwords from one address the fourth try is refused (429) even with
    the right password, until the window has passed."""
    for _ in range(3):
        login(page, unit, "admin", "guess guess guess")
        assert "wrong name or password" in page.inner_text("main")
    resp = page.request.post(unit.url + "/login", form={"name": "admin", "password": PASSWORD},
                             headers={"origin": unit.url}, max_redirects=0)
    assert resp.status == 429 and "too many failed attempts" in resp.text()
    assert int(resp.headers["retry-after"]) >= 1

    def accepted() -> bool:
        r = page.request.post(unit.url + "/login", form={"name": "admin", "password": PASSWORD},
                              headers={"origin": unit.url}, max_redirects=0)
        return bool(r.status == 302)

    wait_until(accepted, 15, "logins to be accepted again after the window")


def test_live_view_recovers_after_unit_restart(page: Any, unit: Unit) -> None:
    """An open dashboard reconnects by itself after `gridedge run` restarts (the session is
    kept on /data) and shows new readings again."""
    login(page, unit, "victor")
    page.goto(f"{unit.url}/meters/{METER}")
    page.wait_for_selector("#live.ok")
    assert unit.edge.proc.stop() == 0
    page.wait_for_selector("#live.warn")
    before = page.inner_text("#facts [data-c=end]")
    unit.edge.start()
    page.wait_for_selector("#live.ok", timeout=60_000)
    page.wait_for_function(
        "t => document.querySelector('#facts [data-c=end]').textContent !== t", arg=before,
        timeout=30_000)
