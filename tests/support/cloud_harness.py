"""Helpers shared by the cloud tests and tests/system/test_certificates.py.

Real parts only: certificates made by gridcloud.pki, a CloudService on a
loopback port with real TLS, a migrated PostgreSQL database from the suite's
``pg_dsn`` fixture, and gridedge.loadgen's edge client speaking gridwire.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from gridcloud import migrations, pki
from gridcloud.config import ServerConfig
from gridcloud.server import CloudService
from gridedge import loadgen
from gridedge.uplink.tls import ResumingCreator
from gridwire import Hello, IntervalRecord, ReadingBatch
from twisted.internet import defer, ssl
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from zope.interface import implementer

SERVER_NAME = "cloud.example.net"
T0 = 1_795_000_000  # a fixed interval end (2026-11-17), inside no prepared partition


@dataclass
class CloudPKI:
    """A project CA with a server certificate, and edge certificates on demand."""

    root: Path
    ca: pki.Issued
    folder: pki.PKIDirectory

    def edge(
        self,
        edge_id: str,
        *,
        ca: pki.Issued | None = None,
        days: int = 30,
        now: datetime.datetime | None = None,
    ) -> Path:
        """Write edge.pem/edge.key/ca.pem for ``edge_id`` (signed by ``ca``); return the folder."""
        signer = ca if ca is not None else self.ca
        issued = pki.issue_edge(signer, edge_id, days=days, now=now)
        out = self.root / "edges" / f"{edge_id}-{issued.serial}"
        out.mkdir(parents=True)
        pki.write_private_key(out / pki.EDGE_KEY, issued)
        pki.write_certificate(out / pki.EDGE_CERT, issued.cert_pem())
        # the edge always trusts the real project CA
        pki.write_certificate(out / pki.CA_CERT, self.ca.cert_pem())
        return out

    def client_tls(self, edge_dir: Path, hostname: str = SERVER_NAME) -> ResumingCreator:
        return loadgen.client_tls(
            hostname, edge_dir / pki.CA_CERT, edge_dir / pki.EDGE_CERT, edge_dir / pki.EDGE_KEY
        )

    def anonymous_tls(self, hostname: str = SERVER_NAME) -> ResumingCreator:
        """Client options that trust the CA but present no certificate."""
        authority = ssl.Certificate.loadPEM(self.ca.cert_pem())
        return ResumingCreator(ssl.optionsForClientTLS(hostname, trustRoot=authority))


def make_pki(root: Path) -> CloudPKI:
    folder = pki.PKIDirectory(root / "pki")
    ca = folder.init()
    folder.server([SERVER_NAME, "localhost"])
    return CloudPKI(root, ca, folder)


def cloud_config(test_pki: CloudPKI, dsn: str, **overrides: Any) -> ServerConfig:
    base = ServerConfig(
        listen="tcp:0:interface=127.0.0.1",
        cert=test_pki.folder.path / pki.SERVER_CERT,
        key=test_pki.folder.path / pki.SERVER_KEY,
        ca=test_pki.folder.path / pki.CA_CERT,
        dsn=dsn,
        pool_size=2,
    )
    return base.with_overrides(**overrides)


async def start_cloud(
    reactor: Any, test_pki: CloudPKI, dsn: str, clock: Any = None, **overrides: Any
) -> CloudService:
    """Migrate the database at ``dsn`` and start a CloudService on a free loopback port."""
    migrations.migrate(dsn)
    service = CloudService(reactor, cloud_config(test_pki, dsn, **overrides), clock=clock)
    service.startService()
    await within(reactor, service.ready, 20)
    return service


def endpoint_of(service: CloudService) -> str:
    assert service.port is not None
    return f"tcp:127.0.0.1:{service.port.getHost().port}"


def hello(**kw: Any) -> Hello:
    values: dict[str, Any] = dict(
        min_version=1, max_version=1, firmware_version="1.0.0", boot_slot="A"
    )
    values.update(kw)
    return Hello(**values)


def records(
    count: int, *, first_meter: int = 1, interval_end: int = T0, energy: int = 1000
) -> list[IntervalRecord]:
    """``count`` distinct, plausible records (meter first_meter+i, energy energy+i)."""
    return [
        IntervalRecord(first_meter + i, interval_end, energy + i, 400 + i, 2300, 1500, 950, 0)
        for i in range(count)
    ]


def batch(first_seq: int, count: int, **kw: Any) -> ReadingBatch:
    """Records for seq first_seq.. of meters first_seq.. (unless told): distinct readings."""
    kw.setdefault("first_meter", first_seq)
    return ReadingBatch(first_seq=first_seq, records=records(count, **kw))


def query(dsn: str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on its own connection (committed); its rows, if it returns any."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


async def within(reactor: Any, d: defer.Deferred[Any], seconds: float) -> Any:
    """Await ``d`` but fail the test after ``seconds`` instead of hanging."""
    return await d.addTimeout(seconds, reactor)


async def sleep(reactor: Any, seconds: float) -> None:
    from twisted.internet import task

    await task.deferLater(reactor, seconds, lambda: None)


async def wait_until(
    reactor: Any, condition: Callable[[], object], what: str, seconds: float = 10.0
) -> None:
    """Let the reactor run until ``condition()`` is true; fail naming ``what`` after ``seconds``."""
    deadline = reactor.seconds() + seconds
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await sleep(reactor, 0.01)


@implementer(ILogObserver)
@dataclass
class LogCapture:
    """Every log line emitted while installed (Twisted's global log)."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __call__(self, event: dict[str, Any]) -> None:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += " " + failure.getErrorMessage()
            self.failures.append(text + "\n" + failure.getTraceback())
        self.lines.append(text)

    def unexpected(self) -> list[str]:
        """Unhandled errors and logged failures: a bug, whatever the test asserted."""
        return self.failures + [line for line in self.lines if line.startswith("Unhandled")]

    def matching(self, *needles: str) -> list[str]:
        return [line for line in self.lines if all(n in line for n in needles)]

    async def wait_for(self, reactor: Any, *needles: str, seconds: float = 5.0) -> str:
        """The first line containing every needle, waiting up to ``seconds`` for it."""
        for _ in range(int(seconds / 0.02)):
            found = self.matching(*needles)
            if found:
                return found[0]
            await sleep(reactor, 0.02)
        raise AssertionError(f"no log line with {needles!r}; got:\n" + "\n".join(self.lines))


def capture_logs() -> Iterator[LogCapture]:
    """Capture the log while the test runs; fail it if anything logged an unhandled error."""
    capture = LogCapture()
    globalLogPublisher.addObserver(capture)
    try:
        yield capture
    finally:
        globalLogPublisher.removeObserver(capture)
    assert not capture.unexpected(), "\n".join(capture.unexpected())
