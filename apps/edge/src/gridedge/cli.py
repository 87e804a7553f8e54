"""The `gridedge` command: run the unit, ask it whether it is healthy, read its counters.

    gridedge run --config /data/gridedge/gridedge.toml
    gridedge health --config /data/gridedge/gridedge.toml [--running] [--json]
    gridedge traffic --config /data/gridedge/gridedge.toml

Exit codes: 0 success/healthy, 1 unhealthy (health) or failure, 2 bad usage or
configuration (the message names the file, section and key).

Tests: tests/edge/test_edge_cli.py, tests/edge/test_health.py, tests/system/.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gridedge.config import Config, ConfigError, load

_LEVELS = {"debug": "debug", "info": "info", "warn": "warn", "error": "error"}

#: ``gridedge run``'s exit status after a clean stop for a reboot (a ``reboot`` command, an
#: installed update) with no ``[commands] reboot_command``: the firmware's service wrapper,
#: which runs as root while gridedge does not, reboots the unit on it (board/common,
#: usr/libexec/gridedge/gridedge-service).  75 is EX_TEMPFAIL: "come back later".
EXIT_REBOOT = 75


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gridedge",
        description="The grid edge unit: radio link -> journal -> TLS uplink to the cloud.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the unit (radio link, journal, uplink) until SIGTERM")
    health = sub.add_parser(
        "health", help="ask the running unit whether it is healthy (exit 0 if so, 1 if not)")
    health.add_argument("--json", action="store_true", help="print the full report as JSON")
    health.add_argument(
        "--running", action="store_true",
        help="only check that every part runs and the journal writes, not that meters and the "
             "cloud were heard recently (what the firmware waits for before marking a slot good)")
    health.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for the unit's answer (default 5)")
    traffic = sub.add_parser("traffic", help="print the bytes sent/received per day")
    for p in (run, health, traffic):
        p.add_argument("--config", required=True, type=Path, metavar="FILE",
                       help="the unit's TOML configuration (see docs/edge.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load(args.config)
    except ConfigError as exc:
        print(f"gridedge: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        return run(config)
    if args.command == "health":
        return health(config, as_json=args.json, timeout=args.timeout, running=args.running)
    return traffic(config)


def run(config: Config) -> int:
    """Start the supervision tree on the global reactor; stop cleanly on SIGTERM/SIGINT."""
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        Logger,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from gridedge.services import Unit

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(
        _LEVELS[config.log.level]))
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stdout), [predicate])],
        redirectStandardIO=False,
    )
    log = Logger(namespace="gridedge")
    log.info("gridedge {version} (slot {slot}) starting with {config}; data in {data}",
             version=config.edge.firmware_version, slot=config.edge.boot_slot,
             config=str(config.source), data=str(config.data_dir))
    unit = Unit(config, reactor)
    unit.stop = _stop_once_on_signals(reactor)  # a reboot command stops the same way
    reactor.callWhenRunning(unit.startService)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: _stopping(log, unit))
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]  # on ReactorBase, not IReactorCore
    # Stopped and flushed: a late signal must not turn a clean exit into death by signal.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    log.info("gridedge stopped")
    if unit.reboot_requested:
        if not config.commands.reboot_command:
            log.warn("stopped for a reboot: exit status {status} asks the service wrapper to "
                     "reboot the unit", status=EXIT_REBOOT)
            return EXIT_REBOOT
        log.warn("rebooting: {argv}", argv=" ".join(config.commands.reboot_command))
        import subprocess

        return subprocess.call(list(config.commands.reboot_command))
    return 0


def _stop_once_on_signals(reactor: Any) -> Callable[[], None]:
    """Stop on the first SIGTERM/SIGINT and ignore repeats.

    At shutdown, BusyBox init signals every process after the init script has already
    stopped the service, so gridedge can get SIGTERM twice while it drains; Twisted's own
    handler would call reactor.stop() again and log a ReactorNotRunning traceback, and
    once Twisted restores the default handlers during shutdown a late SIGTERM would kill
    the process before the journal is closed. So the reactor runs without its own signal
    handlers and these stay in place until the process exits. Without Twisted's handlers
    nothing reaps children either, and the page hashes passwords in child processes
    (gridedge.web.hashing): SIGCHLD asks the reactor to reap them, the way Twisted's own
    handler does, so their processEnded fires.
    """
    stopping = False

    def stop() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            reactor.stop()

    def on_signal(_signum: int, _frame: object) -> None:
        reactor.callFromThread(stop)

    def on_child(_signum: int, _frame: object) -> None:
        from twisted.internet.process import reapAllProcesses

        reactor.callFromThread(reapAllProcesses)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGCHLD, on_child)
    return stop


def _stopping(log: Any, root: Any) -> Any:
    log.info("gridedge stopping")
    return root.stopService()


def health(config: Config, *, as_json: bool, timeout: float, running: bool = False) -> int:
    """Print the verdict of the running unit (see gridedge.health for the rule)."""
    from gridedge.health import ask

    try:
        report = ask(config.health.socket, timeout=timeout)
    except (OSError, ValueError) as exc:
        print(f"UNHEALTHY: gridedge is not answering on {config.health.socket} ({exc})")
        return 1
    ok, problems = ((report["running"], report["running_problems"]) if running
                    else (report["healthy"], report["problems"]))
    if as_json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif ok:
        print("running" if running else "healthy")
    else:
        print("NOT RUNNING:" if running else "UNHEALTHY:")
        for problem in problems:
            print(f"  - {problem}")
    if not as_json:
        for note in report.get("notes", []):
            print(f"  note: {note}")
    return 0 if ok else 1


def traffic(config: Config) -> int:
    """Bytes on the cellular link per UTC day, as the uplink counted them (works while running)."""
    from gridedge.uplink.traffic import Traffic, TrafficError

    path = config.journal.path
    if not path.exists():
        print(f"gridedge: no journal at {path} yet", file=sys.stderr)
        return 1
    try:
        days = Traffic(path).per_day()
    except TrafficError as exc:
        print(f"gridedge: {exc}", file=sys.stderr)
        return 1
    print(f"{'day (UTC)':<12} {'sent':>14} {'received':>14}")
    for day, (sent, received) in days.items():
        print(f"{day:<12} {sent:>14,} {received:>14,}")
    budget = int(config.uplink.budget_mb_per_month * 1e6)
    if budget > 0:
        month = time.strftime("%Y-%m", time.gmtime())
        used = sum(s + r for day, (s, r) in days.items() if day.startswith(month))
        print(f"month {month}: {used:,} of {budget:,} bytes budgeted "
              f"({100 * used / budget:.1f}%; [uplink] budget_mb_per_month)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
