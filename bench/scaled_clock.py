"""Run a Twisted command-line program with its reactor clock running N times faster.

Why: bench/bench_link.py plays a whole day of a unit in minutes with the real
`gridedge run` and its production defaults.  Only the clock may change, so
this launcher changes only the clock: the global reactor's ``seconds()`` reads
``start + (now - anchor) * speed`` (the same simulated clock gridsim runs with
``--start START --speed SPEED --anchor ANCHOR``), and the reactor's wait for
its next timer is divided by ``speed``.  Every ``callLater`` in the program
(linger, heartbeats, timeouts, backoff, flushes) then fires at its simulated
time; nothing else in the program is touched.

Usage: scaled_clock.py START SPEED ANCHOR MODULE [ARGS...]
       (runs ``MODULE.main(ARGS)``, e.g. ``gridedge.cli run --config X``)
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def scale(reactor: Any, start: float, speed: float, anchor: float) -> None:
    """Make ``reactor`` keep simulated time (call before anything schedules a timer)."""
    real_seconds = reactor.seconds
    real_timeout = reactor.timeout

    def seconds() -> float:
        return start + (real_seconds() - anchor) * speed

    def timeout() -> float | None:
        wait = real_timeout()
        return None if wait is None else wait / speed

    reactor.seconds = seconds
    reactor.timeout = timeout


def main(argv: list[str]) -> int:
    start, speed, anchor = float(argv[0]), float(argv[1]), float(argv[2])
    from twisted.internet import reactor

    scale(reactor, start, speed, anchor)
    module = importlib.import_module(argv[3])
    result = module.main(argv[4:])
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
