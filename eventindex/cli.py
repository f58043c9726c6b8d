"""The ``eventindex`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from eventindex.config import Settings, describe_validation_error
from eventindex.requestlog import configure_logging


class CliError(Exception):
    """A problem to report as one line and a non-zero exit."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise CliError(describe_validation_error(exc), 2) from None


def resolve_database(settings: Settings) -> tuple[Settings, Any]:
    """The configured database, or an embedded one started now under data_dir."""
    if settings.database_url is not None:
        return settings, None
    from eventindex import embedded

    try:
        server, url = embedded.start(settings.data_dir)
    except embedded.EmbeddedError as exc:
        raise CliError(str(exc)) from None
    print(f"eventindex: embedded PostgreSQL in {settings.data_dir.resolve()}", file=sys.stderr)
    return settings.model_copy(update={"database_url": url}), server


async def _migrate(url: str) -> list[str]:
    import asyncpg

    from eventindex import migrate
    from eventindex.db import UNAVAILABLE_ERRORS

    try:
        conn = await asyncpg.connect(url, timeout=10)
    except UNAVAILABLE_ERRORS as exc:
        raise CliError(f"cannot connect to the database: {exc}") from None
    except asyncpg.PostgresError as exc:
        raise CliError(f"cannot connect to the database: {exc}") from None
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

    settings = load_settings(
        database_url=args.database_url, host=args.host, port=args.port, data_dir=args.data_dir
    )
    settings, _server = resolve_database(settings)
    assert settings.database_url is not None
    if args.migrate or args.demo:
        applied = asyncio.run(_migrate(settings.database_url))
        if applied:
            print("eventindex: applied migrations " + ", ".join(applied), file=sys.stderr)
    if args.demo:
        asyncio.run(_load_demo(settings.database_url, settings.data_dir))
        base = f"http://{settings.host}:{settings.port}"
        print(f"eventindex: try  curl {base}/v1/events/RUN/EVENT", file=sys.stderr)
    level = settings.log_level.value
    configure_logging(level, settings.log_format == "json")
    print(
        f"eventindex: serving on http://{settings.host}:{settings.port} "
        f"(API docs at http://{settings.host}:{settings.port}/docs)",
        file=sys.stderr,
    )
    server_options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": level,
        "log_config": None,  # logging is configured above
        "access_log": False,  # one line per request comes from the app, with its id
        "timeout_graceful_shutdown": settings.shutdown_grace_seconds,
    }
    if args.reload:
        os.environ["EVENTINDEX_DATABASE_URL"] = settings.database_url
        uvicorn.run(
            "eventindex.app:app_from_environment", factory=True, reload=True, **server_options
        )
        return 0
    from eventindex.app import create_app

    uvicorn.run(create_app(settings), **server_options)
    return 0


DEMO_EVENTS = 1_000_000


async def _load_demo(url: str, data_dir: Path) -> None:
    """Generate and load a demo catalogue the first time; show pairs to try."""
    import asyncpg

    from eventindex import queries

    conn = await asyncpg.connect(url, timeout=10)
    try:
        if await conn.fetchval(queries.CATALOGUE_EMPTY):
            from tools import gen_data, store_events

            print(
                f"eventindex: loading a demo catalogue of {DEMO_EVENTS:,} events", file=sys.stderr
            )
            opts = gen_data.Options(events=DEMO_EVENTS, runs=50, datasets=3, seed=2026)
            with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
                out = Path(tmp)
                gen_data.write(gen_data.build(opts), opts, str(out), 1, False, None)
                loader = store_events.Loader(conn)
                async with conn.transaction():
                    datasets = store_events.Source("demo datasets", out / "datasets.csv")
                    await loader.load_datasets(datasets)
                    events = store_events.Source("demo events", out / "events.csv")
                    result = await loader.load_events(events)
            print(f"eventindex: {result.summary()}", file=sys.stderr)
        rows = await conn.fetch(queries.SAMPLE_EVENTS, 3)
    finally:
        await conn.close()
    if rows:
        pairs = " ".join(f"{r['run_number']}/{r['event_number']}" for r in rows)
        print(f"eventindex: events to try (run/event): {pairs}", file=sys.stderr)


def cmd_delegate(args: argparse.Namespace) -> int:
    # Only reached for bare "generate"/"load"; main() hands their arguments over directly.
    return _delegate(args.command, ["--help"])


def _delegate(command: str, argv: list[str]) -> int:
    if command == "generate":
        from tools import gen_data

        return gen_data.main(argv)
    from tools import store_events

    if not any(a == "--database-url" or a.startswith("--database-url=") for a in argv):
        settings, _server = resolve_database(load_settings())
        assert settings.database_url is not None
        argv = [*argv, "--database-url", settings.database_url]
    return store_events.main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventindex",
        description="EventIndex: the SPD event catalogue (run/event -> raw file).",
    )
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

    p = sub.add_parser(
        "generate", help="write pseudo events as CSV (python -m tools.gen_data; see --help)"
    )
    p.set_defaults(func=cmd_delegate)
    p = sub.add_parser(
        "load", help="load datasets and events CSV (python -m tools.store_events; see --help)"
    )
    p.set_defaults(func=cmd_delegate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("generate", "load") and argv[1:]:
        try:
            return _delegate(argv[0], argv[1:])
        except CliError as exc:
            print(f"eventindex: error: {exc}", file=sys.stderr)
            return exc.code
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except CliError as exc:
        print(f"eventindex: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
