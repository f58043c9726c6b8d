"""The ``eventindex`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from eventindex.config import Settings, describe_validation_error


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
    if args.migrate:
        applied = asyncio.run(_migrate(settings.database_url))
        if applied:
            print("eventindex: applied migrations " + ", ".join(applied), file=sys.stderr)
    level = settings.log_level.value
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    print(
        f"eventindex: serving on http://{settings.host}:{settings.port} "
        f"(API docs at http://{settings.host}:{settings.port}/docs)",
        file=sys.stderr,
    )
    if args.reload:
        os.environ["EVENTINDEX_DATABASE_URL"] = settings.database_url
        uvicorn.run(
            "eventindex.app:app_from_environment",
            factory=True,
            reload=True,
            host=settings.host,
            port=settings.port,
            log_level=level,
        )
        return 0
    from eventindex.app import create_app

    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=level)
    return 0


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
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
