#!/usr/bin/env python3
"""Run the whole test suite as two pytest sessions side by side: the tests marked ``fleet``
in one, everything else in the other.

Why: the OTA fleet test (tests/qemu/test_qemu_ota.py) follows two emulated units through a
whole rollout, reboots and a rollback, about 18 minutes in which QEMU keeps one core busy.
Run after the rest of the suite it would double the time of ``make test``; beside it, on a
2-core machine, the two sessions take little more than the longer of the two. Each session is
an ordinary pytest run over the same PostgreSQL cluster (each test makes its own database,
named after its process), so a test means the same in either.

The other session's output is shown as it comes; the fleet session's goes to a log file
(``--fleet-log``) that is printed whole when it ends, so the two never interleave. The exit
status is pytest's: non-zero when either session failed. A session that found no test at all
(pytest's status 5, e.g. ``PYTEST_ARGS=tests/wire``) is not a failure unless both found none.

Usage (what ``make test`` runs, under ``tools/pgcluster.py run``):
    tools/suite.py [--fleet-log FILE] [PYTEST_ARGS...]

Tests: tests/test_suite_runner.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

#: pytest's exit status when it collected no test
NO_TESTS = 5


def sessions(pytest_args: list[str]) -> dict[str, list[str]]:
    """The two pytest command lines: the fleet, and the rest."""
    base = [sys.executable, "-m", "pytest"]
    return {
        "fleet": [*base, "-m", "fleet", *pytest_args],
        "rest": [*base, "-m", "not fleet", *pytest_args],
    }


def outcome(codes: dict[str, int]) -> int:
    """One exit status for both sessions."""
    ran = {name: code for name, code in codes.items() if code != NO_TESTS}
    if not ran:
        return NO_TESTS
    return max(ran.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the test suite as two pytest sessions side by side: the tests "
                    "marked 'fleet' (long QEMU runs) and all the others.",
        epilog="Other arguments go to both pytest sessions.")
    parser.add_argument("--fleet-log", type=Path, default=Path("var/test-fleet.log"),
                        help="where the fleet session writes (default: %(default)s)")
    args, pytest_args = parser.parse_known_args(argv)
    commands = sessions(pytest_args)
    args.fleet_log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with args.fleet_log.open("wb") as log:
        fleet = subprocess.Popen(commands["fleet"], stdout=log, stderr=subprocess.STDOUT)
        print(f"suite: the fleet tests run beside the others; their output goes to "
              f"{args.fleet_log} and is printed when they end", flush=True)
        try:
            rest = subprocess.call(commands["rest"])
            print(f"suite: the other tests ended after {time.monotonic() - started:.0f} s "
                  f"(pytest status {rest}); waiting for the fleet tests", flush=True)
            code = fleet.wait()
        except BaseException:
            fleet.terminate()
            fleet.wait(60)
            raise
    sys.stdout.write(f"\n===== fleet session ({args.fleet_log}) =====\n")
    sys.stdout.flush()
    sys.stdout.buffer.write(args.fleet_log.read_bytes())
    print(f"suite: both sessions ended after {time.monotonic() - started:.0f} s "
          f"(pytest status: fleet {code}, others {rest})", flush=True)
    return outcome({"fleet": code, "rest": rest})


if __name__ == "__main__":
    sys.exit(main())
