"""The database: asyncpg pools behind fair gates, owned by one ``Database`` made in the app's
lifespan; connections are lent only by ``Lane.acquire``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeAlias, TypeVar, cast
from urllib.parse import unquote

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from eventindex.config import Settings
from eventindex.metrics import current as current_metrics

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

PING = "SELECT 1"


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
    # A pooled connection the server closed under it (a restart) can be handed out
    # before the driver has seen the close; the driver then fails with this.
    asyncpg.InternalClientError,
)


_T = TypeVar("_T")


class PoolExhausted(TimeoutError):
    """Every pooled connection stayed in use for the whole acquire timeout (or, for bulk
    work, every connection bulk work may hold)."""

    def __init__(self, size: int, timeout: float, bulk: bool = False) -> None:
        held = f"{size} connections bulk work may hold" if bulk else f"{size} database connections"
        super().__init__(f"all {held} in use for {timeout:g} s")
        self.size = size
        self.timeout = timeout
        self.bulk = bulk


_REPLICA_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)

# A replica that does not answer within this is skipped for the next one.
_REPLICA_TIMEOUT = 3.0


def server_settings(settings: Settings) -> dict[str, str]:
    return {
        "application_name": "eventindex",
        "statement_timeout": str(settings.statement_timeout_ms),
    }


_PASSWORD_PARAM = re.compile(r"(?i)([?&](?:ssl)?password=)([^&#]*)")
# password=... in a URL's query or a libpq connection string (key=value ...).
_PASSWORD_SETTING = re.compile(
    r"(?i)((?:^|[?&\s])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&#\s]*)"
)
# What may separate pieces of a password that a URL parser has cut apart.
_URL_DELIMITERS = re.compile(r"[/?#@:\[\],&=\s]")


def redact(url: str) -> str:
    """A database URL fit for a log line: no password (in the user part or a
    ``password=`` parameter), even when the password holds unencoded / ? # @."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, hosts = rest.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if colon:
            rest = f"{user}:***@{hosts}"
    return _PASSWORD_PARAM.sub(r"\1***", scheme + sep + rest)


def _url_secrets(url: str) -> list[str]:
    """The URL's password and every piece of it a parser may have cut off and quoted
    (as ``postgresql://u:pa/ss@h/db`` is read as host ``u``, port ``pa``)."""
    _scheme, sep, rest = url.partition("://")
    found = [m[2] for m in _PASSWORD_PARAM.finditer(url)]
    if sep and "@" in rest:
        _user, colon, password = rest.rpartition("@")[0].partition(":")
        if colon:
            found.append(password)
    pieces: set[str] = set()
    for secret in found:
        for variant in (secret, unquote(secret)):
            pieces.add(variant)
            pieces.update(_URL_DELIMITERS.split(variant))
    return sorted((p for p in pieces if len(p) >= 2), key=len, reverse=True)


def scrub(text: str, *urls: str) -> str:
    """``text`` with the passwords of ``urls`` (and any URL's password) masked."""
    for url in urls:
        for secret in _url_secrets(url):
            text = text.replace(secret, "***")
    text = re.sub(r"(\w://[^\s/@:]*):[^\s@]*@", r"\1:***@", text)
    return _PASSWORD_SETTING.sub(r"\1***", text)


def describe_connect_error(exc: BaseException, url: str) -> str:
    """One line on a failed connection to ``url``, with no part of its password."""
    lines = str(exc).strip().splitlines()
    return scrub(lines[0] if lines else type(exc).__name__, url)


class DatabaseUrlError(asyncpg.ClientConfigurationError):
    """A database URL that cannot be parsed; its message shows no part of the password."""


# What connect() may raise for a database that is away, refuses or is misconfigured.
CONNECT_ERRORS: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)


async def connect(url: str, **kwargs: Any) -> asyncpg.Connection:
    """``asyncpg.connect``, except that a URL it cannot parse raises DatabaseUrlError
    (asyncpg's own ValueError may quote a piece of the password: a password holding an
    unencoded / or # is read as a port)."""
    try:
        return await asyncpg.connect(url, **kwargs)
    except asyncpg.InterfaceError:
        raise
    except (ValueError, OverflowError, TypeError) as exc:
        message = (
            f"the database URL {redact(url)!r} cannot be read ({str(exc).strip()}); "
            "a user name or password holding / ? # @ : [ ] must be percent-encoded"
        )
        raise DatabaseUrlError(scrub(" ".join(message.split()), url)) from None


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

    async def connect_replica(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        start = next(turn) % len(replicas)
        for url in replicas[start:] + replicas[:start]:
            try:
                return await connect(url, **{**kwargs, "timeout": timeout})
            except _REPLICA_ERRORS as exc:
                why = describe_connect_error(exc, url)
                log.warning("read replica %s unavailable (%s: %s)", redact(url), _kind(exc), why)
        return await connect(primary, **kwargs)

    return connect_replica


def _kind(exc: BaseException) -> str:
    return type(exc).__name__


async def _session_unchanged(conn: asyncpg.Connection) -> None:
    """Nothing to undo when a connection goes back to the pool (asyncpg rolls back a
    transaction left open itself). Its default reset is a round trip per request (a tenth
    of a single-event lookup's time in the service): the service changes no session state,
    only SET LOCAL and set_config(..., true), advisory locks of a transaction, cursors in
    a transaction (tests/test_db.py checks a connection after each kind of work)."""


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
        pool = await asyncpg.create_pool(
            dsn,
            connect=cast(
                Any, replica_connector(replicas, dsn, _REPLICA_TIMEOUT) if replicas else connect
            ),
            statement_cache_size=settings.statement_cache_size,
            init_size=size,
            min_size=size,
            max_size=settings.pool_max_size,
            timeout=min(settings.pool_acquire_timeout, 10.0),
            server_settings=server_settings(settings),
            # Idle connections are closed so a restarted server is noticed early.
            max_inactive_connection_lifetime=60.0,
            reset=_session_unchanged,
        )
        assert pool is not None
        return pool

    try:
        return await make(settings.pool_min_size)
    except DatabaseUrlError:
        raise  # a setting to correct: waiting will not help
    except UNAVAILABLE_ERRORS as exc:
        why = f"{_kind(exc)}: {describe_connect_error(exc, dsn)}"
        log.warning("database unreachable at start (%s); will connect on demand", why)
        return await make(0)


class FairGate:
    """At most ``size`` holders at once, waiters served in arrival order, interactive
    work first.

    asyncpg's pool hands connections out through an asyncio.Queue, where a newcomer can
    take a connection released to a waiter that has not run yet, sending that waiter
    to the back of the line: under load the longest waits grow several times longer
    than the mean and reach the acquire timeout (measured with ``bench load-test``).

    Bulk work (the batches of streamed lookups and cursors) may hold at most ``size -
    reserve`` places, and a freed place goes to a waiting interactive request (a single
    event, a page-sized lookup, a catalogue query) before any bulk batch: an interactive
    request never queues behind a stream's batches (``bench qos``).
    """

    def __init__(self, size: int, reserve: int = 0) -> None:
        self.free = size
        self.bulk_limit = max(1, size - reserve)
        self.bulk_held = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.bulk_waiters: deque[asyncio.Future[None]] = deque()

    def _may_enter(self, bulk: bool) -> bool:
        if self.free <= 0:
            return False
        if bulk:
            return not self.waiters and not self.bulk_waiters and self.bulk_held < self.bulk_limit
        return not self.waiters

    async def enter(self, timeout: float, bulk: bool = False) -> None:
        if self._may_enter(bulk):
            self._take(bulk)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self.bulk_waiters if bulk else self.waiters
        queue.append(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.leave(bulk)  # the place came just as this waiter gave up: pass it on
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
            raise

    def _take(self, bulk: bool) -> None:
        self.free -= 1
        if bulk:
            self.bulk_held += 1

    def leave(self, bulk: bool = False) -> None:
        self.free += 1
        if bulk:
            self.bulk_held -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand free places to waiters: interactive ones first, then bulk within its cap."""
        while self.free > 0 and self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                self._take(False)
                fut.set_result(None)
        while self.free > 0 and self.bulk_waiters and self.bulk_held < self.bulk_limit:
            fut = self.bulk_waiters.popleft()
            if not fut.done():
                self._take(True)
                fut.set_result(None)


class Lane:
    """One pool and the fair gate in front of it: the only way to a pooled connection.

    ``acquire`` waits at most ``timeout`` in all (at the gate, then in the pool) and
    gives the connection back whatever happens in its block.
    """

    def __init__(self, pool: asyncpg.Pool, timeout: float, reserve: int = 0) -> None:
        self.pool = pool
        self.timeout = timeout
        self.gate = FairGate(pool.get_max_size(), reserve)

    @asynccontextmanager
    async def acquire(
        self, timeout: float | None = None, *, bulk: bool = False
    ) -> AsyncIterator[Connection]:
        """A pooled connection, waited for in turn (``bulk`` work after interactive work,
        and never in the reserved places), counted in the metrics while waited for."""
        limit = self.timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        metrics = current_metrics.get()
        if metrics is not None:
            metrics.waiting += 1
        try:
            try:
                await self.gate.enter(limit, bulk)
            except TimeoutError:
                size = self.gate.bulk_limit if bulk else self.pool.get_max_size()
                raise PoolExhausted(size, limit, bulk) from None
            try:
                # What is left of the one timeout (the pool has a free connection for
                # every holder of the gate, so this waits only to connect).
                conn = await self.pool.acquire(timeout=max(0.1, deadline - loop.time()))
            except BaseException:
                self.gate.leave(bulk)
                raise
        finally:
            if metrics is not None:
                metrics.waiting -= 1
        try:
            yield conn
        finally:
            try:
                await self.pool.release(conn)
            finally:
                self.gate.leave(bulk)


class Database:
    """The service's database: the primary pool for writes and token checks, the read pool
    (the replicas', or the primary's) for lookups and the catalogue. Made by :meth:`open` in
    the lifespan, which closes what it opened on every exit path."""

    def __init__(self, primary: Lane, reads: Lane) -> None:
        self.primary = primary
        self.reads = reads

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, dsn: str) -> AsyncIterator[Database]:
        timeout = settings.pool_acquire_timeout
        # What bulk work may not take: everything but its share, and at least one.
        reserve = max(1, settings.pool_max_size - settings.bulk_connections)
        pool = await create_pool(settings, dsn)
        try:
            primary = Lane(pool, timeout, reserve)
            if not settings.read_database_urls:
                yield cls(primary, primary)
                return
            read_pool = await create_pool(settings, dsn, settings.read_database_urls)
            try:
                yield cls(primary, Lane(read_pool, timeout, reserve))
            finally:
                await close_pool(read_pool)
        finally:
            await close_pool(pool)

    def connection(
        self, *, read: bool = False, timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[Connection]:
        return (self.reads if read else self.primary).acquire(timeout)


_POOL_CLOSE_TIMEOUT = 10.0


async def close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), _POOL_CLOSE_TIMEOUT)
    except TimeoutError:
        log.warning("database pool did not close in time; terminating connections")
        pool.terminate()


async def copy_unless_lost(conn: Connection, copy: Awaitable[_T]) -> _T:
    """Await a ``COPY ... FROM STDIN`` of ``conn``; fail when the connection is lost.

    asyncpg waits for its socket's write buffer to drain before it sends each
    piece of a COPY, and when the server goes away during that wait nothing
    wakes it: the COPY (and the loader) would wait for ever. A listener on the
    connection's end cancels it instead, and the loss is raised as such.
    """
    task = asyncio.ensure_future(copy)
    lost = False

    def on_close(_: object) -> None:
        nonlocal lost
        lost = True
        task.cancel()

    conn.add_termination_listener(on_close)
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if lost and (current is None or not current.cancelling()):
            raise asyncpg.ConnectionDoesNotExistError(
                "the connection to the database was lost during COPY"
            ) from None
        raise
    finally:
        conn.remove_termination_listener(on_close)


async def ping(conn: Connection, timeout: float) -> None:
    await conn.fetchval(PING, timeout=timeout)
