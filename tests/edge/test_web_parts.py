"""The web page's parts without a browser: accounts and the provisioning token, sessions and
the login limit, the per-meter history, the chart, bundle checks, the diagnostics redaction,
the certificate and the body bound."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import pytest
from gridedge.radio import MemorySink
from gridedge.web.accounts import AccountError, Accounts
from gridedge.web.chart import energy_chart
from gridedge.web.diagnostics import redact
from gridedge.web.firmware import BundleError, BundleStore
from gridedge.web.history import History, HistorySink
from gridedge.web.pages import h, meters_table
from gridedge.web.sessions import LoginLimiter, Sessions
from gridedge.web.tlscert import ensure_certificate, fingerprint
from gridwire import Flags, IntervalRecord
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

PASSWORD = "a long enough password"


T = TypeVar("T")


def done(d: Deferred[T]) -> T:
    """The result of a Deferred that has fired (the inline hasher fires at once)."""
    results: list[T] = []
    failures: list[Failure] = []
    d.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    assert results, "the Deferred has not fired"
    return results[0]


def record(meter: int, k: int, wh: int, flags: int = 0) -> IntervalRecord:
    return IntervalRecord(meter, 1_700_000_100 + k * 900, wh, 100, 2300, 500, 950, flags)


def test_first_admin_only_with_the_token(tmp_path: Path) -> None:
    """No account exists until the token's holder creates the admin; the token is then gone
    and the password is stored only as an scrypt hash."""
    accounts = Accounts(tmp_path)
    token = accounts.ensure_token()
    assert token and (tmp_path / "provisioning-token").stat().st_mode & 0o777 == 0o600
    assert accounts.ensure_token() == token, "the token is stable until used"
    with pytest.raises(AccountError, match="wrong provisioning token"):
        accounts.provision("guess", "admin", PASSWORD)
    with pytest.raises(AccountError, match="wrong provisioning token"):
        accounts.provision("", "admin", PASSWORD)
    assert not accounts.provisioned
    done(accounts.provision(token, "admin", PASSWORD))
    assert accounts.provisioned and not (tmp_path / "provisioning-token").exists()
    assert accounts.ensure_token() is None
    with pytest.raises(AccountError, match="already"):
        accounts.provision(token, "admin2", PASSWORD)
    stored = (tmp_path / "accounts.json").read_text()
    assert PASSWORD not in stored and (tmp_path / "accounts.json").stat().st_mode & 0o777 == 0o600
    again = Accounts(tmp_path)
    assert done(again.check("admin", PASSWORD)) is not None
    assert done(again.check("admin", PASSWORD + "x")) is None
    assert done(again.check("nobody", PASSWORD)) is None


def test_password_hashes_leave_no_memory_behind(tmp_path: Path) -> None:
    """Each scrypt hash takes 16 MiB; after several logins the process is not 16 MiB larger."""
    accounts = Accounts(tmp_path)
    done(accounts.provision(accounts.ensure_token() or "", "admin", PASSWORD))

    def rss_mib() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE") / 2**20

    done(accounts.check("admin", PASSWORD))
    before = rss_mib()
    for _ in range(4):
        assert done(accounts.check("admin", PASSWORD)) is not None
    assert rss_mib() - before < 4


def test_roles_and_account_rules(tmp_path: Path) -> None:
    """Roles rank viewer < operator < admin; short passwords, bad names and deleting the last
    administrator are refused."""
    accounts = Accounts(tmp_path)
    done(accounts.provision(accounts.ensure_token() or "", "admin", PASSWORD))
    viewer = done(accounts.create("vi", PASSWORD, "viewer"))
    assert not viewer.may("operator") and viewer.may("viewer")
    assert done(accounts.create("op", PASSWORD, "operator")).may("operator")
    for name, password, role, why in (("x", PASSWORD, "viewer", "a name"),
                                      ("ok.name", "short", "viewer", "password"),
                                      ("ok2", PASSWORD, "root", "role"),
                                      ("vi", PASSWORD, "viewer", "exists")):
        with pytest.raises(AccountError, match=why):
            accounts.create(name, password, role)
    with pytest.raises(AccountError, match="last administrator"):
        accounts.delete("admin")


def test_sessions_expire_survive_restarts_and_check_csrf(tmp_path: Path) -> None:
    """A session outlives the process (file on /data holds digests only), expires after
    ``ttl`` idle seconds, and its CSRF token must match."""
    clock = Clock()
    sessions = Sessions(tmp_path, ttl=60, clock=clock.seconds)
    token, session = sessions.open("olga")
    assert token not in (tmp_path / "sessions.json").read_text()
    reopened = Sessions(tmp_path, ttl=60, clock=clock.seconds)
    assert reopened.get(token) == session
    assert Sessions.csrf_ok(session, session.csrf)
    assert not Sessions.csrf_ok(session, "") and not Sessions.csrf_ok(session, None)
    assert not Sessions.csrf_ok(session, session.csrf + "x")
    clock.advance(61)
    assert reopened.get(token) is None
    token2, _ = reopened.open("olga")
    reopened.close(token2)
    assert reopened.get(token2) is None


def test_login_limiter_per_address() -> None:
    """The n-th failure within the window blocks that address only, until the window passes."""
    clock = Clock()
    limiter = LoginLimiter(3, 10, clock.seconds)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1") == 0
        limiter.failed("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == pytest.approx(10)
    assert limiter.retry_after("10.0.0.2") == 0
    clock.advance(10)
    assert limiter.retry_after("10.0.0.1") == 0


def test_history_keeps_the_newest_records_and_flag_events() -> None:
    """The ring keeps the newest ``keep`` records in order; relay and outage flags become
    events; the sink stores in the journal first."""
    clock = Clock()
    history = History(clock.seconds, keep=4)
    journal = MemorySink()
    sink = HistorySink(journal, history)
    sink.append([record(7, k, 1000 + k, Flags.RELAY_OPEN if k in (3, 4) else 0)
                 for k in range(6)])
    kept = history.records(7)
    assert [r.interval_end for r in kept] == [record(7, k, 0).interval_end for k in range(2, 6)]
    assert kept[-1] == record(7, 5, 1005) == history.last(7)
    assert [e.text for e in history.events(7)] == ["relay open", "relay closed"]
    assert len(journal.records) == 6
    assert history.changed_since(0) == [7]
    assert history.records(8) == [] and history.last(8) is None


def test_chart_draws_energy_per_interval() -> None:
    """One bar per interval with the register's difference; no data is said in words."""
    assert "not enough records" in energy_chart([])
    svg = energy_chart([record(1, k, 1000 + 10 * k) for k in range(5)])
    assert svg.startswith("<svg") and svg.count("<rect") == 4 and "10 Wh" in svg


def test_html_is_escaped() -> None:
    """Text enters the page only escaped."""
    assert h('<script>"x"</script>') == "&lt;script&gt;&quot;x&quot;&lt;/script&gt;"
    table = meters_table([], q='"><script>', sort="id", desc=False, page_no=1, pages=1,
                         total=0)
    assert "<script>" not in table


def bundle_bytes(sig: bytes = b"\x30" * 64) -> bytes:
    return b"hsqs" + os.urandom(4096) + sig + struct.pack(">Q", len(sig))


def test_bundle_checks(tmp_path: Path) -> None:
    """An upload is kept only if named .raucb, small enough, a SquashFS image with a
    signature trailer; the status reports it."""
    store = BundleStore(tmp_path, max_bytes=10_000)
    good = bundle_bytes()
    for name, data, why in (("x.bin", good, "named"), ("x.raucb", b"", "empty"),
                            ("x.raucb", b"MZ" + good, "not a RAUC bundle"),
                            ("x.raucb", good[:-8] + struct.pack(">Q", 10**9), "signed"),
                            ("x.raucb", bundle_bytes(b"\x30" * 20_000), "at most")):
        with pytest.raises(BundleError, match=why):
            store.receive(name, io.BytesIO(data), len(data))
    assert store.status() is None
    status = store.receive("u.raucb", io.BytesIO(good), len(good))
    assert store.status() == status and store.path.read_bytes() == good


def test_redaction() -> None:
    """Secret-looking keys lose their values in the diagnostics bundle; paths stay."""
    text = 'host = "c"\napi_token = "abc"\nwifi_password="x y"\ntls_dir = "/data/tls"\n'
    out = redact(text)
    assert "abc" not in out and "x y" not in out
    assert 'tls_dir = "/data/tls"' in out and 'host = "c"' in out


def test_certificate_made_once(tmp_path: Path) -> None:
    """The certificate and a 0600 key are made on first start and kept afterwards."""
    cert, key = ensure_certificate(tmp_path, "192.168.73.1", "gridedge")
    assert key.stat().st_mode & 0o777 == 0o600
    first = fingerprint(cert)
    assert ensure_certificate(tmp_path, "192.168.73.1", "gridedge") == (cert, key)
    assert fingerprint(cert) == first and len(first) == 95


class FakeChannel:
    def __init__(self) -> None:
        self._waitingForTransport = False
        self.timeouts_reset = 0

    def resetTimeout(self) -> None:
        self.timeouts_reset += 1


class FakeStreamRequest:
    """What LiveHub uses of a twisted.web request, recording what it was sent."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.channel = FakeChannel()
        self.written: list[bytes] = []
        self.finished = False
        self._finish: Deferred[None] = Deferred()

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def notifyFinish(self) -> object:
        return self._finish

    def finish(self) -> None:
        self.finished = True
        self._finish.callback(None)


def test_live_streams_skip_blocked_readers_without_losing_changes() -> None:
    """A stream whose connection is blocked gets nothing until it drains, then every meter it
    missed; one blocked for a minute is closed; each write re-arms the idle timeout."""
    from gridedge.web.live import LiveHub

    clock = Clock()
    history = History(clock.seconds)
    hub = LiveHub(clock, 1.0, history, dashboard=lambda: {"uptime": str(clock.seconds())},
                  meter_rows=lambda ids: [{"id": i} for i in ids],
                  meter_fragment=lambda m: {"id": m})
    hub.start()
    table, dash = FakeStreamRequest(), FakeStreamRequest()
    assert hub.subscribe(table, "meters", None) and hub.subscribe(dash, "dash", None)
    table.channel._waitingForTransport = True
    history.add([record(5, 0, 10)])
    clock.advance(1)
    history.add([record(6, 0, 10)])
    clock.advance(1)
    assert not any(b"event: meters" in w for w in table.written)
    table.channel._waitingForTransport = False
    clock.advance(1)
    sent = [w for w in table.written if b"event: meters" in w]
    assert len(sent) == 1 and b'"id": 5' in sent[0] and b'"id": 6' in sent[0]
    assert table.channel.timeouts_reset >= 1 and dash.channel.timeouts_reset >= 3
    dash.channel._waitingForTransport = True
    clock.pump([1.0] * 61)
    assert dash.finished and not table.finished and hub.streams == 1
    hub.stop()
    assert table.finished and hub.streams == 0


def test_live_changes_are_pushed_at_once_then_throttled() -> None:
    """A change reaches an open meters table on the next turn of the reactor; changes within
    ``gap`` of a push wait for the gap's end and go out together; the dashboard's numbers are
    gathered on a change only when ``every`` has passed since the last gathering."""
    from gridedge.web.live import LiveHub

    clock = Clock()
    history = History(clock.seconds)
    gathered: list[float] = []

    def dashboard() -> dict[str, str]:
        gathered.append(clock.seconds())
        return {"t": str(clock.seconds())}

    hub = LiveHub(clock, 1.0, history, dashboard=dashboard,
                  meter_rows=lambda ids: [{"id": i} for i in ids],
                  meter_fragment=lambda m: {"id": m}, gap=0.25)
    hub.start()
    table, dash = FakeStreamRequest(), FakeStreamRequest()
    assert hub.subscribe(table, "meters", None) and hub.subscribe(dash, "dash", None)
    gathered.clear()
    clock.advance(0.5)
    history.add([record(5, 0, 10)])
    clock.advance(0)
    assert [w for w in table.written if b"event: meters" in w][-1].count(b'"id": 5') == 1
    assert gathered == [0.5], "the first change gathers the dashboard at once"
    history.add([record(6, 0, 10)])
    history.touch(7)  # a join, through the radio link's hook
    clock.advance(0.2)
    assert not any(b'"id": 6' in w for w in table.written), "within the gap: held"
    clock.advance(0.05)
    sent = [w for w in table.written if b"event: meters" in w]
    assert len(sent) == 2 and b'"id": 6' in sent[1] and b'"id": 7' in sent[1]
    assert gathered == [0.5], "the dashboard waits for its own period"
    clock.advance(0.25)
    assert len(gathered) == 2, "the periodic tick (at 1.0) gathers it"
    hub.stop()
    assert history.listeners == []


HASH_CHILD = """
import json, sys, time
from twisted.internet import reactor, task
from gridedge.web.hashing import ChildHasher, inline_hash

hasher = ChildHasher(reactor)
gaps, out = [], {}
last = [time.monotonic()]
def beat():
    now = time.monotonic()
    gaps.append(now - last[0])
    last[0] = now
loop = task.LoopingCall(beat)
loop.start(0.01)

def run():
    salt = b"s" * 16
    t = time.monotonic()
    want = inline_hash("pass word 1", salt).result
    out["inline_s"] = time.monotonic() - t
    del gaps[:]
    last[0] = time.monotonic()
    t = time.monotonic()
    d = hasher("pass word 1", salt)
    def got(digest):
        out["child_s"] = time.monotonic() - t
        out["same"] = digest == want
        out["max_gap_s"] = max(gaps)
        reactor.stop()
    d.addCallback(got)
reactor.callLater(0.1, run)
reactor.run()
print(json.dumps(out))
"""


def test_scrypt_runs_in_a_child_and_the_reactor_keeps_turning() -> None:
    """The running unit's hasher gives scrypt's digest from a child process while the reactor
    keeps its 10 ms beat; the same hash inline would stop the reactor for its whole length
    (both measured, printed)."""
    import json

    proc = subprocess.run([sys.executable, "-c", HASH_CHILD], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print("scrypt:", out)
    assert out["same"]
    # Inline, the reactor would have stood still for inline_s (0.05-0.25 s here); through the
    # child its longest pause is the spawn, far shorter than the hash.
    assert out["max_gap_s"] < max(0.5 * out["inline_s"], 0.05), out
