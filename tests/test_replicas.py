"""Reads from a streaming replica (pg_basebackup), with the primary as the fallback; and
the service behind pgbouncer in transaction mode."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from eventindex.config import Settings
from tests.support.loading import generate, load
from tests.support.localpg import free_port
from tests.support.pgcluster import LocalServer, Root, require
from tests.support.servers import app_client

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

FIRST_RUN = 300
PAIRS = [(FIRST_RUN + i % 4, (i * 37) % 700) for i in range(3000)]


@dataclass
class Pair:
    root: Root
    primary: LocalServer
    replica: LocalServer


def wait_for_replay(replica_url: str, expected: int) -> None:
    async def count() -> int:
        conn = await asyncpg.connect(replica_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM events"))
        finally:
            await conn.close()

    for _ in range(100):
        if asyncio.run(count()) == expected:
            return
        time.sleep(0.1)
    raise AssertionError("the replica did not catch up")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    require()
    root = Root()
    primary = LocalServer(root, "primary").init().start()
    replica = LocalServer(root, "replica")
    try:
        primary.psql("CREATE DATABASE catalogue")
        url = primary.url("catalogue")
        subprocess.run(
            [sys.executable, "-m", "eventindex", "migrate", "--database-url", url],
            check=True,
            capture_output=True,
            timeout=60,
        )
        data = tmp_path_factory.mktemp("replicated")
        generate(data, "--events", "3000", "--runs", "4", "--first-run", str(FIRST_RUN))
        assert load(url, str(data)).returncode == 0
        replica.replica_of(primary).start()
        wait_for_replay(replica.url("catalogue"), 3000)
        yield Pair(root, primary, replica)
    finally:
        replica.stop("immediate")
        primary.stop("immediate")
        root.remove()


async def test_reads_go_to_the_replica_and_fall_back_to_the_primary(servers: Pair) -> None:
    primary, replica = servers.primary, servers.replica
    settings = Settings(
        database_url=primary.url("catalogue"),
        read_database_urls=[replica.url("catalogue")],
        pool_acquire_timeout=5,
    )
    async for client in app_client(settings):
        expected = await client.post("/v1/lookup", json={"pairs": PAIRS})
        assert expected.status_code == 200
        assert expected.json()["summary"]["found"] > 0

        # The primary away: lookups are the replica's.
        primary.stop()
        try:
            served = await client.post("/v1/lookup", json={"pairs": PAIRS})
            assert served.status_code == 200
            assert served.content == expected.content
            assert (await client.get(f"/v1/events/{FIRST_RUN}/1")).status_code == 200
        finally:
            primary.start()

        # The replica away: after its pooled connections fail (at most once each),
        # reads go to the primary.
        replica.stop()
        try:
            statuses = []
            for _ in range(settings.pool_max_size + 2):
                answer = await client.post("/v1/lookup", json={"pairs": PAIRS})
                statuses.append(answer.status_code)
                if answer.status_code == 200:
                    assert answer.content == expected.content
                    break
                assert answer.status_code == 503, answer.text
            assert statuses[-1] == 200, statuses
        finally:
            replica.start()


def test_read_urls_may_hold_several_hosts() -> None:
    settings = Settings(
        database_url="postgresql://p/db",
        read_database_urls="postgresql://r1:5432,r2:5433/db, postgresql://r3/db",  # type: ignore[arg-type]
    )
    assert settings.read_database_urls == ["postgresql://r1:5432,r2:5433/db", "postgresql://r3/db"]


@pytest.fixture
def pgbouncer(servers: Pair) -> Iterator[str]:
    require(pgbouncer=True)
    directory: Path = servers.root.path / "pgbouncer"
    directory.mkdir(exist_ok=True)
    port = free_port()
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"""
[databases]
catalogue = host=127.0.0.1 port={servers.primary.port} dbname=catalogue
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {directory}/userlist.txt
pool_mode = transaction
default_pool_size = 3
max_client_conn = 200
ignore_startup_parameters = statement_timeout
"""
    )
    owner: list[str] = []
    if os.geteuid() == 0:  # pgbouncer will not run as root
        owner = ["runuser", "-u", "postgres", "--"]
        for path in (directory, *directory.iterdir()):
            shutil.chown(path, "postgres")
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    proc = subprocess.Popen(
        [*owner, binary, str(directory / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"postgresql://postgres@127.0.0.1:{port}/catalogue"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_behind_pgbouncer_in_transaction_mode(servers: Pair, pgbouncer: str) -> None:
    """Many concurrent lookups over a few server connections that pgbouncer hands
    around per transaction: no prepared statement may outlive its transaction."""
    direct = Settings(database_url=servers.primary.url("catalogue"))
    async for client in app_client(direct):
        expected = (await client.post("/v1/lookup", json={"pairs": PAIRS})).content
        single = (await client.get(f"/v1/events/{FIRST_RUN}/5")).content
    # One connection per request: pgbouncer has fewer server connections than the pool
    # has clients, and a request holding one while it waits for a second can wait for
    # ever behind others doing the same.
    settings = Settings(
        database_url=pgbouncer, statement_cache_size=0, stream_connections=1, pool_max_size=10
    )
    async for client in app_client(settings):
        answers = await asyncio.gather(
            *[_ok(client.post("/v1/lookup", json={"pairs": PAIRS})) for _ in range(12)],
            *[_ok(client.get(f"/v1/events/{FIRST_RUN}/5")) for _ in range(40)],
        )
        assert answers[:12] == [expected] * 12
        assert answers[12:] == [single] * 40
        stream = await client.post(
            "/v1/lookup",
            content="".join(f"{r} {e}\n" for r, e in PAIRS).encode(),
            headers={"content-type": "text/plain", "accept": "application/x-ndjson"},
        )
        assert stream.status_code == 200
        assert len(stream.content.splitlines()) == len(PAIRS)


async def _ok(request: Awaitable[httpx.Response]) -> bytes:
    answer = await request
    assert answer.status_code == 200, answer.text
    return answer.content
