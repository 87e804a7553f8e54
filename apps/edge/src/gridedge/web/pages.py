"""The page's HTML, written as small Python functions over f-strings with every value escaped.

Why no template engine: Klein needs none, the pages are few and short, and each function here
is a plain, typed, testable call.  Jinja2 (which Buildroot packages) would add a package, its
template compiler and megabytes of resident memory to a service whose budget is 8 MB;
Twisted's own templates (twisted.web.template) are in the image already but turn a 200-line
page into an XML tree built per request.  The rule that keeps this safe: text enters
HTML only through :func:`h` (``html.escape``), and the only unescaped inserts are fragments this
module made.

Pages are mobile first (readable at 360 px: one column, tables scroll sideways) and carry no
inline script or style, so the Content-Security-Policy can forbid both.

Tests: tests/edge/test_web_parts.py, tests/web/test_web_browser.py.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from typing import Any

from gridwire import IntervalRecord

from .accounts import ROLES, Account
from .firmware import BundleStatus
from .history import MeterEvent

__all__ = ["h", "page"]


def h(value: object) -> str:
    """``value`` as text safe anywhere in HTML, attributes included."""
    return html.escape("" if value is None else str(value), quote=True)


def when(t: float | None) -> str:
    if not t:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def duration(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    hh, s = divmod(s, 3600)
    mm, s = divmod(s, 60)
    return (f"{d} d " if d else "") + f"{hh:02}:{mm:02}:{s:02}"


def page(title: str, body: str, *, user: Account | None, csrf: str = "",
         live: str = "", meter: int | None = None, status: int = 200) -> str:
    """The whole document around ``body`` (already HTML)."""
    nav = ""
    if user is not None:
        links = [("/", "Dashboard"), ("/meters", "Meters"), ("/firmware", "Firmware"),
                 ("/diagnostics", "Diagnostics")]
        if user.may("admin"):
            links.append(("/accounts", "Accounts"))
        nav = ("<nav>" + "".join(f'<a href="{u}">{t}</a>' for u, t in links)
               + f'<form method="post" action="/logout">{csrf_field(csrf)}'
               f'<button class="link">Log out {h(user.name)}</button></form>'
               + ('<span id="live" class="warn">connecting…</span>' if live else "") + "</nav>")
    data = f' data-live="{h(live)}"' if live else ""
    if meter is not None:
        data += f' data-meter="{meter}"'
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{h(title)} · gridedge</title>"
            '<link rel="stylesheet" href="/static/app.css">'
            '<script src="/static/app.js" defer></script></head>'
            f"<body{data}><header><b>gridedge</b> {nav}</header>"
            f"<main><h1>{h(title)}</h1>{body}</main></body></html>")


def csrf_field(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{h(token)}">' if token else ""


def message(text: str, kind: str = "info") -> str:
    return f'<p class="msg {h(kind)}" role="status">{h(text)}</p>'


# -- log in and set up -------------------------------------------------------------------

def login_form(error: str = "") -> str:
    return ((message(error, "error") if error else "")
            + '<form method="post" action="/login" class="box">'
            '<label>Name <input name="name" autocomplete="username" required></label>'
            '<label>Password <input name="password" type="password" '
            'autocomplete="current-password" required></label>'
            '<button>Log in</button></form>')


def setup_form(error: str = "") -> str:
    return ((message(error, "error") if error else "")
            + "<p>This unit has no administrator yet. Enter the provisioning token from the "
            "unit's label (or from <code>web/provisioning-token</code> on its data partition) "
            "and choose the administrator's name and password.</p>"
            '<form method="post" action="/setup" class="box">'
            '<label>Provisioning token <input name="token" required autocomplete="off"></label>'
            '<label>Name <input name="name" value="admin" required></label>'
            '<label>Password (10 characters or more) <input name="password" type="password" '
            'autocomplete="new-password" required minlength="10"></label>'
            '<button>Create administrator</button></form>')


# -- dashboard ---------------------------------------------------------------------------

#: (key, label) of the dashboard's tiles, in order; the live view updates them by key.
TILES = (
    ("cloud", "Cloud link"), ("last_contact", "Last contact"), ("bytes_today", "Data today"),
    ("bytes_month", "Data this month"), ("backlog", "Journal backlog"),
    ("oldest_unsent", "Oldest unsent"), ("meters", "Meters heard"), ("alarms", "Alarms"),
    ("firmware", "Firmware"), ("slot", "Boot slot"), ("other_slot", "Other slot"),
    ("uptime", "Uptime"), ("disk", "Disk free"), ("memory", "Memory available"),
    ("cpu", "CPU (gridedge)"),
)


def dashboard_values(n: dict[str, Any]) -> dict[str, str]:
    """The dashboard's numbers as the text shown (the page and the live view share it)."""
    return {
        "cloud": n["cloud"],
        "last_contact": when(n["last_contact"]),
        "bytes_today": size(n.get("bytes_today")),
        "bytes_month": size(n.get("bytes_month")),
        "backlog": "-" if n["backlog"] is None else f"{n['backlog']} entries",
        "oldest_unsent": when(n.get("oldest_unsent")) if n["backlog"] else "nothing unsent",
        "meters": f"{n['meters_heard']} of {n['meters_total']}",
        "alarms": "; ".join(n["alarms"]) or "none",
        "firmware": n["firmware"],
        "slot": n["slot"],
        "other_slot": n["other_slot"],
        "uptime": duration(n["uptime"]),
        "disk": f"{size(n['disk_free'])} of {size(n['disk_total'])}",
        "memory": f"{size(n['mem_available'])} of {size(n['mem_total'])} "
                  f"(gridedge {size(n['rss'])})",
        "cpu": f"{n['cpu']:.1f} % (load {n['load']:.2f})",
    }


def dashboard(values: dict[str, str], user: Account, csrf: str) -> str:
    tiles = "".join(
        f'<div class="tile{" wide" if key == "alarms" else ""}"><span>{h(label)}</span>'
        f'<b data-k="{key}">{h(values[key])}</b></div>' for key, label in TILES)
    actions = ""
    if user.may("operator"):
        actions = (f'<form method="post" action="/upload-now">{csrf_field(csrf)}'
                   '<button>Upload to the cloud now</button></form>')
    return f'<div class="tiles">{tiles}</div>{actions}'


# -- meters ------------------------------------------------------------------------------

METER_COLUMNS = (("id", "Meter"), ("end", "Last reading"), ("wh", "Register (Wh)"),
                 ("relay", "Relay"), ("rssi", "RSSI"), ("hops", "Hops"), ("alarms", "Alarms"))


def meter_cells(row: dict[str, Any]) -> dict[str, str]:
    return {
        "id": str(row["id"]),
        "end": when(row["end"]),
        "wh": "-" if row["wh"] is None else f"{row['wh']:,}",
        "relay": row["relay"],
        "rssi": "-" if row["rssi"] is None else f"{row['rssi']} dBm",
        "hops": "-" if row["hops"] is None else str(row["hops"]),
        "alarms": ", ".join(row["alarms"]) or "-",
    }


def meters_table(rows: Sequence[dict[str, Any]], *, q: str, sort: str, desc: bool,
                 page_no: int, pages: int, total: int, page_size: int = 100) -> str:
    """The meters table; ``data-add`` tells the live script how many meters it may add at the
    end (new meters appear without a reload on the last page of an unfiltered table; the next
    load sorts them in); -1 when a search filters the table (nothing added, nothing counted)."""
    room = -1 if q else page_size - len(rows) if page_no == pages else 0
    def link(col: str) -> str:
        d = "1" if col == sort and not desc else "0"
        return f'<a href="/meters?q={h(q)}&amp;sort={col}&amp;desc={d}">'
    def arrow(col: str) -> str:
        return (" ▼" if desc else " ▲") if col == sort else ""
    head = "".join(f'<th data-c="{c}">{link(c)}{h(t)}{arrow(c)}</a></th>'
                   for c, t in METER_COLUMNS)
    body = []
    for row in rows:
        cells = meter_cells(row)
        tds = "".join(
            f'<td data-c="{c}">' + (f'<a href="/meters/{row["id"]}">{h(cells[c])}</a>'
                                   if c == "id" else h(cells[c])) + "</td>"
            for c, _ in METER_COLUMNS)
        body.append(f'<tr id="m-{row["id"]}">{tds}</tr>')
    nav = ""
    if pages > 1:
        nav = "<p class=\"pages\">" + " ".join(
            f'<a href="/meters?q={h(q)}&amp;sort={h(sort)}&amp;desc={int(desc)}&amp;page={p}"'
            + (' aria-current="page"' if p == page_no else "") + f">{p}</a>"
            for p in range(1, pages + 1)) + "</p>"
    return ('<form method="get" action="/meters" class="search">'
            f'<input name="q" value="{h(q)}" placeholder="meter id or alarm" '
            'aria-label="search meters"><input type="hidden" name="sort" '
            f'value="{h(sort)}"><button>Search</button></form>'
            f'<p><span id="meter-count">{total}</span> meter(s)</p>'
            f'<div class="scroll"><table id="meters" data-add="{room}"><thead><tr>{head}</tr>'
            '</thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>{nav}")


def meter_facts(cells: dict[str, str]) -> str:
    return "<dl class=\"facts\">" + "".join(
        f'<dt>{h(t)}</dt><dd data-c="{c}">{h(cells[c])}</dd>'
        for c, t in METER_COLUMNS[1:]) + "</dl>"


def records_rows(records: Iterable[IntervalRecord]) -> str:
    return "".join(
        f"<tr><td>{h(when(r.interval_end))}</td><td>{r.energy_wh:,}</td>"
        f"<td>{r.max_demand_w}</td><td>{r.voltage_dv / 10:.1f}</td>"
        f"<td>{r.current_ma / 1000:.2f}</td><td>{r.power_factor / 1000:.3f}</td>"
        f"<td>{r.flags:#06x}</td></tr>" for r in records)


def events_list(events: Iterable[MeterEvent]) -> str:
    items = "".join(f"<li>{h(when(e.at))}: {h(e.text)}</li>" for e in events)
    return items or "<li>none since the unit started</li>"


def meter_page(meter_id: int, cells: dict[str, str], chart: str, records: str, events: str,
               user: Account, csrf: str) -> str:
    actions = ""
    if user.may("operator"):
        c = csrf_field(csrf)
        actions = (
            '<div class="actions">'
            f'<form method="post" action="/meters/{meter_id}/poll">{c}<button>Poll now'
            "</button></form>"
            f'<form method="post" action="/meters/{meter_id}/relay">{c}'
            '<input type="hidden" name="state" value="open"><button>Open relay…</button></form>'
            f'<form method="post" action="/meters/{meter_id}/relay">{c}'
            '<input type="hidden" name="state" value="close"><button>Close relay…</button>'
            "</form></div>")
    return (f'<div id="facts">{meter_facts(cells)}</div>{actions}'
            f'<h2>Last 24 hours</h2><div id="chart" class="chart">{chart}</div>'
            '<h2>Recent records</h2><div class="scroll"><table><thead><tr><th>Interval end</th>'
            "<th>Wh</th><th>Max W</th><th>V</th><th>A</th><th>PF</th><th>Flags</th></tr>"
            f'</thead><tbody id="records">{records}</tbody></table></div>'
            f'<h2>Events</h2><ul id="events">{events}</ul>'
            "<p class=\"note\">Records and events shown are those received since the unit "
            "last started (kept in memory, up to 24 hours).</p>")


def confirm_relay(meter_id: int, state: str, csrf: str) -> str:
    verb = "Open" if state == "open" else "Close"
    effect = ("This cuts the customer's supply." if state == "open"
              else "This restores the customer's supply.")
    return (f"<p>{verb} the relay of meter {meter_id}? {effect}</p>"
            f'<form method="post" action="/meters/{meter_id}/relay">{csrf_field(csrf)}'
            f'<input type="hidden" name="state" value="{h(state)}">'
            '<input type="hidden" name="confirm" value="yes">'
            f'<button class="danger">Yes, {verb.lower()} the relay</button> '
            f'<a href="/meters/{meter_id}">Cancel</a></form>')


def outcome(what: str, ok: bool, reason: str, back: str) -> str:
    return (message(f"{what}: {reason}", "ok" if ok else "error")
            + f'<p><a href="{h(back)}">Back</a></p>')


# -- firmware, diagnostics, accounts -----------------------------------------------------

def firmware(values: dict[str, str], bundle: BundleStatus | None, user: Account,
             csrf: str, max_upload: int, agent: dict[str, Any]) -> str:
    status = ("<p>No bundle uploaded.</p>" if bundle is None else
              f'<p id="bundle">Uploaded: {h(bundle.name)}, {size(bundle.size)}, SHA-256 '
              f"<code>{h(bundle.sha256)}</code>, {h(when(bundle.received_at))}.</p>")
    progress = ""
    if agent.get("size"):
        progress = f", {size(agent['received'] or 0)} of {size(agent['size'])}"
    last = ""
    if agent.get("last_state"):
        last = (f"<dt>Last step</dt><dd>{h(str(agent['last_state']).lower())}"
                + (f": {h(str(agent['last_detail']))}" if agent.get("last_detail") else "")
                + "</dd>")
    status += (f'<dl class="facts" id="update"><dt>Update agent</dt><dd>{h(agent["phase"])}'
               + (f" ({h(str(agent['version']))}{progress})" if agent.get("version") else "")
               + f"</dd>{last}</dl>")
    form = ""
    if user.may("operator"):
        form = (f'<form id="upload" data-csrf="{h(csrf)}" class="box">'
                f'<label>Signed bundle (.raucb, at most {size(max_upload)}) '
                '<input type="file" name="bundle" accept=".raucb" required></label>'
                '<button>Upload</button><progress hidden></progress>'
                '<p id="upload-result" role="status"></p></form>')
    return (f"<dl class=\"facts\"><dt>Running</dt><dd>{h(values['firmware'])} "
            f"(slot {h(values['slot'])})</dd><dt>Other slot</dt><dd>{h(values['other_slot'])}"
            f"</dd></dl>{status}{form}")


def diagnostics() -> str:
    return ("<p>A bundle for support: the last log lines, the configuration (secrets removed) "
            "and journal and link statistics.</p>"
            '<p><a class="button" href="/diagnostics/bundle.tar.gz" download>'
            "Download diagnostics</a></p>")


def accounts(all_accounts: Sequence[Account], me: Account, csrf: str, note: str = "") -> str:
    c = csrf_field(csrf)
    rows = "".join(
        f"<tr><td>{h(a.name)}</td><td>{h(a.role)}</td><td>"
        + (f'<form method="post" action="/accounts/{h(a.name)}/delete">{c}'
           "<button>Delete</button></form>" if a.name != me.name else "you")
        + "</td></tr>" for a in all_accounts)
    options = "".join(f"<option>{r}</option>" for r in ROLES)
    return ((message(note) if note else "")
            + f'<div class="scroll"><table><thead><tr><th>Name</th><th>Role</th><th></th></tr>'
            f"</thead><tbody>{rows}</tbody></table></div>"
            f'<h2>New account</h2><form method="post" action="/accounts" class="box">{c}'
            '<label>Name <input name="name" required></label>'
            '<label>Password <input name="password" type="password" minlength="10" '
            'autocomplete="new-password" required></label>'
            f'<label>Role <select name="role">{options}</select></label>'
            "<button>Create</button></form>")


def error_page(status: int, text: str, user: Account | None = None) -> str:
    return page(f"{status}", message(text, "error") + '<p><a href="/">Back to the start</a></p>',
                user=None)
