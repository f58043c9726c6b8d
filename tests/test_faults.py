"""Faults of the database under the service: restarts while idle, during a stream and
during a load; an exhausted pool; a full disk under COPY. Each test owns its
PostgreSQL (``own_server``) so that it may stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from eventindex import migrate
from eventindex.client import EventIndexClient
from eventindex.config import Settings
from eventindex.queries import literal
from tests.support.loading import generate, load, one_line_error, snapshot
from tests.support.servers import EmbeddedServer, app_client, run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

RUNS = range(1, 11)
PER_RUN = 5000


def fuid(run: int, event: int) -> str:
    return f"00000000-0000-0000-{run:04x}-{event:012x}"


@pytest.fixture
async def catalogue_on_own_server(own_server: EmbeddedServer) -> str:
    """A catalogue of 50,000 known events on a server the test may stop."""
    url = own_server.url()
    conn = await asyncpg.connect(url)
    try:
        await migrate.apply(conn)
        await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'd')")
        await conn.execute("SELECT events_add_partitions($1::int[])", list(RUNS))
        await conn.copy_records_to_table(
            "events",
            records=[(r, e, e & 7, 1, fuid(r, e)) for r in RUNS for e in range(PER_RUN)],
            columns=["run_number", "event_number", "olt_result", "dsid_raw", "fuid_raw"],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return url


async def restart(server: EmbeddedServer, down_for: float = 0.0) -> None:
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(down_for)
    await asyncio.to_thread(server.start)


async def test_restart_while_idle_is_not_seen_by_clients(
    own_server: EmbeddedServer, catalogue_on_own_server: str
) -> None:
    settings = Settings(database_url=catalogue_on_own_server, pool_min_size=4, pool_max_size=4)
    async for client in app_client(settings):
        # Every pooled connection in use once, so each is a connection to the old server.
        first = await asyncio.gather(*(client.get(f"/v1/events/{r}/1") for r in RUNS))
        assert all(r.status_code == 200 for r in first)
        await restart(own_server)
        after = [await client.get(f"/v1/events/{r}/2") for r in RUNS]
        assert [r.status_code for r in after] == [200] * len(RUNS), [r.text for r in after]
        assert [r.json()["fuid_raw"] for r in after] == [fuid(r, 2) for r in RUNS]
        lookup = await client.post("/v1/lookup", json={"pairs": [[1, 3], [2, 4]]})
        assert lookup.status_code == 200


def known_pairs(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    # One in ten is missing (event numbers past the end of the run).
    return [(rng.choice(RUNS), rng.randrange(PER_RUN + PER_RUN // 9)) for _ in range(n)]


async def test_restart_during_a_stream(
    own_server: EmbeddedServer, catalogue_on_own_server: str
) -> None:
    pairs = known_pairs(300_000, 1)
    body = "".join(f"{r} {e}\n" for r, e in pairs).encode()
    with run_server(catalogue_on_own_server, EVENTINDEX_LOOKUP_BATCH_SIZE="2000") as server:
        # The raw stream: answers up to the failure, then one error line saying why.
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            lines: list[bytes] = []
            async with http.stream(
                "POST",
                "/v1/lookup",
                content=body,
                headers={"content-type": "text/plain", "accept": "application/x-ndjson"},
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    lines.append(line.encode())
                    if len(lines) == 20_000:
                        # The server cannot run ahead: it waits for this reader.
                        await asyncio.to_thread(own_server.stop)
            await asyncio.to_thread(own_server.start)
        last = orjson.loads(lines[-1])
        assert "error" in last, lines[-1]
        assert last["error"]["status"] == 503
        assert last["error"]["type"] == "urn:eventindex:problem:database-unavailable"
        answered = [orjson.loads(x) for x in lines[:-1]]
        assert 20_000 <= len(answered) < len(pairs)
        assert [(a["run_number"], a["event_number"]) for a in answered] == pairs[: len(answered)]

        # The client library resumes after the failure: every pair once, in order.
        got = []
        async with EventIndexClient(server.url, chunk_size=50_000, backoff=0.2) as client:
            restarted = None
            async for result in client.lookup_stream(pairs):
                got.append(result)
                if len(got) == 30_000:
                    await asyncio.to_thread(own_server.stop)
                    restarted = asyncio.create_task(asyncio.to_thread(own_server.start))
        assert restarted is not None
        await restarted
        assert [(r.run_number, r.event_number) for r in got] == pairs
        for r in got:
            expected = fuid(r.run_number, r.event_number) if r.event_number < PER_RUN else None
            assert (str(r.fuid_raw) if r.found else None) == expected, r


async def wait_for_copy(url: str) -> None:
    """Until some session is copying into the database (at most a minute)."""
    conn = await asyncpg.connect(url)
    try:
        for _ in range(6000):
            copying = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE query ILIKE 'COPY%' AND state = 'active' AND pid <> pg_backend_pid()"
            )
            if copying:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no COPY began")
    finally:
        await conn.close()


async def test_restart_during_a_load_leaves_nothing_then_the_load_is_rerun(
    own_server: EmbeddedServer, catalogue_on_own_server: str, tmp_path: Path
) -> None:
    url = catalogue_on_own_server
    generate(
        tmp_path,
        "--events",
        "1500000",
        "--runs",
        "15",
        "--first-run",
        "100",
        "--first-dataset",
        "10",
    )
    before = await snapshot(url)
    loader = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.store_events",
        str(tmp_path),
        "--database-url",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await wait_for_copy(url)
    await restart(own_server)
    _out, err = await asyncio.wait_for(loader.communicate(), 120)
    assert loader.returncode == 1, err
    message = err.decode().strip()
    assert len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    assert "database" in message.lower() or "connection" in message.lower(), message
    assert await snapshot(url) == before
    conn = await asyncpg.connect(url)
    try:
        # Nor a partition made by the failed load.
        assert await conn.fetchval("SELECT count(*) FROM events_partition_bounds()") == 1
    finally:
        await conn.close()
    again = load(url, str(tmp_path))
    assert again.returncode == 0, again.stderr
    after = await snapshot(url)
    assert after[0] == int(str(before[0])) + 1_500_000


async def test_exhausted_pool_gives_503_busy_then_recovers(database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        pool_max_size=2,
        pool_acquire_timeout=1.0,
        lookup_batch_size=1_000,
    )
    locker = await asyncpg.connect(database_url)
    async for client in app_client(settings):
        assert (await client.get("/v1/events/100/1")).status_code == 200
        # Lookups wait behind a lock, each holding one of the two pooled connections.
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        # (JSON lookups: concurrent GETs would go together, in one query on one connection.)
        held = [
            asyncio.create_task(client.post("/v1/lookup", json={"pairs": [[100, e]]}))
            for e in (2, 3)
        ]
        await asyncio.sleep(0.5)
        busy = await client.get("/v1/events/100/4")
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "2"
        problem = busy.json()
        assert problem["type"] == "urn:eventindex:problem:busy"
        assert "2 of the service's database connections" in problem["detail"]
        streamed = await client.post(
            "/v1/lookup",
            content=b"100 5\n",
            headers={"content-type": "text/plain", "accept": "application/x-ndjson"},
        )
        assert streamed.status_code == 503
        assert streamed.json()["type"] == "urn:eventindex:problem:busy"
        # A stream of several batches is bulk work: refused naming what bulk work may hold
        # (the pool's size less one here).
        bulk = await client.post(
            "/v1/lookup",
            content=b"".join(b"100 %d\n" % e for e in range(3_000)),
            headers={"content-type": "text/plain", "accept": "application/x-ndjson"},
        )
        assert bulk.status_code == 503
        assert (
            "All 1 of the database connections this worker lets bulk work"
            in (bulk.json()["detail"])
        )
        await tx.rollback()
        # The waiting lookups are answered, and new ones too.
        assert [(await t).status_code for t in held] == [200, 200]
        assert (await client.get("/v1/events/100/4")).status_code == 200
    await locker.close()


@contextlib.contextmanager
def small_filesystem(owner_of: Path, size: str) -> Iterator[Path | None]:
    """A tmpfs of ``size`` owned as ``owner_of`` is, or None where mounting is not allowed."""
    where = Path(tempfile.mkdtemp(prefix="eventindex-full-", dir="/tmp"))
    mounted = (
        os.geteuid() == 0
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=700", "tmpfs", str(where)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        if mounted:
            stat = owner_of.stat()
            os.chown(where, stat.st_uid, stat.st_gid)
        yield where if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
        shutil.rmtree(where, ignore_errors=True)


async def test_disk_full_under_copy_is_one_clear_line(
    own_server: EmbeddedServer, catalogue_on_own_server: str, tmp_path: Path
) -> None:
    url = catalogue_on_own_server
    generate(
        tmp_path, "--events", "300000", "--runs", "3", "--first-run", "100", "--first-dataset", "10"
    )
    before = await snapshot(url)
    conn = await asyncpg.connect(url)
    with small_filesystem(own_server.tmp / "pgdata", "3m") as disk:
        try:
            if disk is not None:
                # A real full disk: new tables (the load's partitions) on a 3 MB filesystem.
                await conn.execute(f"CREATE TABLESPACE tiny LOCATION {literal(str(disk))}")
                await conn.execute("ALTER DATABASE postgres SET default_tablespace = tiny")
            else:
                # Not root: PostgreSQL's own error for a full disk, raised where it would be.
                await conn.execute(
                    """
                    CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
                    BEGIN
                        RAISE EXCEPTION USING
                            MESSAGE = 'could not extend file "base/5/16400": '
                                || 'No space left on device',
                            ERRCODE = 'disk_full', HINT = 'Check free disk space.';
                    END $$;
                    CREATE TRIGGER disk_full BEFORE INSERT ON events
                        FOR EACH ROW EXECUTE FUNCTION disk_full();
                    """
                )
            result = load(url, str(tmp_path))
            message = one_line_error(result)
            assert "No space left on device" in message, message
            assert await snapshot(url) == before
        finally:
            if disk is not None:
                await conn.execute("ALTER DATABASE postgres RESET default_tablespace")
                await conn.execute("DROP TABLESPACE IF EXISTS tiny")
            else:
                await conn.execute("DROP TRIGGER disk_full ON events")
            await conn.close()
    # With room again, the same load goes through.
    again = load(url, str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert (await snapshot(url))[0] == int(str(before[0])) + 300_000
