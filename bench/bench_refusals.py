"""make bench-refusals: the bytes an edge spends in an hour of being refused, old rule vs new.

An edge the cloud refuses (revoked, or the cloud's PostgreSQL down) used to reconnect at
once: ClientService reset its attempt count when TCP connected, so every refusal was
followed by a wait of backoff_initial·U(0.5, 1) and a new full TLS handshake.  Now the
count resets only on Welcome and the cloud's Error decides the wait
(gridedge.uplink.backoff, docs/edge.md "Backoff policy").

Method: bytes are measured, the hour is counted, nothing waits an hour.

1. Bytes per refused attempt, measured: the real gridedge uplink (UplinkService, real
   mutual TLS, bytes counted below TLS as the operator pays for them) against the real
   gridcloud CloudService on loopback, with a PostgreSQL cluster of the bench's own.  The
   uplink retries with delays of 10 ms here, for ``--attempts`` attempts per case; a
   refused edge keeps no TLS session, so every attempt is a full handshake, and each
   attempt's bytes are the counter's growth between two ends of attempts (median).  The
   wall time of an attempt on loopback is measured the same way.
2. Attempts in an hour, counted: the real ReconnectPolicy with the [uplink] defaults is fed
   the Error the cloud really sent, on a task.Clock: each attempt takes the measured time
   (``--attempt-seconds`` to assume a slower link), then the policy's delay, until 3600
   simulated seconds have passed.  While PostgreSQL is down the cloud's hint grows with the
   outage; it is taken from gridcloud.pool.DatabasePool on the same clock.  The row
   "refused" is any refusal without a hint (a batch the cloud cannot store, ...): the
   bytes of the database-down exchange (TLS, Hello, Error), the Error without its hint.
   The old rule is the same policy called as ClientService did: reset at every TCP
   connect, and deaf to the cloud's Error (it had no say), so every wait was
   backoff_initial·U(0.5, 1).

bytes per hour = attempts in the hour x bytes per attempt.  Prints a table, then one JSON
object as the very last line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from gridcloud import migrations, pki, revocation
from gridcloud.config import ServerConfig
from gridcloud.pool import DatabasePool
from gridcloud.server import CloudService
from gridedge.config import EdgeConfig, UplinkConfig
from gridedge.journal import Journal
from gridedge.uplink.backoff import ReconnectPolicy
from gridedge.uplink.link import LinkSettings
from gridedge.uplink.service import UplinkService
from gridedge.uplink.tls import DeviceIdentity
from gridedge.uplink.traffic import Traffic
from gridwire import Error, ErrorCode
from twisted.internet import defer, task, threads

import pgcluster  # from tools/, put on the path above

SERVER_NAME = "cloud.gridedge.test"
HOUR = 3600.0
EDGE_ID = "edge-0001"


class Recording(ReconnectPolicy):
    """A policy with tiny delays that notes each attempt's end: bytes so far, time, Error."""

    def __init__(self, uplink: Callable[[], UplinkService | None], clock: Any) -> None:
        super().__init__(0.01, 0.01, 1.0, 0.01)
        self.uplink = uplink
        self.clock = clock
        self.ends: list[tuple[int, float]] = []
        self.errors: list[Error] = []

    def refused(self, error: Error) -> None:
        self.errors.append(error)
        super().refused(error)

    def next_delay(self) -> float:
        service = self.uplink()
        counted = service.bytes_sent + service.bytes_received if service is not None else 0
        self.ends.append((counted, self.clock.seconds()))
        return super().next_delay()


async def measure(
    reactor: Any, port: int, tls: Path, journal: Journal, attempts: int
) -> tuple[int, float, Error]:
    """(median bytes per attempt, median seconds per attempt, the Error the cloud sent)."""
    holder: list[UplinkService] = []
    policy = Recording(lambda: holder[0] if holder else None, reactor)
    config = UplinkConfig(host="127.0.0.1", port=port, server_name=SERVER_NAME, tls_dir=tls)
    uplink = UplinkService(
        reactor, journal, Traffic(journal.path), host=config.host, port=port,
        server_name=SERVER_NAME, identity_loader=lambda: DeviceIdentity.load(tls),
        settings=LinkSettings.from_config(EdgeConfig("1.0", "A"), config),
        backoff=policy, connect_timeout=config.connect_timeout,
    )
    holder.append(uplink)
    uplink.startService()
    try:
        for _ in range(int(60 / 0.01)):
            if len(policy.ends) > attempts:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        else:
            raise RuntimeError(f"only {len(policy.ends)} attempts in 60 s")
    finally:
        await uplink.stopService()
    ends = policy.ends
    sizes = [b - a for (a, _), (b, _) in itertools.pairwise(ends)]
    times = [t1 - t0 - 0.01 for (_, t0), (_, t1) in itertools.pairwise(ends)]
    assert policy.errors, "the cloud refused nothing"
    return int(statistics.median(sizes)), max(0.0, statistics.median(times)), policy.errors[-1]


def attempts_in_an_hour(
    policy: ReconnectPolicy, refusal: Callable[[float], Error], attempt_seconds: float,
    reset_at_connect: bool,
) -> int:
    """Attempts the policy starts in an hour of refusals, counted on a task.Clock."""
    clock = task.Clock()
    count = 0

    def attempt() -> None:
        nonlocal count
        count += 1
        if reset_at_connect:  # the old ClientService: TCP connected, so its count restarted
            policy.welcomed()
        clock.callLater(attempt_seconds, refused)

    def refused() -> None:
        if not reset_at_connect:  # the old rule had no ear for the cloud's Error
            policy.refused(refusal(clock.seconds()))
        clock.callLater(policy.next_delay(), attempt)

    clock.callLater(0, attempt)
    while (due := min(c.getTime() for c in clock.getDelayedCalls())) < HOUR:
        clock.advance(due - clock.seconds())
    return count


def outage_hints(dsn: str) -> Callable[[float], int]:
    """The cloud's retry hint after ``t`` seconds of outage: gridcloud's own rule, on a Clock."""
    clock = task.Clock()
    pool = DatabasePool(clock, dsn, 1)
    pool.down_since = 0.0

    def hint(t: float) -> int:
        clock.advance(t - clock.seconds())
        return pool.retry_after()

    return hint


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-refusals-"))
    folder = pki.PKIDirectory(work / "pki")
    folder.init()
    folder.server([SERVER_NAME])
    issued, tls = folder.edge(EDGE_ID, work / "tls")
    journal = Journal(work / "journal.db", max_bytes=1 << 20)
    journal.open()
    cases: dict[str, tuple[int, float, Error]] = {}
    with pgcluster.temporary_cluster() as cluster:
        dsn = cluster.dsn()
        migrations.migrate(dsn)
        config = ServerConfig(
            listen="tcp:0:interface=127.0.0.1", cert=folder.path / pki.SERVER_CERT,
            key=folder.path / pki.SERVER_KEY, ca=folder.path / pki.CA_CERT, dsn=dsn, pool_size=2,
        )
        cloud = CloudService(reactor, config)
        cloud.startService()
        await cloud.ready
        port = cloud.port.getHost().port
        try:
            revocation.revoke_certificate(dsn, issued.serial, EDGE_ID, "bench")
            cases["revoked"] = await measure(reactor, port, tls, journal, args.attempts)
            # PostgreSQL down: the cloud refuses before it could look at revocations.
            await threads.deferToThread(cluster.stop, "fast")
            cases["database down"] = await measure(reactor, port, tls, journal, args.attempts)
            # Any other refusal (a batch the cloud cannot store, ...): the same exchange
            # (TLS, Hello, Error) without a hint.
            size, seconds, error = cases["database down"]
            cases["refused"] = (size, seconds, Error(code=error.code, detail=error.detail))
            hint = outage_hints(dsn)
        finally:
            await cloud.stopService()
    journal.close()

    defaults = UplinkConfig(host="x", port=1, server_name="x", tls_dir=work)

    def policy() -> ReconnectPolicy:
        return ReconnectPolicy(defaults.backoff_initial, defaults.backoff_max,
                               defaults.backoff_factor, defaults.backoff_revoked)

    rows: dict[str, dict[str, Any]] = {}
    for name, (size, seconds, error) in cases.items():
        duration = args.attempt_seconds if args.attempt_seconds is not None else seconds
        if error.retry_after:
            def refusal(t: float, e: Error = error) -> Error:
                return Error(code=e.code, detail=e.detail, retry_after=hint(t))
        else:
            def refusal(t: float, e: Error = error) -> Error:
                return e
        old = attempts_in_an_hour(policy(), refusal, duration, reset_at_connect=True)
        new = attempts_in_an_hour(policy(), refusal, duration, reset_at_connect=False)
        rows[name] = {
            "error": ErrorCode(error.code).name + (" + retry_after" if error.retry_after else ""),
            "bytes_per_attempt": size,
            "attempt_seconds": round(duration, 4),
            "old_attempts_per_hour": old,
            "new_attempts_per_hour": new,
            "old_bytes_per_hour": old * size,
            "new_bytes_per_hour": new * size,
            "ratio": round(old / new, 1),
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=8,
                        help="refused attempts measured per case")
    parser.add_argument("--attempt-seconds", type=float, default=None,
                        help="assume each attempt takes this long (default: as measured)")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    result: dict[str, Any] = {}

    def done(rows: dict[str, Any]) -> None:
        result.update(rows)

    d = defer.ensureDeferred(run(reactor, args))
    d.addCallbacks(done, lambda f: result.update(error=f.getTraceback()))
    d.addBoth(lambda _: reactor.stop())
    reactor.run()
    if "error" in result:
        print(result["error"], file=sys.stderr)
        return 1

    print(f"{'an hour of refusals':<16} {'cloud said':<30} {'B/attempt':>9} {'s/attempt':>9} "
          f"{'old: attempts':>13} {'old bytes':>11} {'new: attempts':>13} {'new bytes':>10} "
          f"{'old/new':>8}")
    for name, row in result.items():
        print(f"{name:<16} {row['error']:<30} {row['bytes_per_attempt']:>9} "
              f"{row['attempt_seconds']:>9.3f} {row['old_attempts_per_hour']:>13} "
              f"{row['old_bytes_per_hour']:>11} {row['new_attempts_per_hour']:>13} "
              f"{row['new_bytes_per_hour']:>10} {row['ratio']:>7}x")
    print("old: the count reset at every TCP connect; new: reset only on Welcome "
          "(docs/edge.md, 'Backoff policy')")
    print(json.dumps({"bench": "refusals", "per_hour": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
