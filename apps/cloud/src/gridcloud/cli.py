"""The ``gridcloud`` command: ``serve``, ``api``, ``pipeline``, ``apikey``, ``migrate``, ``pki``,
``backup``, ``restore`` and ``retention``.

Each subcommand is a thin layer over a library module (server, migrations,
pki, revocation) so that tests call the same code without a subprocess.
Errors the operator can fix are one line on stderr and exit status 2; keys
are never printed.  Reference: docs/cloud.md.

Tests: tests/cloud/test_cloud_cli.py, tests/cloud/test_api_auth.py, tests/cloud/test_api_config.py,
tests/cloud/test_cloud_backup.py, tests/pipeline/test_pipeline_service.py.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2

from . import logformat, migrations, pki, revocation
from .api import keys
from .api.config import ApiConfig, load_api_config
from .backup import BackupError
from .config import ConfigError, ServerConfig, load_config

DSN_ENV = "GRIDCLOUD_DSN"


class UsageError(Exception):
    """A mistake on the command line or in the configuration."""


def _dsn(args: argparse.Namespace) -> str:
    dsn = args.dsn or os.environ.get(DSN_ENV)
    if not dsn and getattr(args, "config", None):
        dsn = load_config(args.config).dsn
    if not dsn:
        raise UsageError(f"no database: give --dsn, --config or set {DSN_ENV}")
    return str(dsn)


# -- serve --------------------------------------------------------------------------------


def _serve_config(args: argparse.Namespace) -> ServerConfig:
    base = load_config(args.config) if args.config else ServerConfig()
    return base.with_overrides(
        listen=args.listen,
        cert=args.cert,
        key=args.key,
        ca=args.ca,
        issuing_ca_cert=args.issuing_ca_cert,
        issuing_ca_key=args.issuing_ca_key,
        certificate_days=args.certificate_days,
        dsn=args.dsn or (None if base.dsn else os.environ.get(DSN_ENV)),
        pool_size=args.pool_size,
        migrate=True if args.migrate else None,
    ).validate()


def raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one: one socket per edge, thousands of edges."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def cmd_serve(args: argparse.Namespace) -> int:
    log_format = _log_format(args)
    config = _serve_config(args)
    from .server import check_schema

    assert config.dsn
    check_schema(config.dsn, apply=config.migrate)
    raise_fd_limit()

    from .server import CloudService

    return _serve_until_stopped("gridcloud serve", lambda reactor: CloudService(reactor, config),
                                log_format)


# -- api ----------------------------------------------------------------------------------


def _api_config(args: argparse.Namespace) -> ApiConfig:
    base = load_api_config(args.config) if args.config else ApiConfig()
    return base.with_overrides(
        listen=args.listen,
        dsn=args.dsn or (None if base.dsn else os.environ.get(DSN_ENV)),
        pool_size=args.pool_size,
        public_url=args.public_url,
        migrate=True if args.migrate else None,
    ).validate()


def cmd_api(args: argparse.Namespace) -> int:
    log_format = _log_format(args)
    config = _api_config(args)
    from .server import check_schema

    assert config.dsn
    check_schema(config.dsn, apply=config.migrate)

    from .api.service import ApiService

    return _serve_until_stopped("gridcloud api", lambda reactor: ApiService(reactor, config),
                                log_format)


def _log_format(args: argparse.Namespace) -> str:
    fmt = args.log_format or os.environ.get(logformat.ENV) or "text"
    if fmt not in logformat.FORMATS:
        raise UsageError(f"{logformat.ENV}={fmt!r}: must be one of {', '.join(logformat.FORMATS)}")
    return str(fmt)


def _serve_until_stopped(name: str, make: Any, log_format: str = "text") -> int:
    """Log to stderr (text or JSON lines), start ``make(reactor)``, run until SIGTERM/SIGINT.

    The service's ``ready`` Deferred failing (PostgreSQL unreachable, port taken) is one line
    on stderr and a stop, not a traceback; stopping waits for the service's own stop.
    """
    from twisted.internet import defer, task
    from twisted.logger import globalLogBeginner

    observer: Any = logformat.observer(sys.stderr, log_format)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def run(reactor: Any) -> Any:
        svc = make(reactor)
        svc.startService()
        finished: defer.Deferred[None] = defer.Deferred()

        def stop() -> Any:
            d = svc.stopService()
            d.addBoth(lambda _: finished.callback(None) if not finished.called else None)
            return d

        reactor.addSystemEventTrigger("before", "shutdown", stop)

        def failed(failure: Any) -> None:
            print(f"{name}: {failure.getErrorMessage()}", file=sys.stderr)
            reactor.stop()

        svc.ready.addErrback(failed)
        return finished

    task.react(run)
    return 0


# -- pipeline -----------------------------------------------------------------------------


def _pipeline_config(args: argparse.Namespace) -> Any:
    from .pipeline.config import PipelineConfig, load_pipeline_config

    base = load_pipeline_config(args.config) if args.config else PipelineConfig()
    return base.with_overrides(
        dsn=args.dsn or (None if base.dsn else os.environ.get(DSN_ENV)),
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        migrate=True if args.migrate else None,
    ).validate()


def cmd_pipeline(args: argparse.Namespace) -> int:
    config = _pipeline_config(args)
    from .server import check_schema

    assert config.dsn
    check_schema(config.dsn, apply=config.migrate)

    from .pipeline.service import PipelineService

    return _serve_until_stopped("gridcloud pipeline",
                                lambda reactor: PipelineService(reactor, config))


# -- apikey -------------------------------------------------------------------------------


def _when(value: datetime.datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value is not None else "-"


def cmd_apikey(args: argparse.Namespace) -> int:
    dsn = args.dsn or os.environ.get(DSN_ENV)
    if not dsn and args.config:
        dsn = load_api_config(args.config).dsn
    if not dsn:
        raise UsageError(f"no database: give --dsn, --config or set {DSN_ENV}")
    if args.apikey_command == "create":
        expires = None
        if args.expires_days is not None:
            expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(
                days=args.expires_days
            )
        key = keys.create_key(dsn, args.name, args.scope or ["read"], expires_at=expires,
                              edges=args.edge or None)
        print(key)
        print(f"(key {args.name!r} created; it is shown only this once)", file=sys.stderr)
    elif args.apikey_command == "list":
        print(f"{'name':<20} {'prefix':<11} {'scopes':<17} {'created':<19}  "
              f"{'last used':<19}  {'expires':<19}  revoked")
        for k in keys.list_keys(dsn):
            print(f"{k.name:<20} {k.prefix:<11} {','.join(k.scopes):<17} "
                  f"{_when(k.created_at):<19}  {_when(k.last_used_at):<19}  "
                  f"{_when(k.expires_at):<19}  {_when(k.revoked_at)}")
    elif args.apikey_command == "revoke":
        if not keys.revoke_key(dsn, args.name):
            raise UsageError(f"no live key named {args.name!r}")
        print(f"revoked key {args.name!r}")
    return 0


# -- migrate ------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace) -> int:
    dsn = _dsn(args)
    if args.status:
        missing = migrations.pending(dsn)
        for mig in migrations.available():
            state = "pending" if mig in missing else "applied"
            print(f"{mig.version:04d}_{mig.name}: {state}")
        return 1 if missing else 0
    applied = migrations.migrate(dsn)
    for mig in applied:
        print(f"applied {mig.version:04d}_{mig.name}")
    if not applied:
        print("schema is up to date")
    return 0


# -- backup, restore, retention --------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    from . import backup

    written = backup.backup(_dsn(args), args.out, refresh_days=args.refresh_days)
    for name in written:
        print(f"wrote {args.out / name}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from . import backup

    count = backup.restore(_dsn(args), args.source, args.archive or [])
    print(f"restored {args.source} ({count} readings partition files)")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    from . import backup

    dsn = _dsn(args)
    made = backup.create_ahead(dsn, args.days_ahead)
    if made:
        print(f"created {made} readings partitions ahead")
    for name in backup.apply_retention(dsn, args.keep_days, args.archive):
        where = f" (archived in {args.archive})" if args.archive else ""
        print(f"dropped {name}{where}")
    return 0


# -- pki ----------------------------------------------------------------------------------


def _describe(issued: pki.Issued, what: str, where: Path) -> None:
    cert = issued.certificate
    print(f"{what}: {cert.subject.rfc4514_string()}")
    print(f"  serial      {cert.serial_number}")
    print(f"  sha256      {issued.fingerprint}")
    print(f"  valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    print(f"  written to  {where}")


def cmd_pki(args: argparse.Namespace) -> int:
    folder = pki.PKIDirectory(args.dir) if getattr(args, "dir", None) else None
    if args.pki_command == "init":
        assert folder
        ca = folder.init(days=args.days, common_name=args.name)
        _describe(ca, "CA", folder.path)
    elif args.pki_command == "issuing-ca":
        assert folder
        issued = folder.issuing_ca(days=args.days, replace=args.replace)
        _describe(issued, "issuing CA", folder.path)
    elif args.pki_command == "server":
        assert folder
        issued = folder.server(args.name, days=args.days)
        _describe(issued, "server certificate", folder.path)
    elif args.pki_command == "edge":
        assert folder
        issued, target = folder.edge(args.edge_id, args.out, days=args.days, overwrite=args.force)
        _describe(issued, "edge certificate", target)
    elif args.pki_command == "revoke":
        dsn = _dsn(args)
        if args.cert is not None:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(args.cert.read_bytes())
            revocation.revoke_certificate(
                dsn, cert.serial_number, pki.edge_id_from_certificate(cert), args.reason
            )
            print(f"revoked certificate serial {cert.serial_number}")
        elif args.serial is not None:
            revocation.revoke_certificate(dsn, args.serial, args.edge_id, args.reason)
            print(f"revoked certificate serial {args.serial}")
        elif args.edge_id is not None:
            revocation.revoke_edge(dsn, args.edge_id, args.reason)
            print(f"revoked edge {args.edge_id}")
        else:
            raise UsageError("pki revoke needs --edge-id, --serial or --cert")
    elif args.pki_command == "reinstate":
        if revocation.reinstate_edge(_dsn(args), args.edge_id):
            print(f"edge {args.edge_id} may connect again")
        else:
            print(f"edge {args.edge_id} was not revoked")
    return 0


# -- parser -------------------------------------------------------------------------------


def _db_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dsn", help=f"libpq connection string (default: ${DSN_ENV})")
    p.add_argument("--config", type=Path, help="take the DSN from this serve config file")


def _log_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-format", choices=logformat.FORMATS,
                   help=f"text (default) or json: one object a line (default: ${logformat.ENV})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gridcloud", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="accept edges over mutual TLS and ingest their data")
    serve.add_argument("--config", type=Path, help="TOML config file (docs/cloud.md)")
    serve.add_argument("--listen", help="Twisted TCP server endpoint, e.g. tcp:7400:interface=::")
    serve.add_argument("--cert", type=Path, help="server certificate (PEM)")
    serve.add_argument("--key", type=Path, help="server private key (PEM)")
    serve.add_argument("--ca", type=Path, help="project CA (PEM): edges must chain to it")
    serve.add_argument("--issuing-ca-cert", type=Path,
                       help="online issuing CA (PEM) that signs renewed edge certificates")
    serve.add_argument("--issuing-ca-key", type=Path, help="its private key (PEM)")
    serve.add_argument("--certificate-days", type=float,
                       help="lifetime of a renewed edge certificate, days (default 365)")
    serve.add_argument("--dsn", help=f"PostgreSQL connection string (default: ${DSN_ENV})")
    serve.add_argument("--pool-size", type=int, help="PostgreSQL connections (default 4)")
    serve.add_argument(
        "--migrate", action="store_true", help="apply pending schema migrations before serving"
    )
    _log_option(serve)
    serve.set_defaults(func=cmd_serve)

    api = sub.add_parser("api", help="serve the HTTP API for internal systems (docs/api.md)")
    api.add_argument("--config", type=Path, help="TOML config file (docs/api.md)")
    api.add_argument("--listen", help="Twisted TCP server endpoint, e.g. tcp:8080")
    api.add_argument("--dsn", help=f"PostgreSQL connection string (default: ${DSN_ENV})")
    api.add_argument("--pool-size", type=int, help="PostgreSQL connections (default 4)")
    api.add_argument("--public-url", help="the URL clients use (for the OpenAPI document)")
    api.add_argument(
        "--migrate", action="store_true", help="apply pending schema migrations before serving"
    )
    _log_option(api)
    api.set_defaults(func=cmd_api)

    pipe = sub.add_parser("pipeline",
                          help="aggregates, prepaid credit and alarms (docs/pipeline.md)")
    pipe.add_argument("--config", type=Path, help="TOML config file (docs/pipeline.md)")
    pipe.add_argument("--dsn", help=f"PostgreSQL connection string (default: ${DSN_ENV})")
    pipe.add_argument("--concurrency", type=int, help="transactions at once (default 2)")
    pipe.add_argument("--batch-size", type=int, help="records per edge per transaction")
    pipe.add_argument(
        "--migrate", action="store_true", help="apply pending schema migrations before starting"
    )
    pipe.set_defaults(func=cmd_pipeline)

    ak = sub.add_parser("apikey", help="create, list and revoke API keys")
    aksub = ak.add_subparsers(dest="apikey_command", required=True)
    create = aksub.add_parser("create", help="make a key and print it (shown only once)")
    create.add_argument("name", help="a name for the key (letters, digits, . _ -)")
    create.add_argument("--scope", action="append", choices=keys.SCOPES,
                        help="read, write or admin (repeat for more; default read)")
    create.add_argument("--edge", action="append", help="limit the key to this edge (repeat)")
    create.add_argument("--expires-days", type=int, help="the key stops working after N days")
    listing = aksub.add_parser("list", help="list keys (never the keys themselves)")
    revoke_key = aksub.add_parser("revoke", help="revoke a key at once")
    revoke_key.add_argument("name")
    for p_ in (create, listing, revoke_key):
        p_.add_argument("--dsn", help=f"libpq connection string (default: ${DSN_ENV})")
        p_.add_argument("--config", type=Path, help="take the DSN from this api config file")
    ak.set_defaults(func=cmd_apikey)

    mig = sub.add_parser("migrate", help="apply pending schema migrations")
    _db_options(mig)
    mig.add_argument(
        "--status",
        action="store_true",
        help="list migrations and whether each is applied; exit 1 if any is pending",
    )
    mig.set_defaults(func=cmd_migrate)

    bk = sub.add_parser("backup", help="pg_dump of everything but readings, readings by partition")
    _db_options(bk)
    bk.add_argument("--out", type=Path, required=True, help="backup folder (kept between runs)")
    bk.add_argument("--refresh-days", type=int, default=2,
                    help="dump again the partitions of the last N days even if present")
    bk.set_defaults(func=cmd_backup)
    rs = sub.add_parser("restore", help="load a backup folder into an empty database")
    _db_options(rs)
    rs.add_argument("source", type=Path, help="the folder gridcloud backup wrote")
    rs.add_argument("--archive", type=Path, action="append",
                    help="also load partitions archived by retention from this folder (repeat)")
    rs.set_defaults(func=cmd_restore)
    rt = sub.add_parser("retention", help="create partitions ahead; archive and drop old days")
    _db_options(rt)
    rt.add_argument("--keep-days", type=int, required=True,
                    help="keep the readings of the last N full days")
    rt.add_argument("--archive", type=Path,
                    help="dump each partition here before dropping it (kept if present)")
    rt.add_argument("--days-ahead", type=int, default=7, help="daily partitions kept ready")
    rt.set_defaults(func=cmd_retention)

    p = sub.add_parser("pki", help="project CA, server and edge certificates, revocation")
    psub = p.add_subparsers(dest="pki_command", required=True)
    init = psub.add_parser("init", help="create the project CA (ca.pem, ca.key 0600)")
    init.add_argument("--dir", type=Path, required=True)
    init.add_argument("--days", type=int, default=pki.CA_DAYS)
    init.add_argument("--name", default="gridedge project CA", help="the CA's common name")
    issuing = psub.add_parser(
        "issuing-ca", help="create the online issuing CA that signs renewals (issuing-ca.pem/.key)"
    )
    issuing.add_argument("--dir", type=Path, required=True)
    issuing.add_argument("--days", type=int, default=pki.ISSUING_DAYS)
    issuing.add_argument("--replace", action="store_true",
                         help="make a new one (keep the old certificate trusted on the nodes)")
    server = psub.add_parser("server", help="issue server.pem / server.key for DNS names")
    server.add_argument("--dir", type=Path, required=True)
    server.add_argument(
        "--name", action="append", required=True, help="DNS name edges connect to (repeat for more)"
    )
    server.add_argument("--days", type=int, default=pki.SERVER_DAYS)
    edge = psub.add_parser("edge", help="issue edge.pem / edge.key / ca.pem for one edge")
    edge.add_argument("--dir", type=Path, required=True)
    edge.add_argument("--edge-id", required=True)
    edge.add_argument("--out", type=Path, help="folder to write to (default DIR/edges/EDGE_ID)")
    edge.add_argument("--days", type=int, default=pki.EDGE_DAYS)
    edge.add_argument("--force", action="store_true", help="overwrite an existing edge.key")
    revoke = psub.add_parser("revoke", help="refuse an edge, or one certificate, from now on")
    _db_options(revoke)
    revoke.add_argument(
        "--edge-id", help="revoke this edge (with --serial: the edge that certificate belongs to)"
    )
    revoke.add_argument("--serial", type=int, help="revoke only the certificate with this serial")
    revoke.add_argument("--cert", type=Path, help="revoke only this certificate (PEM file)")
    revoke.add_argument("--reason", default="", help="recorded and logged on refusal")
    reinstate = psub.add_parser("reinstate", help="lift the revocation of an edge")
    _db_options(reinstate)
    reinstate.add_argument("--edge-id", required=True)
    p.set_defaults(func=cmd_pki)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("days", "pool_size", "expires_days", "keep_days", "days_ahead", "concurrency",
                 "batch_size"):
        value = getattr(args, name, None)
        if value is not None and value <= 0:
            print(f"gridcloud: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        return int(args.func(args))
    except (UsageError, ConfigError, pki.PKIError, migrations.MigrationError,
            keys.ApiKeyError, BackupError) as exc:
        print(f"gridcloud: {exc}", file=sys.stderr)
        return 2
    except (OSError, psycopg2.Error) as exc:
        print(f"gridcloud: {str(exc).strip()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
