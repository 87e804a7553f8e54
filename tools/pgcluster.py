#!/usr/bin/env python3
"""A throwaway PostgreSQL cluster for tests, benchmarks and the demo.

Why this exists: tests must run against a real PostgreSQL, but must not touch
whatever cluster the machine may already run, need no configuration, and must
leave nothing running behind them.  So each run gets its own cluster in a
folder of its own (``initdb`` + ``pg_ctl``), listening only on 127.0.0.1 on a
free port, with its Unix socket inside that folder.

``initdb`` refuses to run as root; when invoked as root the server runs as the
unprivileged ``postgres`` user (created by Debian's postgresql package) and
the folder is handed to it.

The cluster uses ``trust`` authentication on loopback only: it holds test or
demo data, is reachable only from this machine and lives only as long as the
command that started it.  Never point a production deployment at it.

Use:
    pgcluster.py run [--dir DIR] [--keep] -- COMMAND...   start, run COMMAND, stop
    pgcluster.py start --dir DIR                          start (or reuse) and print the DSN
    pgcluster.py stop --dir DIR
    pgcluster.py dsn --dir DIR

``run`` exports ``GRIDEDGE_PG_DSN`` (a DSN for the ``postgres`` maintenance
database) to COMMAND and stops the server however COMMAND ends.
Tests: tests/test_pgcluster.py.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "gridedge"
DSN_ENV = "GRIDEDGE_PG_DSN"


class ClusterError(RuntimeError):
    """The cluster could not be created, started or stopped."""


def _bindir() -> Path:
    """Find PostgreSQL's server programs (Debian keeps them out of PATH)."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override)
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise ClusterError(
        "PostgreSQL server programs not found: install Debian's postgresql-15 "
        "package (make does this) or set PG_BINDIR"
    )


def _run_as() -> tuple[list[str], pwd.struct_passwd | None]:
    """Return the command prefix and account that the server runs under."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError as exc:
        raise ClusterError(
            "running as root, but there is no 'postgres' user to run the server as "
            "(initdb refuses root); install Debian's postgresql package"
        ) from exc
    return ["runuser", "-u", "postgres", "--"], account


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One PostgreSQL cluster living in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.data = self.directory / "data"
        self.socket_dir = self.directory / "run"
        self.port_file = self.directory / "port"

    @property
    def port(self) -> int:
        return int(self.port_file.read_text())

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={dbname}"

    def _pg(self, program: str, *args: str, quiet: bool = True) -> None:
        prefix, _ = _run_as()
        cmd = [*prefix, str(_bindir() / program), *args]
        result = subprocess.run(cmd, capture_output=quiet, text=True)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout or "").strip() if quiet else ""
            raise ClusterError(f"{program} failed ({result.returncode}): {detail}")

    def _ensure_initialised(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        _, account = _run_as()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if account is not None:
            for path in (self.directory, self.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
            # The server's user must be able to reach the folder from /.
            parent = self.directory.parent
            while parent != parent.parent:
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    os.chmod(parent, mode | 0o001)
                parent = parent.parent
        self._pg(
            "initdb", "--pgdata", str(self.data), "--username", SUPERUSER,
            "--auth", "trust", "--encoding", "UTF8", "--locale", "C.UTF-8",
            "--no-sync",
        )

    def is_running(self) -> bool:
        pidfile = self.data / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return True

    def start(self, settings: dict[str, str] | None = None) -> None:
        """Initialise if needed and start the server; reuse it if already up."""
        self._ensure_initialised()
        if self.is_running():
            return
        port = free_port()
        self.port_file.write_text(str(port))
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "300",
            "shared_buffers": "256MB",
            "logging_collector": "off",
            **(settings or {}),
        }
        opts = " ".join(f"-c {k}={v}" for k, v in options.items())
        self._pg(
            "pg_ctl", "--pgdata", str(self.data), "--wait", "--timeout", "60",
            "--log", str(self.directory / "server.log"), "--options", opts, "start",
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ):
                return
            time.sleep(0.1)
        raise ClusterError(
            f"PostgreSQL did not accept connections; see {self.directory}/server.log")

    def stop(self, mode: str = "fast") -> None:
        if not self.is_running():
            return
        self._pg("pg_ctl", "--pgdata", str(self.data), "--wait", "--mode", mode, "stop")

    def kill(self) -> None:
        """Stop the server the hard way, as a crash would (used by fault tests)."""
        self._pg("pg_ctl", "--pgdata", str(self.data), "--mode", "immediate", "stop")


@contextlib.contextmanager
def temporary_cluster() -> Iterator[Cluster]:
    """Yield a started cluster in a temporary folder; stop and delete it afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="gridedge-pg-"))
    cluster = Cluster(tmp)
    try:
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(ClusterError):
            cluster.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


def _cmd_run(args: argparse.Namespace) -> int:
    if not args.command:
        print("pgcluster run: give a command after --", file=sys.stderr)
        return 2
    command = args.command[1:] if args.command[0] == "--" else args.command
    if args.dir:
        cluster = Cluster(Path(args.dir))
        cm: contextlib.AbstractContextManager[Cluster] = contextlib.nullcontext(cluster)
        cluster.start()
    else:
        cm = temporary_cluster()
    with cm as cluster:
        print(f"pgcluster: PostgreSQL on 127.0.0.1:{cluster.port} ({cluster.directory})",
              flush=True)
        env = {**os.environ, DSN_ENV: cluster.dsn()}
        child = subprocess.Popen(command, env=env)

        def forward(signum: int, _frame: object) -> None:
            child.send_signal(signum)

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, forward)
        try:
            code = child.wait()
        finally:
            if args.dir and not args.keep:
                cluster.stop()
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser(
        "run", help="start a cluster, run a command with GRIDEDGE_PG_DSN set, stop it")
    run.add_argument(
        "--dir", help="keep the cluster in DIR (default: a temporary folder, deleted after)")
    run.add_argument("--keep", action="store_true", help="leave the server running after COMMAND")
    run.add_argument("command", nargs=argparse.REMAINDER)
    for name in ("start", "stop", "dsn"):
        p = sub.add_parser(name, help=f"{name} the cluster in DIR")
        p.add_argument("--dir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.action == "run":
            return _cmd_run(args)
        cluster = Cluster(Path(args.dir))
        if args.action == "start":
            cluster.start()
            print(cluster.dsn())
        elif args.action == "stop":
            cluster.stop()
        else:
            print(cluster.dsn())
    except ClusterError as exc:
        print(f"pgcluster: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
