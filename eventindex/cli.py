"""The ``eventindex`` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eventindex import __version__

# The client's commands (pick, --version, --help) run on a light install (httpx and the
# standard library): what the service needs is imported where it is used.

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

CATALOGUE_EMPTY = "SELECT NOT EXISTS (SELECT 1 FROM events)"

# A few events spread over the catalogue (a sample of pages, not a scan).
SAMPLE_EVENTS = """
SELECT run_number, event_number FROM events TABLESAMPLE SYSTEM (1)
ORDER BY random() LIMIT $1
"""


if TYPE_CHECKING:
    import asyncpg

    from eventindex.config import Settings

# Commands that run the service's code, and the modules of the server extra they need.
SERVER_COMMANDS = frozenset({"migrate", "serve", "check", "token", "shards", "load"})
SERVER_MODULES = (
    "fastapi",
    "uvicorn",
    "asyncpg",
    "pydantic",
    "pydantic_settings",
    "orjson",
    "jwt",
    "prometheus_client",
    "fastapi_offline",
)


class CliError(Exception):
    """A problem to report as one line and a non-zero exit."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def require_server(command: str) -> None:
    """One clear line, rather than an ImportError's traceback, on a client-only install."""
    missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise CliError(
            f"eventindex {command} needs the service, which this install lacks "
            f"({', '.join(missing)}): pip install 'eventindex[server]'"
        )


def load_settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    from eventindex.config import Settings, describe_validation_error

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc), 2) from None


def resolve_database(
    settings: Settings, say: Callable[[str], None] | None = None
) -> tuple[Settings, Any]:
    """The configured database, or an embedded one started now under data_dir."""
    if settings.database_url is not None:
        return settings, None
    if settings.mode == "production":
        raise CliError("production mode needs EVENTINDEX_DATABASE_URL (no embedded database)", 2)
    from eventindex import embedded

    try:
        server, url = embedded.start(settings.data_dir)
    except embedded.EmbeddedError as exc:
        raise CliError(str(exc)) from None
    message = f"embedded PostgreSQL in {settings.data_dir.resolve()}"
    if say is None:
        print(f"eventindex: {message}", file=sys.stderr)
    else:
        say(message)
    return settings.model_copy(update={"database_url": url}), server


async def connect_or_fail(url: str) -> asyncpg.Connection:
    """A connection, or a CliError of one line that shows no part of the password."""
    from eventindex.db import CONNECT_ERRORS, connect, describe_connect_error

    try:
        return await connect(url, timeout=10)
    except CONNECT_ERRORS as exc:
        why = describe_connect_error(exc, url)
        raise CliError(f"cannot connect to the database: {why}") from None


async def _migrate(url: str) -> list[str]:

    from eventindex import migrate

    conn = await connect_or_fail(url)
    try:
        return [m.name for m in await migrate.apply(conn)]
    except migrate.MigrationError as exc:
        raise CliError(str(exc)) from None
    finally:
        await conn.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings, _server = resolve_database(load_settings(database_url=args.database_url))
    assert settings.database_url is not None
    applied = asyncio.run(_migrate(settings.database_url))
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from eventindex.middleware.httpguard import HeadLimits, protocol_factory
    from eventindex.middleware.requestlog import configure_logging

    settings = load_settings(
        database_url=args.database_url,
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        workers=args.workers,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
        ssl_ca_certs=args.ssl_ca_certs,
    )
    level = settings.log_level.value
    configure_logging(level, settings.json_logs)
    log = logging.getLogger("eventindex")
    settings, server = resolve_database(settings, log.info)
    assert settings.database_url is not None
    if server is not None:
        # uvicorn ends a SIGTERM'd server by raising the signal again, which would kill the
        # process past its exit handlers, and the embedded PostgreSQL (trusting every local
        # connection) would outlive it. Raised into this handler, it is a normal exit.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        # A hang-up (the terminal closed), which uvicorn does not handle, is made a SIGTERM:
        # a graceful shutdown while uvicorn runs, then that normal exit. (Raised in its event
        # loop's callbacks, SystemExit is taken for a transport's error and the loop goes on.)
        signal.signal(signal.SIGHUP, _sigterm_on_hangup)
    if args.migrate or args.demo:
        applied = asyncio.run(_migrate(settings.database_url))
        if applied:
            log.info("applied migrations %s", ", ".join(applied))
    if args.demo:
        asyncio.run(_load_demo(settings.database_url, settings.data_dir))
        base = f"http://{settings.host}:{settings.port}"
        log.info("try  curl %s/v1/events/RUN/EVENT", base)
    announce(settings)
    server_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": level,
        "log_config": None,  # logging is configured above
        "access_log": False,  # one line per request comes from the app, with its id
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
        # Only a configured proxy may say who the client is (X-Forwarded-For).
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": settings.forwarded_allow_ips or None,
        "server_header": False,  # no software version for scanners
        "timeout_keep_alive": settings.keepalive_timeout,
        "http": protocol_factory(
            HeadLimits(
                header_timeout=settings.header_timeout,
                max_header_bytes=settings.max_header_bytes,
                max_headers=settings.max_headers,
                max_connections=settings.max_connections,
            )
        ),
        **tls_options(settings),
    }
    if args.reload or settings.worker_count > 1:
        # Each worker (or reloaded process) builds its app from the environment.
        for name, value in settings.model_dump(exclude_none=True, mode="json").items():
            if name in ("database_url", "data_dir", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs"):
                os.environ["EVENTINDEX_" + name.upper()] = str(value)
        uvicorn.run(
            "eventindex.app:app_from_environment",
            factory=True,
            reload=args.reload,
            workers=None if args.reload else settings.worker_count,
            **server_options,
        )
        return 0
    from eventindex.app import create_app

    uvicorn.run(create_app(settings), **server_options)
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _sigterm_on_hangup(signum: int, frame: object) -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def announce(settings: Settings) -> None:
    """The banner, and one warning for each surface left open to anyone. Logged, so that
    with JSON logs every line is JSON."""
    log = logging.getLogger("eventindex")
    scheme = "https" if settings.ssl_certfile is not None else "http"
    base = f"{scheme}://{settings.host}:{settings.port}"
    docs = f" (API docs at {base}/docs)" if settings.docs_enabled else ""
    log.info("serving on %s in %s mode%s", base, settings.mode.value, docs)
    for surface in settings.open_surfaces():
        log.warning("open to anyone: %s", surface)


def tls_options(settings: Settings) -> dict[str, Any]:
    if settings.ssl_certfile is None:
        return {}
    import functools

    from eventindex.tls import server_context

    for path in (settings.ssl_certfile, settings.ssl_keyfile):
        if path is not None and not path.is_file():
            raise CliError(f"{path}: no such file (TLS settings)", 2)
    ca = settings.ssl_ca_certs
    if ca is not None and not (ca.is_file() or ca.is_dir()):
        raise CliError(f"{ca}: no such file or directory (EVENTINDEX_SSL_CA_CERTS)", 2)
    return {
        "ssl_certfile": str(settings.ssl_certfile),
        "ssl_keyfile": str(settings.ssl_keyfile),
        # Client certificates and RFC 3820 proxies (eventindex/tls.py); a module function,
        # so that worker processes can be handed it.
        "ssl_context_factory": functools.partial(
            server_context,
            ca=None if ca is None else str(ca),
            required=settings.ssl_client_cert_required,
        ),
    }


def cmd_token(args: argparse.Namespace) -> int:
    from eventindex import tokens

    settings, _server = resolve_database(load_settings(database_url=args.database_url))
    assert settings.database_url is not None
    url = settings.database_url

    async def run() -> int:
        import asyncpg

        conn = await connect_or_fail(url)
        try:
            if args.token_command == "create":
                expires = tokens.parse_expiry(args.expires)
                token, record = await tokens.create(conn, args.name, args.scope, expires)
                when = record["expires_at"].isoformat() if record["expires_at"] else "never"
                print(
                    f"created token {record['name']} (scopes {','.join(record['scopes'])}; "
                    f"expires {when}); it is shown only now:"
                )
                print(token)
            elif args.token_command == "list":
                for r in await tokens.list_all(conn):
                    state = r["state"]
                    until = r["expires_at"].isoformat() if r["expires_at"] else "never"
                    used = r["last_used_at"].isoformat() if r["last_used_at"] else "never"
                    print(
                        f"{r['name']}\t{','.join(r['scopes'])}\t{state}\t"
                        f"expires {until}\tlast used {used}"
                    )
            elif not await tokens.revoke(conn, args.name):
                raise CliError(f"no active token named {args.name!r}")
            else:
                print(f"revoked token {args.name}")
        except tokens.TokenError as exc:
            raise CliError(str(exc)) from None
        except asyncpg.UndefinedTableError:
            raise CliError("the database is not migrated: run 'eventindex migrate'") from None
        finally:
            await conn.close()
        return 0

    return asyncio.run(run())


def cmd_cert(args: argparse.Namespace) -> int:
    """Certificate principals: X.509 subjects mapped to names and scopes."""
    from eventindex import certs, tokens

    settings, _server = resolve_database(load_settings(database_url=args.database_url))
    assert settings.database_url is not None
    url = settings.database_url

    async def run() -> int:
        import asyncpg

        conn = await connect_or_fail(url)
        try:
            if args.cert_command == "add":
                expires = tokens.parse_expiry(args.expires)
                r = await certs.add(conn, args.name, args.dn, args.scope, expires)
                when = r["expires_at"].isoformat() if r["expires_at"] else "never"
                print(
                    f"mapped {r['dn']} to {r['name']} (scopes {','.join(r['scopes'])}; "
                    f"expires {when})"
                )
            elif args.cert_command == "list":
                for line in certs.describe(await certs.list_all(conn)):
                    print(line)
            elif not await certs.revoke(conn, args.name):
                raise CliError(f"no active certificate principal named {args.name!r}")
            else:
                print(f"revoked certificate principal {args.name}")
        except (certs.CertificateError, tokens.TokenError) as exc:
            raise CliError(str(exc)) from None
        except asyncpg.UndefinedTableError:
            raise CliError("the database is not migrated: run 'eventindex migrate'") from None
        finally:
            await conn.close()
        return 0

    return asyncio.run(run())


def cmd_shards(args: argparse.Namespace) -> int:
    """Set up and grow a sharded catalogue (docs/scaling.md)."""
    from eventindex import sharding
    from eventindex.db import DatabaseUrlError

    settings = load_settings(database_url=args.database_url)
    if settings.database_url is None:
        raise CliError("shards needs the coordinator's URL: EVENTINDEX_DATABASE_URL", 2)
    url = settings.database_url

    async def run() -> None:

        if args.shards_command == "init":
            shards = {}
            for spec in args.shard:
                name, sep, shard_url = spec.partition("=")
                if not sep:
                    raise CliError(f"--shard {spec!r}: expected NAME=URL", 2)
                shards[name] = shard_url
            shard_map = await sharding.init(url, shards, args.slots)
            print("\n".join(sharding.describe(shard_map)))
        elif args.shards_command == "add":
            moved = await sharding.add(url, args.name, args.url)
            print(
                f"shard {args.name} added: {len(moved)} slots, "
                f"{sum(moved.values()):,} events moved to it"
            )
        else:
            conn = await connect_or_fail(url)
            try:
                if not await sharding.is_coordinator(conn):
                    raise CliError("this database is not a coordinator (run 'shards init')")
                print("\n".join(sharding.describe(await sharding.ShardMap.load(conn))))
            finally:
                await conn.close()

    try:
        asyncio.run(run())
    except sharding.ShardingError as exc:
        raise CliError(str(exc)) from None
    except (TimeoutError, OSError, DatabaseUrlError) as exc:
        raise CliError(f"cannot reach a database: {exc}") from None
    except Exception as exc:
        import asyncpg

        if isinstance(exc, asyncpg.PostgresError):
            raise CliError(f"database error: {str(exc).splitlines()[0]}") from None
        raise
    return 0


EXIT_PROBLEMS = 4


def cmd_check(args: argparse.Namespace) -> int:
    """The consistency report, for people or a cron job (exit 4 when there are problems)."""
    import asyncpg
    import orjson

    from eventindex import catalogue
    from eventindex.problems import Problem

    settings, _server = resolve_database(load_settings(database_url=args.database_url))
    assert settings.database_url is not None
    url = settings.database_url

    async def run() -> list[dict[str, Any]]:
        conn = await connect_or_fail(url)
        try:
            ids = args.dataset or [
                r["id"] for r in await catalogue.dataset_page(conn, None, -1, 1_000_000)
            ]
            return [await catalogue.consistency(conn, d, args.gaps, args.limit) for d in ids]
        except Problem as exc:
            raise CliError(exc.detail) from None
        except asyncpg.UndefinedTableError:
            raise CliError("the database is not migrated: run 'eventindex migrate'") from None
        finally:
            await conn.close()

    reports = asyncio.run(run())
    if args.json:
        print(orjson.dumps(reports, default=str).decode())
    else:
        for r in reports:
            print("\n".join(describe_report(r, args.limit)))
    return EXIT_PROBLEMS if any(r["problems"] for r in reports) else 0


def describe_report(r: dict[str, Any], limit: int) -> list[str]:
    """A consistency report as text: a status line, then what was found, each list cut at
    ``limit`` items with the exact number beside it."""
    d = r["dataset"]
    n_files = r["n_files_with_wrong_counts"]
    n_conflicts = r["conflicting_duplicates"]["total"]
    head = f"dataset {d['id']} {d['name']}: {r['status']}"
    if r["problems"]:
        head += f" ({n_files} files with wrong counts, {n_conflicts} conflicting duplicates)"
    lines = [head]
    for f in r["files_with_wrong_counts"]:
        lines.append(
            f"  file {f['fuid_raw']} (run {f['run_number']}): "
            f"{f['recorded']} events recorded, {f['found']} found"
        )
    lines += _more(n_files, len(r["files_with_wrong_counts"]), "files", limit)
    for c in r["conflicting_duplicates"]["first"]:
        lines.append(
            f"  conflicting duplicate: run {c['run_number']} event {c['event_number']} "
            f"({c['source']} line {c['line']}: file {c['fuid_raw']}; kept file "
            f"{c['existing_fuid_raw']})"
        )
    lines += _more(n_conflicts, len(r["conflicting_duplicates"]["first"]), "conflicts", limit)
    if "gaps" in r:
        lines.append(
            f"  {r['n_gaps']} gaps in event numbering, {r['missing_events']} event numbers "
            "missing (not a problem by itself: the Online Filter drops events)"
        )
        for g in r["gaps"]:
            lines.append(
                f"  gap: run {g['run_number']}, {g['missing']} missing after event "
                f"{g['after_event']}"
            )
        lines += _more(r["n_gaps"], len(r["gaps"]), "gaps", limit)
    return lines


def _more(total: int, shown: int, what: str, limit: int) -> list[str]:
    if total <= shown:
        return []
    return [f"  ... {total - shown} more {what} (--limit {limit} lists the first {shown})"]


DEMO_EVENTS = 1_000_000


async def _load_demo(url: str, data_dir: Path) -> None:
    """Generate and load a demo catalogue the first time; show pairs to try (logged: with
    JSON logs every line is JSON)."""
    log = logging.getLogger("eventindex")

    conn = await connect_or_fail(url)
    try:
        if await conn.fetchval(CATALOGUE_EMPTY):
            from eventindex.ingest import generator
            from eventindex.ingest.loader import Loader
            from eventindex.ingest.source import Source

            log.info("loading a demo catalogue of %s events", f"{DEMO_EVENTS:,}")
            opts = generator.Options(events=DEMO_EVENTS, runs=50, datasets=3, seed=2026)
            with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
                out = Path(tmp)
                generator.write(generator.build(opts), opts, str(out), 1, False, None)
                loader = Loader(conn)
                async with conn.transaction():
                    datasets = Source("demo datasets", out / "datasets.csv")
                    await loader.load_datasets(datasets)
                    events = Source("demo events", out / "events.csv")
                    result = await loader.load_events(events)
            log.info("%s", result.summary())
        rows = await conn.fetch(SAMPLE_EVENTS, 3)
    finally:
        await conn.close()
    if rows:
        pairs = " ".join(f"{r['run_number']}/{r['event_number']}" for r in rows)
        log.info("events to try (run/event): %s", pairs)


def cmd_delegate(args: argparse.Namespace) -> int:
    # Only reached for bare "generate"/"load"; main() hands their arguments over directly.
    return _delegate(args.command, ["--help"])


def _delegate(command: str, argv: list[str]) -> int:
    if command == "generate":
        try:
            from eventindex.ingest import generator
        except ImportError:
            raise CliError(
                "eventindex generate needs numpy: pip install 'eventindex[generate]'"
            ) from None
        return generator.main(argv)
    from eventindex.ingest import command as load_command

    wants_help = any(a in ("-h", "--help") for a in argv)
    named = any(a == "--database-url" or a.startswith("--database-url=") for a in argv)
    if not wants_help and not named:
        settings, _server = resolve_database(load_settings())
        assert settings.database_url is not None
        argv = [*argv, "--database-url", settings.database_url]
    return load_command.main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventindex",
        description="EventIndex: the SPD event catalogue (run/event -> raw file).",
    )
    parser.add_argument("--version", action="version", version=f"eventindex {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="apply pending database migrations")
    p.add_argument("--database-url", help="PostgreSQL URL (default: EVENTINDEX_DATABASE_URL)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--database-url", help="PostgreSQL URL (default: EVENTINDEX_DATABASE_URL)")
    p.add_argument("--host", help="address to listen on (default: EVENTINDEX_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: EVENTINDEX_PORT or 8000)")
    p.add_argument("--data-dir", help="embedded PostgreSQL directory (default: .eventindex)")
    p.add_argument("--migrate", action="store_true", help="apply pending migrations first")
    p.add_argument("--reload", action="store_true", help="restart on code changes (development)")
    p.add_argument(
        "--workers",
        type=int,
        help="worker processes (default: EVENTINDEX_WORKERS, else one per CPU in production "
        "and one in development)",
    )
    p.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    p.add_argument(
        "--ssl-ca-certs",
        help="CA bundle (or directory of hashed CA certificates) to verify client certificates "
        "and their RFC 3820 proxies against",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help=f"load a demo catalogue ({DEMO_EVENTS:,} pseudo events) when the catalogue is empty",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "pick",
        help="look up (run, event) pairs from a file or stdin",
        description="Event picking: print each pair's file, dataset and Online Filter "
        "decisions. Exit codes: 0 all found, 3 some not found, 1 error, 2 usage.",
    )
    from eventindex import pick

    pick.add_arguments(p)
    p.set_defaults(func=pick.run)

    from eventindex import upload

    p = sub.add_parser(
        "upload",
        help="report raw files' events to the service (write token; no database needed)",
        description="Upload raw files' indexes over the HTTP API: one CSV per raw file "
        "(<fuid>.csv[.gz], header run_number,event_number,olt_result) or a catalogue CSV "
        "with a fuid_raw column (as 'eventindex generate' writes), split by file. A file "
        "already loaded with the same events counts as already loaded, so a run is resumed "
        "by running it again; failures are retried. Exit codes: 0 all files are in "
        "the catalogue, 3 some were refused, 1 error, 2 usage.",
    )
    upload.add_arguments(p)
    p.set_defaults(func=upload.run)

    p = sub.add_parser(
        "datasets",
        help="register, close and show datasets over the HTTP API (write token)",
        description="Datasets are registered before their files are uploaded and closed "
        "when production ends: closing refuses new files and validates the dataset when "
        "its consistency check is clean. 'close' exits 4 when the dataset stays closed with "
        "problems.",
    )
    upload.add_dataset_arguments(p)
    p.set_defaults(func=upload.run_datasets)

    p = sub.add_parser(
        "check",
        help="consistency report per dataset (exit 4 when there are problems)",
        description="Files whose event count differs from the events found and conflicting "
        "duplicates the loader skipped (problems), and with --gaps the gaps in event numbering "
        "(listed, not problems: the Online Filter drops events). Lists stop at --limit items; "
        "the counts beside them are exact. Exit codes: 0 no problems, 4 problems found, "
        "1 error, 2 usage.",
    )
    p.add_argument("--database-url", help="PostgreSQL URL (default: EVENTINDEX_DATABASE_URL)")
    p.add_argument("--dataset", type=int, action="append", help="dataset id (default: all)")
    p.add_argument(
        "--gaps", action="store_true", help="also count and list gaps in event numbering"
    )
    p.add_argument(
        "--limit", type=int, default=100, help="most items listed per kind (counts stay exact)"
    )
    p.add_argument("--json", action="store_true", help="print the reports as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("token", help="manage API tokens (create, list, revoke)")
    p.add_argument("--database-url", help="PostgreSQL URL (default: EVENTINDEX_DATABASE_URL)")
    token_sub = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    t = token_sub.add_parser("create", help="create a token; prints it alone on the last line")
    t.add_argument("--name", required=True)
    t.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=("read", "write", "admin"),
        help="read (lookups), write (loading), admin (tokens); repeat for several",
    )
    t.add_argument("--expires", help="e.g. 30d, 12h, 45m, or an ISO date (default: never)")
    token_sub.add_parser("list", help="list tokens (never their secrets)")
    t = token_sub.add_parser("revoke", help="revoke a token by name")
    t.add_argument("name")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser(
        "cert",
        help="map X.509 certificate subjects to principals (add, list, revoke)",
        description="A client whose verified TLS certificate, or an RFC 3820 proxy of it, "
        "has a mapped subject is that principal, with its scopes (docs/security.md).",
    )
    p.add_argument("--database-url", help="PostgreSQL URL (default: EVENTINDEX_DATABASE_URL)")
    cert_sub = p.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    t = cert_sub.add_parser("add", help="map a certificate subject to a name and scopes")
    t.add_argument(
        "--dn",
        required=True,
        help="the subject: RFC 4514 (CN=...,O=...,C=...) or OpenSSL's /C=.../O=.../CN=...",
    )
    t.add_argument("--name", required=True, help="the principal's name (1-100 of A-Za-z0-9._@-)")
    t.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=("read", "write", "admin"),
        help="read (lookups), write (loading), admin (tokens, certificates); repeatable",
    )
    t.add_argument("--expires", help="e.g. 365d, 12h, or an ISO date (default: never)")
    cert_sub.add_parser("list", help="list the mappings")
    t = cert_sub.add_parser("revoke", help="revoke a mapping by name")
    t.add_argument("name")
    p.set_defaults(func=cmd_cert)

    p = sub.add_parser(
        "shards", help="shard the catalogue over several PostgreSQL servers (PL/Proxy)"
    )
    p.add_argument("--database-url", help="the coordinator (default: EVENTINDEX_DATABASE_URL)")
    shards_sub = p.add_subparsers(dest="shards_command", required=True, metavar="ACTION")
    t = shards_sub.add_parser("init", help="make an empty catalogue the coordinator of shards")
    t.add_argument(
        "--shard", action="append", required=True, metavar="NAME=URL", help="repeat per shard"
    )
    t.add_argument("--slots", type=int, default=16, help="hash slots, a power of two (default 16)")
    t = shards_sub.add_parser("add", help="add a shard and move its share of the runs to it")
    t.add_argument("name")
    t.add_argument("url")
    shards_sub.add_parser("list", help="the shards and the slots each holds")
    p.set_defaults(func=cmd_shards)

    p = sub.add_parser(
        "generate", help="write pseudo events as CSV (see eventindex generate --help)"
    )
    p.set_defaults(func=cmd_delegate)
    p = sub.add_parser("load", help="load datasets and events CSV (see eventindex load --help)")
    p.set_defaults(func=cmd_delegate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("generate", "load") and argv[1:]:
        try:
            if argv[0] in SERVER_COMMANDS:
                require_server(argv[0])
            return _delegate(argv[0], argv[1:])
        except CliError as exc:
            print(f"eventindex: error: {exc}", file=sys.stderr)
            return exc.code
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if args.command in SERVER_COMMANDS:
            require_server(args.command)
        return func(args)
    except CliError as exc:
        print(f"eventindex: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
