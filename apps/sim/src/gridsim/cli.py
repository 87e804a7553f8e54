"""``gridsim``: a radio module with N simulated meters behind a pseudo-terminal.

Run ``gridsim --help`` for the options; docs/radio.md has a walk-through.

Tests: tests/sim/test_sim_cli.py, tests/radio/test_end_to_end.py, tests/radio/test_restarts.py.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gridradio import INTERVAL_SECONDS, Flags, ResetReason
from twisted.internet.defer import Deferred
from twisted.protocols.basic import LineReceiver

from .model import FIRST_METER_ID, FLEETS, make_meters
from .module import FREEZE_AFTER_END, FaultRates, RadioModule
from .truth import TruthWriter

_DESCRIPTION = """\
Plays a radio module with N smart meters behind a serial port, for the edge's
radio link to talk to. It creates a pseudo-terminal, makes PORT a symbolic link
to it (open PORT as you would /dev/ttyS1), and sends what a real module sends:
each meter's 15-minute interval report, meter joins and leaves, mesh status and
a heartbeat; it answers polls and relay commands.

Meters follow daily load profiles of a mini-grid (households with evening peaks,
small businesses by day), voltage sags with load, and an open relay stops
consumption. The same --seed gives the same meters and readings.

Faults can be injected at rates (options below) or on demand by typing on
standard input: reset | silence METER SECONDS | tamper METER |
outage METER SECONDS | corrupt N | drop N | noise BYTES | status.
SIGUSR1 resets the module. SIGTERM or SIGINT stop gridsim cleanly and remove
the PORT link.
"""

_EPILOG = f"""\
examples:
  gridsim --meters 1000 --port /tmp/radio
  gridsim --meters 5000 --port /tmp/radio --speed 2000 --days 1 --truth truth.sqlite \\
          --corrupt-rate 0.01 --noise-rate 0.002
  gridsim ... --truth truth.sqlite --resume     # continue after a restart

meter ids are {FIRST_METER_ID}, {FIRST_METER_ID + 1}, ... (--fleet field: sparse serials)
times are Unix seconds UTC or ISO 8601 (2026-01-05T00:00:00Z).
"""


def parse_time(text: str) -> int:
    """Unix seconds from "1767571200" or "2026-01-05T00:00:00Z" (UTC)."""
    if text.isdigit():
        return int(text)
    text = text.removesuffix("Z").removesuffix("+00:00")
    for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return calendar.timegm(time.strptime(text, fmt))
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(f"not a time: {text!r} (use Unix seconds or ISO 8601 UTC)")


def parse_duration(text: str) -> int:
    """Seconds from "3600", "90m", "6h" or "2d"."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 3600, 90m, 6h, 1d)"
        ) from None


def _rate(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("rates cannot be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gridsim",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("the simulation")
    g.add_argument("--meters", type=int, default=1000, help="number of meters (default 1000)")
    g.add_argument("--port", required=True, help="path of the link to create, e.g. /tmp/radio")
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g.add_argument(
        "--fleet",
        choices=FLEETS,
        default="lab",
        help="lab: ids 100001, 100002, ...; field: sparse 6-7 digit serials and ~5%% dormant "
        "meters (default lab)",
    )
    g.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    g.add_argument(
        "--anchor",
        type=float,
        help="Unix time (real) at which the simulated clock reads --start (default: when "
        "gridsim starts); lets another time-scaled process share the same simulated clock",
    )
    g.add_argument(
        "--start",
        type=parse_time,
        help="simulated start time (default: now, rounded down to 15 min)",
    )
    d = g.add_mutually_exclusive_group()
    d.add_argument(
        "--duration",
        type=parse_duration,
        help="meters record for this long (3600, 90m, 6h, 1d); default: forever",
    )
    d.add_argument("--days", type=float, help="same as --duration in days")
    g.add_argument(
        "--linger",
        type=float,
        help="after the last interval, keep answering polls this many real seconds, then exit "
        "(default: until stopped)",
    )
    g.add_argument("--tz-offset", type=float, default=3.0, help="local time - UTC, hours (3)")
    g.add_argument("--truth", help="SQLite file for the ground truth (every record produced)")
    g.add_argument("--resume", action="store_true", help="continue the run stored in --truth")
    g.add_argument(
        "--meter-memory", type=int, default=192, help="intervals each meter keeps for polls (192)"
    )
    f = p.add_argument_group("faults (per-frame probabilities; per-day expectations)")
    f.add_argument("--corrupt-rate", type=_rate, default=0.0, help="frames with a bit flipped")
    f.add_argument("--noise-rate", type=_rate, default=0.0, help="noise bursts before frames")
    f.add_argument("--drop-rate", type=_rate, default=0.0, help="reports lost in the mesh")
    f.add_argument(
        "--silence-rate", type=_rate, default=0.0, help="silent spells per meter per day"
    )
    f.add_argument("--tamper-rate", type=_rate, default=0.0, help="tamper events per meter per day")
    f.add_argument("--outage-rate", type=_rate, default=0.0, help="outages per meter per day")
    f.add_argument("--reset-rate", type=_rate, default=0.0, help="module resets per day")
    f.add_argument(
        "--relay-open-rate",
        type=_rate,
        default=0.0,
        help="prepaid cut-offs per meter per day (relay open 1-12 h)",
    )
    t = p.add_argument_group("plumbing")
    t.add_argument("--tick", type=float, default=0.02, help="real seconds between steps (0.02)")
    t.add_argument(
        "--uart-buffer", type=int, default=256 * 1024, help="bytes queued before dropping (256 KiB)"
    )
    t.add_argument("--log-every", type=float, default=10.0, help="progress log period, s (10)")
    return p


class _Control(LineReceiver):
    """Faults on demand, one command per line on standard input."""

    delimiter = b"\n"

    def __init__(self, module: RadioModule, say: Any) -> None:
        self.module = module
        self.say = say

    def lineReceived(self, line: bytes) -> None:
        words = line.decode(errors="replace").split()
        if not words:
            return
        m = self.module
        try:
            cmd, args = words[0], words[1:]
            if cmd == "reset":
                m.reset(ResetReason.COMMANDED)
            elif cmd == "silence":
                m.silence(int(args[0]), float(args[1]))
            elif cmd == "tamper":
                m.tamper(int(args[0]))
            elif cmd == "outage":
                m.outage(int(args[0]), float(args[1]))
            elif cmd == "corrupt":
                m.corrupt_next(int(args[0]))
            elif cmd == "drop":
                m.drop_next(int(args[0]))
            elif cmd == "noise":
                m.noise(int(args[0]))
            elif cmd == "status":
                pass
            else:
                raise ValueError("unknown command")
        except (ValueError, IndexError, KeyError) as exc:
            self.say(f"control: {' '.join(words)!r} refused: {exc!r}")
            return
        self.say(f"control: {' '.join(words)} done; {_progress(m)}")

    def connectionLost(self, reason: object = None) -> None:
        pass  # stdin closed (e.g. /dev/null): keep running


def _progress(m: RadioModule) -> str:
    c = m.counters
    return (
        f"sim time {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(m.module_time))}Z, "
        f"{c.records_produced} records produced, {c.reports_sent} reports sent "
        f"({c.reports_dropped} dropped, {c.frames_corrupted} frames corrupted, "
        f"{c.noise_bursts} noise bursts), {c.polls_answered} polls and "
        f"{c.relay_commands} relay commands answered ({c.relay_frames} relay frames read), "
        f"{c.resets} module boots"
    )


def _run(reactor: Any, args: argparse.Namespace) -> Deferred[None]:
    from twisted.internet import stdio
    from twisted.internet.task import LoopingCall

    from .serialpty import PtyLink, open_pty

    def say(message: str) -> None:
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        sys.stderr.write(f"{stamp} gridsim: {message}\n")
        sys.stderr.flush()

    start = args.start if args.start is not None else int(time.time())
    start -= start % INTERVAL_SECONDS
    if args.days is not None:
        args.duration = int(args.days * 86400)
    end = start + args.duration if args.duration else 2**32 - 1 - 2 * 86400
    meters = make_meters(args.meters, args.seed, args.fleet)
    truth = None
    memory = None
    if args.truth:
        truth = TruthWriter(args.truth, resume=args.resume)
        if truth.resumed:
            meta = truth.meta()
            if (meta.get("seed"), meta.get("meters"), meta.get("fleet", "lab")) != (
                args.seed, args.meters, args.fleet
            ):
                raise SystemExit(
                    f"gridsim: {args.truth} is a run with seed {meta.get('seed')}, "
                    f"{meta.get('meters')} meters and fleet {meta.get('fleet', 'lab')}; resume "
                    "it with the same --seed, --meters and --fleet"
                )
            start, end = meta["start"], meta["end"]
            memory = truth.latest(args.meter_memory)
            for meter in meters:
                records = memory.get(meter.params.meter_id)
                if records:
                    meter.energy = float(records[-1].energy_wh)
                    meter.relay_open = bool(records[-1].flags & Flags.RELAY_OPEN)
        else:
            truth.set_meta(
                seed=args.seed,
                meters=args.meters,
                fleet=args.fleet,
                start=start,
                end=end,
                interval=INTERVAL_SECONDS,
                tz_offset=args.tz_offset,
                complete=False,
                sim_time=start,
            )
            truth.add_meters((m.params.meter_id, m.params.kind, int(m.energy)) for m in meters)
    elif args.resume:
        raise SystemExit("gridsim: --resume needs --truth")
    module = RadioModule(
        meters,
        seed=args.seed,
        start=start,
        end=end,
        truth=truth,
        faults=FaultRates(
            corrupt=args.corrupt_rate,
            noise=args.noise_rate,
            drop=args.drop_rate,
            silence_per_day=args.silence_rate,
            tamper_per_day=args.tamper_rate,
            outage_per_day=args.outage_rate,
            reset_per_day=args.reset_rate,
            relay_open_per_day=args.relay_open_rate,
        ),
        tz_offset_h=args.tz_offset,
        memory_intervals=args.meter_memory,
        resumed_memory=memory,
        log=say,
    )
    master, slave, device = open_pty(args.port)
    link = PtyLink(reactor, master, slave, module.receive)
    link.startReading()  # type: ignore[no-untyped-call]
    say(
        f"{args.meters} meters on {args.port} -> {device}, seed {args.seed}, speed {args.speed}x, "
        + ("resuming" if memory is not None else "starting")
        + f" at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(int(module.now)))}"
        + (f", truth in {args.truth}" if args.truth else "")
    )
    sim_anchor = module.now
    wall_anchor = args.anchor if args.anchor is not None else reactor.seconds()
    done: Deferred[None] = Deferred()
    finished_at: list[float] = []

    def tick() -> None:
        now = max(module.now, sim_anchor + (reactor.seconds() - wall_anchor) * args.speed)
        data = module.advance(now)
        if data:
            link.send(data, args.uart_buffer)
        if (
            args.linger is not None
            and module.complete
            and module.now >= module.end + FREEZE_AFTER_END
        ):
            if not finished_at:
                finished_at.append(reactor.seconds())
                say(f"run complete; answering polls for {args.linger:g} s more")
            elif reactor.seconds() - finished_at[0] >= args.linger:
                stop()

    def log_progress() -> None:
        say(_progress(module) + (f"; {link.overflows} UART overflows" if link.overflows else ""))

    def stop() -> None:
        if done.called:
            return
        for loop in (ticker, logger):
            if loop.running:
                loop.stop()
        link.close()
        try:
            if os.path.islink(args.port) and os.readlink(args.port) == device:
                os.unlink(args.port)
        except OSError:
            pass
        if truth is not None:
            truth.close()
        say("stopped; " + _progress(module))
        done.callback(None)

    reactor.addSystemEventTrigger("before", "shutdown", stop)
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(module.reset))
    ticker = LoopingCall(tick)
    ticker.clock = reactor
    ticker.start(args.tick)
    logger = LoopingCall(log_progress)
    logger.clock = reactor
    logger.start(args.log_every, now=False)
    with contextlib.suppress(OSError):  # no usable stdin: faults only by rate and SIGUSR1
        stdio.StandardIO(_Control(module, say), reactor=reactor)  # type: ignore[no-untyped-call]
    return done


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``gridsim`` command."""
    from twisted.internet.task import react

    args = build_parser().parse_args(argv)
    if args.meters < 1:
        raise SystemExit("gridsim: --meters must be at least 1")
    if args.speed <= 0:
        raise SystemExit("gridsim: --speed must be positive")
    if not Path(args.port).parent.is_dir():
        raise SystemExit(f"gridsim: no directory for {args.port}")
    try:
        react(_run, (args,))
    except FileExistsError as exc:
        raise SystemExit(f"gridsim: {exc}") from None


if __name__ == "__main__":
    main()
