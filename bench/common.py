"""What every benchmark shares: the catalogue it makes, pairs, the database's floor and
the seed design, a service in a subprocess, timing and result tables."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import numpy as np
import orjson

from eventindex import queries
from eventindex.ingest.statements import ADD_PARTITIONS
from tests.support.localpg import free_port

COUNT_EVENTS = "SELECT count(*) FROM events"
TRUNCATE_CATALOGUE = "TRUNCATE events, datasets"
ANALYZE_EVENTS = "VACUUM ANALYZE events"
NESTED_LOOPS_ONLY = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"

BENCH_DATABASE = "eventindex_bench"
EVENTS_PER_RUN = 100_000
EVENTS_PER_FILE = 5_000
FLOOR_BATCH = 25_000
JSON_PAIRS = 10_000

FLOOR_QUERY = """
SELECT p.o, x.fuid_raw::text, x.dsid_raw, x.olt_result
FROM unnest($1::integer[], $2::bigint[]) WITH ORDINALITY AS p (r, e, o)
LEFT JOIN events AS x ON x.run_number = p.r AND x.event_number = p.e
"""
SEED_QUERY = (
    "SELECT fuid_raw::text, dsid_raw, olt_result FROM events "
    "WHERE run_number = $1 AND event_number = $2"
)

Pairs = tuple[list[int], list[int]]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def server_url(args: argparse.Namespace) -> tuple[str, Any]:
    url = args.database_url or os.environ.get("EVENTINDEX_DATABASE_URL")
    if url:
        return url, None
    from eventindex import embedded

    server, uri = embedded.start(Path("bench-data").absolute(), "postgres")
    return uri, server


async def migrated_database(url: str, name: str, *, fresh: bool = False) -> str:
    """The URL of database ``name`` on the server at ``url``, created (anew if ``fresh``)
    and migrated."""
    from eventindex import migrate

    admin = await asyncpg.connect(url)
    try:
        if fresh:
            await admin.execute(queries.DROP_DATABASE.format(name=queries.ident(name)))
        if not await admin.fetchval(queries.DATABASE_EXISTS, name):
            await admin.execute(queries.CREATE_DATABASE.format(name=queries.ident(name)))
    finally:
        await admin.close()
    db_url = with_database(url, name)
    conn = await asyncpg.connect(db_url)
    try:
        await migrate.apply(conn)
    finally:
        await conn.close()
    return db_url


async def prepare_database(url: str, n_events: int) -> str:
    """A migrated database holding exactly ``n_events`` synthetic events."""
    db_url = await migrated_database(url, BENCH_DATABASE)
    conn = await asyncpg.connect(db_url)
    try:
        have = await conn.fetchval(COUNT_EVENTS)
        if have != n_events:
            log(f"loading {n_events:,} synthetic events ...")
            started = time.perf_counter()
            await conn.execute(TRUNCATE_CATALOGUE)
            await conn.execute(
                "INSERT INTO datasets (id, name) SELECT i, 'spd.bench.raw.' || i "
                "FROM generate_series(1, 3) i"
            )
            await conn.execute(ADD_PARTITIONS, list(range(1000, 1001 + n_events // EVENTS_PER_RUN)))
            await conn.execute(
                f"""
                INSERT INTO events
                SELECT 1000 + g / {EVENTS_PER_RUN}, g % {EVENTS_PER_RUN}, (g * 2654435761) % 64,
                       1 + (g / {EVENTS_PER_FILE}) % 3,
                       md5('file' || (g / {EVENTS_PER_FILE})::text)::uuid
                FROM generate_series(0, $1 - 1) g
                """,
                n_events,
            )
            await conn.execute(ANALYZE_EVENTS)
            log(f"loaded in {time.perf_counter() - started:.1f} s")
    finally:
        await conn.close()
    return db_url


def make_pairs(n_events: int, n_pairs: int, seed: int) -> Pairs:
    """Random pairs over the catalogue, 5% of them unknown."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, n_events, n_pairs)
    runs = 1000 + g // EVENTS_PER_RUN
    events = g % EVENTS_PER_RUN
    missing = rng.random(n_pairs) < 0.05
    events = np.where(missing, events + EVENTS_PER_RUN, events)
    return runs.tolist(), events.tolist()


async def floor_one_query(conn: asyncpg.Connection, runs: list[int], events: list[int]) -> None:
    await conn.fetch(FLOOR_QUERY, runs, events)


async def floor_sorted_batches(
    conn: asyncpg.Connection, runs: list[int], events: list[int]
) -> None:
    async with conn.transaction():
        await conn.execute(NESTED_LOOPS_ONLY)
        for start in range(0, len(runs), FLOOR_BATCH):
            r = np.asarray(runs[start : start + FLOOR_BATCH])
            e = np.asarray(events[start : start + FLOOR_BATCH])
            order = np.lexsort((e, r))
            await conn.fetch(FLOOR_QUERY, r[order].tolist(), e[order].tolist())


async def seed_design(conn: asyncpg.Connection, pairs: list[tuple[int, int]]) -> None:
    for run, event in pairs:
        await conn.fetchrow(SEED_QUERY, run, event)


async def service_stream(client: httpx.AsyncClient, body: bytes, expect: int) -> None:
    lines = 0
    async with client.stream(
        "POST",
        "/v1/lookup",
        content=body,
        headers={"content-type": "text/plain", "accept": "application/x-ndjson"},
    ) as response:
        response.raise_for_status()
        async for chunk in response.aiter_raw():
            lines += chunk.count(b"\n")
    if lines != expect:
        raise SystemExit(f"bench: the stream answered {lines} lines for {expect} pairs")


async def service_json(client: httpx.AsyncClient, body: bytes, expect: int) -> None:
    response = await client.post(
        "/v1/lookup", content=body, headers={"content-type": "application/json"}
    )
    response.raise_for_status()
    # Checked, not decoded: what is measured is the service, as for the stream.
    body = response.content
    summary = orjson.loads(body[body.rindex(b'"summary":') + 10 : -1])
    if summary["requested"] != expect or body.count(b'"event_number":') != expect:
        raise SystemExit("bench: the JSON lookup answered the wrong number of pairs")


async def service_gets(base: str, pairs: list[tuple[int, int]], concurrency: int) -> None:
    """Keep-alive GETs over plain sockets: a client light enough not to be what is measured."""
    parts = urlsplit(base)
    queue = iter(pairs)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for run, event in queue:
                writer.write(
                    b"GET /v1/events/%d/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (run, event)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                if status not in (200, 404):
                    raise SystemExit(f"bench: GET answered {status}")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


@dataclass
class Series:
    """Rates (items per second) of one measurement over the rounds."""

    rates: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")


async def timed(items: int, run: Callable[..., Awaitable[Any]], *args: Any) -> float:
    started = time.perf_counter()
    await run(*args)
    return items / (time.perf_counter() - started)


def start_service(
    db_url: str, extra_env: dict[str, str] | None = None, stderr: Any = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "EVENTINDEX_DATABASE_URL": db_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    proc = subprocess.Popen([sys.executable, "-m", "eventindex", "serve"], env=env, stderr=stderr)
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(base + "/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("bench: the service did not start")
        time.sleep(0.1)
    proc.terminate()
    raise SystemExit("bench: the service did not become ready")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


class Results:
    def __init__(self) -> None:
        self.series: dict[str, Series] = {}

    def add(self, name: str, rate: float) -> None:
        self.series.setdefault(name, Series()).rates.append(rate)

    def median(self, name: str) -> float:
        return self.series[name].median
