"""The asyncpg pool: made in the app's lifespan, handed to handlers by a dependency."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeAlias, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from fastapi import Depends, Request

from eventindex.config import Settings
from eventindex.metrics import current as current_metrics

# What "the database is not there" looks like from asyncpg: refused or dropped
# connections, a server starting up or shutting down, a full pool.
log = logging.getLogger("eventindex")

# A connection of its own, or one lent by the pool.
Connection: TypeAlias = asyncpg.Connection | PoolConnectionProxy

UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


_REPLICA_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)

# A replica that does not answer within this is skipped for the next one.
_REPLICA_TIMEOUT = 3.0


def server_settings(settings: Settings) -> dict[str, str]:
    return {
        "application_name": "eventindex",
        "statement_timeout": str(settings.statement_timeout_ms),
    }


def redact(url: str) -> str:
    """A database URL fit for a log line: no password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def replica_connector(
    replicas: list[str], primary: str, timeout: float
) -> Callable[..., Awaitable[asyncpg.Connection]]:
    """``connect`` for the read pool: the replicas in turn, then the primary.

    Each new connection starts with the next replica, which spreads a pool's
    connections over them; a replica that is down is skipped (and its pooled
    connections fail once and are replaced), and when none answers the reads go to
    the primary until one is back.
    """
    turn = itertools.count()

    async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        start = next(turn) % len(replicas)
        for url in replicas[start:] + replicas[:start]:
            try:
                return await asyncpg.connect(url, *args[1:], **{**kwargs, "timeout": timeout})
            except _REPLICA_ERRORS as exc:
                log.warning("read replica %s unavailable (%r)", redact(url), exc)
        return await asyncpg.connect(primary, *args[1:], **kwargs)

    return connect


async def create_pool(
    settings: Settings, dsn: str, replicas: list[str] | None = None
) -> asyncpg.Pool:
    """A pool warmed up to ``pool_min_size`` connections: to ``dsn``, or, given
    replicas, to them with ``dsn`` as the fallback.

    When the database is away at start the service still starts, with a pool
    that connects on demand: it reports not-ready (and 503 to requests) until
    the database returns, then recovers by itself.
    """

    async def make(size: int) -> asyncpg.Pool:
        connect = replica_connector(replicas, dsn, _REPLICA_TIMEOUT) if replicas else None
        pool = await asyncpg.create_pool(
            dsn,
            connect=cast(Any, connect),
            statement_cache_size=settings.statement_cache_size,
            init_size=size,
            min_size=size,
            max_size=settings.pool_max_size,
            timeout=min(settings.pool_acquire_timeout, 10.0),
            server_settings=server_settings(settings),
            # Idle connections are closed so a restarted server is noticed early.
            max_inactive_connection_lifetime=60.0,
        )
        assert pool is not None
        return pool

    try:
        return await make(settings.pool_min_size)
    except UNAVAILABLE_ERRORS as exc:
        log.warning("database unreachable at start (%r); will connect on demand", exc)
        return await make(0)


@asynccontextmanager
async def acquire(pool: asyncpg.Pool, timeout: float) -> AsyncIterator[Connection]:
    """A pooled connection, counted in the metrics while it is waited for."""
    metrics = current_metrics.get()
    if metrics is not None:
        metrics.waiting += 1
    try:
        conn = await pool.acquire(timeout=timeout)
    finally:
        if metrics is not None:
            metrics.waiting -= 1
    try:
        yield conn
    finally:
        await pool.release(conn)


def get_pool(request: Request) -> asyncpg.Pool:
    pool: asyncpg.Pool = request.state.pool
    return pool


def get_read_pool(request: Request) -> asyncpg.Pool:
    """The pool for lookups and catalogue reads: the replicas' if any, else the primary's."""
    pool: asyncpg.Pool = request.state.read_pool
    return pool


def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
ReadPoolDep = Annotated[asyncpg.Pool, Depends(get_read_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
