"""``python -m gridedge.radio``: run the radio link alone, for bench work and field checks.

Opens the serial port (reopening it whenever it goes away), stores every
interval record in an SQLite file and answers commands typed on standard
input, one per line, with one JSON object per line on standard output:

    relay open METER [TIMEOUT]   open the meter's relay (supply off)
    relay close METER [TIMEOUT]  close it (supply on)
    meter METER                  what the registry knows about the meter
    stats                        the link's counters
    quit                         stop

Logs go to standard error.  SIGTERM and SIGINT stop it cleanly.  This is
also what the integration tests and ``make bench-radio`` run as "the edge".

Tests: tests/radio/test_end_to_end.py, tests/radio/test_restarts.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver

from .link import RadioLink
from .relays import RelayOutcome
from .service import RadioService
from .settings import LinkSettings
from .sink import SQLiteSink


def _parser() -> argparse.ArgumentParser:
    d = LinkSettings()
    p = argparse.ArgumentParser(
        prog="python -m gridedge.radio",
        description="Run the edge's radio link against a serial port, storing interval "
        "records in an SQLite file; commands on stdin, JSON answers on stdout.",
    )
    p.add_argument("--port", required=True, help="serial device, e.g. /dev/ttyS1 or gridsim's link")
    p.add_argument("--baudrate", type=int, default=115200, help="default: %(default)s")
    p.add_argument("--records", required=True, help="SQLite file for the records (created)")
    p.add_argument(
        "--synchronous",
        choices=["FULL", "NORMAL"],
        default="FULL",
        help="FULL survives power loss, NORMAL only a crash (faster); default %(default)s",
    )
    p.add_argument("--poll-rate", type=float, default=d.poll_rate, help="polls/s (%(default)s)")
    p.add_argument("--poll-burst", type=int, default=d.poll_burst, help="(%(default)s)")
    p.add_argument(
        "--poll-window", type=int, default=d.poll_window, help="intervals per poll (%(default)s)"
    )
    p.add_argument(
        "--polls-in-flight", type=int, default=d.max_polls_in_flight, help="(%(default)s)"
    )
    p.add_argument("--poll-timeout", type=float, default=d.poll_timeout, help="s (%(default)s)")
    p.add_argument("--backoff", type=float, default=d.backoff_initial, help="s (%(default)s)")
    p.add_argument("--backfill", type=int, default=d.backfill, help="intervals (%(default)s)")
    p.add_argument("--overdue-after", type=int, default=d.overdue_after, help="s (%(default)s)")
    p.add_argument("--scan-every", type=float, default=d.scan_every, help="s (%(default)s)")
    p.add_argument("--relay-timeout", type=float, default=d.relay_timeout, help="s (%(default)s)")
    p.add_argument(
        "--reopen-max",
        type=float,
        default=30.0,
        help="longest wait, s, between attempts to reopen a vanished port (%(default)s)",
    )
    p.add_argument("--stats-every", type=float, default=60.0, help="log counters every S seconds")
    return p


class _Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, link: RadioLink, stop: Any) -> None:
        self.link = link
        self.stop = stop

    def _say(self, obj: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(json.dumps(obj).encode() + b"\n")

    def lineReceived(self, line: bytes) -> None:
        words = line.decode(errors="replace").split()
        try:
            self._command(words)
        except (ValueError, IndexError) as exc:
            self._say({"error": f"{' '.join(words)!r}: {exc}"})

    def _command(self, words: list[str]) -> None:
        if not words:
            return
        if words[0] == "relay" and words[1] in ("open", "close"):
            meter = int(words[2])
            timeout = float(words[3]) if len(words) > 3 else None
            d = self.link.relay(meter, words[1] == "open", timeout=timeout)

            def report(outcome: RelayOutcome) -> None:
                self._say({"relay": dataclasses.asdict(outcome)})

            d.addCallback(report)
        elif words[0] == "meter":
            status = self.link.meter(int(words[1]))
            self._say({"meter": None if status is None else _status_dict(status)})
        elif words[0] == "stats":
            self._say({"stats": self.link.stats()})
        elif words[0] == "quit":
            self.stop()
        else:
            raise ValueError("unknown command")

    def connectionLost(self, reason: object = None) -> None:
        pass  # stdin closed: keep running until a signal


def _status_dict(status: Any) -> dict[str, Any]:
    out = dataclasses.asdict(status)
    if status.last_report is not None:
        out["last_report"] = status.last_report._asdict()
    return out


def _run(reactor: Any, args: argparse.Namespace) -> Deferred[None]:
    from twisted.internet import stdio

    settings = LinkSettings(
        poll_rate=args.poll_rate,
        poll_burst=args.poll_burst,
        poll_window=args.poll_window,
        max_polls_in_flight=args.polls_in_flight,
        poll_timeout=args.poll_timeout,
        backoff_initial=args.backoff,
        backfill=args.backfill,
        overdue_after=args.overdue_after,
        scan_every=args.scan_every,
        relay_timeout=args.relay_timeout,
    )
    sink = SQLiteSink(args.records, synchronous=args.synchronous)
    service = RadioService(
        args.port,
        args.baudrate,
        sink,
        reactor,
        settings,
        reopen_initial=min(0.5, args.reopen_max),
        reopen_max=args.reopen_max,
        stats_every=args.stats_every,
    )
    done: Deferred[None] = Deferred()

    def stop() -> None:
        if not done.called:
            d = service.stopService()

            def closed(_: object) -> None:
                sink.close()
                if not done.called:
                    done.callback(None)

            d.addBoth(closed)

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    stdio.StandardIO(_Commands(service.link, stop), reactor=reactor)  # type: ignore[no-untyped-call]
    service.startService()
    return done


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m gridedge.radio``."""
    from twisted.internet.task import react
    from twisted.logger import globalLogBeginner, textFileLogObserver

    args = _parser().parse_args(argv)
    observer: Any = textFileLogObserver(sys.stderr)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    react(_run, (args,))


if __name__ == "__main__":
    main()
