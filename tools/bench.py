"""EventIndex benchmarks: the project measured against its baseline, in one run.

    python -m tools.bench lookup [--events 1000000] [--pairs 200000 1000000] [--rounds 3]
    python -m tools.bench load [--events 10000000] [--rounds 3]
    python -m tools.bench client [--pairs 1000000] [--rounds 3]
    python -m tools.bench catalogue [--events 10000000] [--rounds 3]
    python -m tools.bench churn [--connections 1000000] [--concurrency 200]
    python -m tools.bench load-test [--clients 300] [--duration 60] [--events 1000000]
                                    [--mix get=90,json10k=8,stream=2] [--stream-pairs 100000]
                                    [--server-env EVENTINDEX_NAME=VALUE ...]

``load-test`` runs several hundred concurrent clients (asyncio tasks in this process,
each with its own connection) against a real uvicorn for a fixed time, each looping
over a weighted mix of single-pair GETs (5% unknown: a 404 is the right answer),
JSON lookups of 10,000 pairs and NDJSON streams of 100,000 pairs read to their end,
every answer checked (counts, unknown pairs, sampled fuids). Around the load, one
client measures each kind alone (baseline before, recovery after). It prints per
kind and phase the requests, errors, throughput and p50/p99/max latency, the loaded
and recovered p50 as ratios of the baseline, CPU per process, and the server's RSS
over time (VmRSS each second, peak VmHWM) against a stated bound
(--max-rss-growth-mib). Exit 1 if any request failed (a transport error, a 5xx, a
4xx other than the GET 404 of an unknown event, a wrong answer) or the bound was
exceeded. tests/test_load.py runs a short version with the same generator.

``load`` times the loader (tools/store_events, with all its integrity checks)
against raw ``COPY ... FROM STDIN`` of the same file into a table with the same
primary key and nothing else, interleaved over rounds, on an empty table and on
one that already holds as many other events.

``client`` times ``EventIndexClient.lookup_stream`` (typed results) and
``lookup_stream_raw`` (NDJSON lines) for 1M pairs against the server's own
stream read by plain httpx (the raw server figure), in one run.

``lookup``:

Loads N synthetic events into a benchmark database (reused across runs), then
measures, interleaved over several rounds and reported as medians:

- the floor: the database on one asyncpg connection, the better of one
  unnest-join query for the whole set and sorted batches of 25k (nested loop);
- the service's NDJSON stream, end to end over HTTP to a real uvicorn;
- the service's JSON lookup of 10,000 pairs, against the floor for 10,000 pairs;
  (the service's answers are read whole and counted, not decoded: what is
  measured is the service, as the floor measures the driver's fetch);
- single-pair GETs from concurrent clients, against the seed's design (one
  query per pair on one connection);
- the server's peak RSS growth while it streams the largest pair set.

The database is EVENTINDEX_DATABASE_URL (or --database-url), else an embedded
PostgreSQL under ./bench-data.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import os
import random
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import numpy as np
import orjson

from eventindex import queries
from tools.localpg import free_port

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
        have = await conn.fetchval("SELECT count(*) FROM events")
        if have != n_events:
            log(f"loading {n_events:,} synthetic events ...")
            started = time.perf_counter()
            await conn.execute("TRUNCATE events, datasets")
            await conn.execute(
                "INSERT INTO datasets (id, name) SELECT i, 'spd.bench.raw.' || i "
                "FROM generate_series(1, 3) i"
            )
            await conn.execute(
                queries.ADD_PARTITIONS, list(range(1000, 1001 + n_events // EVENTS_PER_RUN))
            )
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
            await conn.execute("VACUUM ANALYZE events")
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
        await conn.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
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


async def bench_lookup(args: argparse.Namespace) -> None:
    url, _server = server_url(args)
    db_url = await prepare_database(url, args.events)
    sizes = sorted(args.pairs)
    pair_sets = {n: make_pairs(args.events, n, seed=n) for n in sizes}
    bodies = {n: b"".join(b"%d %d\n" % p for p in zip(*pair_sets[n], strict=True)) for n in sizes}
    json_pairs = make_pairs(args.events, JSON_PAIRS, seed=1)
    json_body = (
        b'{"pairs":[' + b",".join(b"[%d,%d]" % p for p in zip(*json_pairs, strict=True)) + b"]}"
    )
    singles = list(zip(*make_pairs(args.events, args.gets, seed=2), strict=True))

    proc, base = start_service(db_url)
    conn = await asyncpg.connect(db_url, server_settings={"jit": "off"})
    res = Results()
    peak_growth_mib = 0.0
    try:
        async with httpx.AsyncClient(base_url=base, timeout=600) as client:
            # Warm up: the table and index into memory, statements, the service.
            await floor_sorted_batches(conn, *pair_sets[sizes[-1]])
            await service_stream(client, bodies[sizes[0]], sizes[0])
            for rnd in range(args.rounds):
                log(f"round {rnd + 1}/{args.rounds}")
                for n in sizes:
                    runs, events = pair_sets[n]
                    res.add(f"one {n}", await timed(n, floor_one_query, conn, runs, events))
                    res.add(
                        f"batches {n}", await timed(n, floor_sorted_batches, conn, runs, events)
                    )
                    before = status_kib(proc.pid, "VmRSS")
                    reset_peak_rss(proc.pid)
                    res.add(f"stream {n}", await timed(n, service_stream, client, bodies[n], n))
                    growth = (status_kib(proc.pid, "VmHWM") - before) / 1024
                    if n == sizes[-1]:
                        peak_growth_mib = max(peak_growth_mib, growth)
                k = JSON_PAIRS
                res.add("one 10k", await timed(k, floor_one_query, conn, *json_pairs))
                res.add("batches 10k", await timed(k, floor_sorted_batches, conn, *json_pairs))
                res.add("json 10k", await timed(k, service_json, client, json_body, k))
                n_get = len(singles)
                res.add("gets", await timed(n_get, service_gets, base, singles, args.concurrency))
                res.add("seed", await timed(n_get, seed_design, conn, singles))
    finally:
        await conn.close()
        proc.terminate()
        proc.wait(10)
    report(args, sizes, res, peak_growth_mib)


def report(args: argparse.Namespace, sizes: list[int], res: Results, growth_mib: float) -> None:
    print()
    print(f"EventIndex lookup benchmark: {args.events:,} events, {args.rounds} rounds, medians")
    print(f"{'measurement':<48}{'rate':>14}  {'baseline':>14}  {'ratio':>6}")

    def row(label: str, rate: float, baseline: float, unit: str) -> None:
        ratio = rate / baseline
        print(f"{label:<48}{rate:>10,.0f} {unit}  {baseline:>10,.0f} {unit}  {ratio:>5.2f}x")

    for n in sizes:
        one, batches = res.median(f"one {n}"), res.median(f"batches {n}")
        label = f"floor {n:,} pairs: one query | sorted batches"
        print(f"{label:<48}{one:>10,.0f} p/s  {batches:>10,.0f} p/s")
        row(
            f"NDJSON stream {n:,} pairs vs floor",
            res.median(f"stream {n}"),
            max(one, batches),
            "p/s",
        )
    floor10k = max(res.median("one 10k"), res.median("batches 10k"))
    row("JSON lookup 10,000 pairs vs floor", res.median("json 10k"), floor10k, "p/s")
    row(
        f"GET one pair, {args.concurrency} clients vs seed design",
        res.median("gets"),
        res.median("seed"),
        "r/s",
    )
    largest = sizes[-1]
    row(
        f"NDJSON stream {largest:,} pairs vs seed design",
        res.median(f"stream {largest}"),
        res.median("seed"),
        "p/s",
    )
    print(f"server peak RSS growth while streaming {sizes[-1]:,} pairs: {growth_mib:.0f} MiB")


async def raw_copy(conn: asyncpg.Connection, table: str, path: Path) -> None:
    def chunks() -> Any:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk

    async def data() -> Any:
        for chunk in chunks():
            yield chunk

    await conn.copy_to_table(table, source=data(), format="csv", header=True)


async def loader_copy(conn: asyncpg.Connection, path: Path) -> None:
    from eventindex.ingest.loader import Loader
    from eventindex.ingest.source import Source

    loader = Loader(conn, progress_stream=io.StringIO())
    async with conn.transaction():
        result = await loader.load_events(Source(str(path), path))
    if result.careful or result.inserted != result.rows:
        raise SystemExit(f"bench: the loader took its careful path: {result.summary()}")


def generated(n_events: int, first_run: int, first_dataset: int, seed: int) -> Path:
    from eventindex.ingest import generator as gen_data

    out = Path("bench-data") / f"load-{n_events}-{first_run}-{seed}"
    if not (out / "events.csv").is_file():
        log(f"generating {n_events:,} events into {out} ...")
        opts = gen_data.Options(
            events=n_events,
            runs=max(1, n_events // 50_000),
            datasets=4,
            seed=seed,
            first_run=first_run,
            first_dataset=first_dataset,
        )
        gen_data.write(gen_data.build(opts), opts, str(out), 1, False, None)
    return out


async def bench_load(args: argparse.Namespace) -> None:
    from eventindex.ingest.loader import Loader
    from eventindex.ingest.source import Source

    url, _server = server_url(args)
    new = generated(args.events, 1000, 1, seed=1)
    other = generated(args.events, 10_000_000, 101, seed=2)
    db_url = await migrated_database(url, "eventindex_bench_load", fresh=True)
    conn = await asyncpg.connect(db_url)
    res = Results()
    n = args.events
    try:
        # The baseline: the same columns and primary key, nothing else.
        await conn.execute(
            "CREATE TABLE events_baseline (LIKE events INCLUDING CONSTRAINTS INCLUDING INDEXES)"
        )
        loader = Loader(conn, progress_stream=io.StringIO())
        for d in (new, other):
            async with conn.transaction():
                await loader.load_datasets(Source("d", d / "datasets.csv"))
        for rnd in range(args.rounds):
            for scenario in ("empty", "holding"):
                log(f"round {rnd + 1}/{args.rounds}: {scenario} table")
                await conn.execute("TRUNCATE events, events_baseline, load_conflicts, loads")
                if scenario == "holding":
                    await raw_copy(conn, "events_baseline", other / "events.csv")
                    await raw_copy(conn, "events", other / "events.csv")
                    await conn.execute("VACUUM ANALYZE events, events_baseline")
                steps = [
                    ("raw", lambda: raw_copy(conn, "events_baseline", new / "events.csv")),
                    ("loader", lambda: loader_copy(conn, new / "events.csv")),
                ]
                if rnd % 2:
                    steps.reverse()
                for name, step in steps:
                    await conn.execute("CHECKPOINT")
                    res.add(f"{name} {scenario}", await timed(n, step))
    finally:
        await conn.close()

    print()
    print(f"EventIndex load benchmark: {n:,} events per file, {args.rounds} rounds, medians")
    print(f"{'measurement':<52}{'loader':>14}  {'raw COPY':>14}  {'ratio':>6}")
    for scenario, label in (("empty", "empty table"), ("holding", f"table holding {n:,} others")):
        loader_rate, raw_rate = res.median(f"loader {scenario}"), res.median(f"raw {scenario}")
        print(
            f"{'load into ' + label:<52}{loader_rate:>10,.0f} r/s  {raw_rate:>10,.0f} r/s  "
            f"{loader_rate / raw_rate:>5.2f}x"
        )


async def client_typed(base: str, pairs: list[tuple[int, int]], expect: int) -> None:
    from eventindex.client import EventIndexClient

    n = 0
    async with EventIndexClient(base) as client:
        async for _ in client.lookup_stream(pairs):
            n += 1
    if n != expect:
        raise SystemExit(f"bench: lookup_stream gave {n} results for {expect} pairs")


async def client_raw(base: str, pairs: list[tuple[int, int]], expect: int) -> None:
    from eventindex.client import EventIndexClient

    n = 0
    async with EventIndexClient(base) as client:
        async for batch in client.lookup_stream_raw(pairs):
            n += len(batch)
    if n != expect:
        raise SystemExit(f"bench: lookup_stream_raw gave {n} results for {expect} pairs")


async def bench_client(args: argparse.Namespace) -> None:
    url, _server = server_url(args)
    db_url = await prepare_database(url, args.events)
    n = args.pairs
    runs, events = make_pairs(args.events, n, seed=n)
    pairs = list(zip(runs, events, strict=True))
    body = b"".join(b"%d %d\n" % p for p in pairs)
    proc, base = start_service(db_url)
    res = Results()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=600) as http:
            await service_stream(http, body, n)  # warm up
            for rnd in range(args.rounds):
                log(f"round {rnd + 1}/{args.rounds}")
                res.add("server", await timed(n, service_stream, http, body, n))
                res.add("raw", await timed(n, client_raw, base, pairs, n))
                res.add("typed", await timed(n, client_typed, base, pairs, n))
    finally:
        proc.terminate()
        proc.wait(10)
    server = res.median("server")
    print()
    print(f"EventIndex client benchmark: {n:,} pairs, {args.events:,} events, medians")
    print(f"{'measurement':<52}{'rate':>14}  {'baseline':>14}  {'ratio':>6}")
    for key, label in (
        ("raw", "lookup_stream_raw (NDJSON lines) vs raw server"),
        ("typed", "lookup_stream (pydantic results) vs raw server"),
    ):
        rate = res.median(key)
        print(f"{label:<52}{rate:>10,.0f} p/s  {server:>10,.0f} p/s  {rate / server:>5.2f}x")


# What each catalogue answer would cost without the summaries: a scan of events.
_SCAN_BASELINES = {
    "datasets": "SELECT dsid_raw, count(*), count(DISTINCT fuid_raw) FROM events GROUP BY 1",
    "runs": "SELECT run_number, count(*) FROM events GROUP BY 1 ORDER BY 1 LIMIT 100",
    "selection count by run": (
        "SELECT run_number, count(*) FROM events WHERE (olt_result & 8) <> 0 GROUP BY 1"
    ),
    "overlap": (
        "SELECT a.bit, b.bit, count(*) FROM events e JOIN olt_bits a "
        "ON (e.olt_result & (1 << a.bit)) <> 0 JOIN olt_bits b "
        "ON (e.olt_result & (1 << b.bit)) <> 0 GROUP BY 1, 2"
    ),
}


async def bench_catalogue(args: argparse.Namespace) -> None:
    from eventindex.ingest.loader import Loader
    from eventindex.ingest.source import Source

    url, _server = server_url(args)
    data = generated(args.events, 1000, 1, seed=1)
    name = "eventindex_bench_catalogue"
    db_url = await migrated_database(url, name)
    conn = await asyncpg.connect(db_url)
    try:
        if await conn.fetchval("SELECT count(*) FROM events") != args.events:
            log(f"loading {args.events:,} events with the loader ...")
            await conn.execute("TRUNCATE events, datasets, files, run_olt_counts, loads CASCADE")
            loader = Loader(conn, progress_stream=io.StringIO())
            async with conn.transaction():
                await loader.load_datasets(Source("d", data / "datasets.csv"))
                await loader.load_events(Source("e", data / "events.csv"))
            await conn.execute("VACUUM ANALYZE")
        run = await conn.fetchval("SELECT min(run_number) FROM files")
        fuid = await conn.fetchval("SELECT fuid_raw::text FROM files ORDER BY fuid_raw LIMIT 1")
    finally:
        await conn.close()

    calls = {
        "datasets": "/v1/datasets",
        "runs": "/v1/runs?limit=100",
        "run detail": f"/v1/runs/{run}",
        "selection count": "/v1/selection/count?all=dimuon",
        "selection count by run": "/v1/selection/count?all=dimuon&group_by=run",
        "overlap": "/v1/online-filter/overlap",
        "file": f"/v1/files/{fuid}",
        "file events (stream)": f"/v1/files/{fuid}/events",
        f"selection events of run {run} (stream)": f"/v1/selection/events?run_min={run}"
        f"&run_max={run}&any=dimuon,jpsi_candidate",
        "consistency of dataset 1 (scans it)": "/v1/datasets/1/consistency",
    }
    proc, base = start_service(db_url)
    conn = await asyncpg.connect(db_url, server_settings={"jit": "off"})
    res = Results()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=600) as http:
            for rnd in range(args.rounds):
                log(f"round {rnd + 1}/{args.rounds}")
                for label, path in calls.items():
                    started = time.perf_counter()
                    response = await http.get(path)
                    response.raise_for_status()
                    res.add(label, time.perf_counter() - started)
                for label, sql in _SCAN_BASELINES.items():
                    started = time.perf_counter()
                    await conn.fetch(sql)
                    res.add("scan " + label, time.perf_counter() - started)
    finally:
        await conn.close()
        proc.terminate()
        proc.wait(10)
    print()
    print(
        f"EventIndex catalogue benchmark: {args.events:,} events, {args.rounds} rounds, "
        "median seconds per request (HTTP, end to end)"
    )
    print(f"{'query':<52}{'service':>10}  {'scan of events':>14}  {'speed-up':>8}")
    for label in calls:
        line = f"{label:<52}{res.median(label):>10.4f}"
        if label in _SCAN_BASELINES:
            scan = res.median("scan " + label)
            line += f"  {scan:>14.3f}  {scan / res.median(label):>7.0f}x"
        print(line)


async def _sample_pairs(url: str, n_pairs: int, seed: int) -> Pairs:
    """Random events of the catalogue (with repeats), 5% of them made unknown."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT run_number, event_number FROM events")
    finally:
        await conn.close()
    rng = np.random.default_rng(seed)
    runs = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    events = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    pick = rng.integers(0, len(rows), n_pairs)
    missing = rng.random(n_pairs) < 0.05
    return runs[pick].tolist(), np.where(missing, events[pick] + 10**9, events[pick]).tolist()


async def bench_scale(args: argparse.Namespace) -> None:
    """Single server vs a coordinator with ``--shards`` shards, all local PostgreSQL 15."""
    from eventindex import sharding
    from tools.localpg import LocalServer, Root

    root = Root()
    servers: list[LocalServer] = []
    services: list[subprocess.Popen[bytes]] = []
    conf = {"shared_buffers": args.shared_buffers, "max_connections": "100"}
    try:
        log("starting servers ...")
        single = LocalServer(root, "single").init(**conf).start()
        coordinator = LocalServer(root, "coordinator").init(**conf).start()
        shards = [LocalServer(root, f"shard{i}").init(**conf).start() for i in range(args.shards)]
        servers += [single, coordinator, *shards]
        for server in servers:
            server.psql("CREATE DATABASE eventindex")
        single_url, coordinator_url = single.url("eventindex"), coordinator.url("eventindex")
        await migrated_database(single.url(), "eventindex")
        await sharding.init(
            coordinator_url,
            {f"s{i}": shard.url("eventindex") for i, shard in enumerate(shards)},
        )
        data = generated(args.events, 1000, 1, 7)
        for label, url in (("single server", single_url), ("sharded", coordinator_url)):
            started = time.perf_counter()
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tools.store_events", str(data), "--database-url", url],
                check=True,
                capture_output=True,
            )
            elapsed = time.perf_counter() - started
            log(f"loaded {args.events:,} events, {label}: {args.events / elapsed:,.0f} events/s")
        for server in [single, *shards]:
            server.psql("VACUUM ANALYZE", "eventindex")
        runs, events = await _sample_pairs(single_url, max(args.pairs), 11)
        bodies = {
            n: "".join(f"{r} {e}\n" for r, e in zip(runs[:n], events[:n], strict=True)).encode()
            for n in args.pairs
        }
        json_body = orjson.dumps(
            {"pairs": [list(p) for p in zip(runs, events, strict=True)][:10_000]}
        )
        bases = {}
        for label, url in (("single", single_url), ("sharded", coordinator_url)):
            proc, bases[label] = start_service(url)
            services.append(proc)
        res = Results()
        async with httpx.AsyncClient(timeout=600) as client:
            for round_ in range(args.rounds):
                log(f"round {round_ + 1}/{args.rounds}")
                for label, base in bases.items():
                    client.base_url = httpx.URL(base)
                    rate = await timed(10_000, service_json, client, json_body, 10_000)
                    res.add(f"{label} json 10000", rate)
                    for n, body in bodies.items():
                        res.add(
                            f"{label} stream {n}", await timed(n, service_stream, client, body, n)
                        )
        print()
        print(f"lookups, {args.events:,} events, {args.shards} shards, medians of {args.rounds}")
        print(f"{'request':<28}{'single server':>16}{'sharded':>16}{'ratio':>9}")
        for what in ["json 10000", *(f"stream {n}" for n in args.pairs)]:
            one, many = res.median(f"single {what}"), res.median(f"sharded {what}")
            print(f"{what + ' (pairs/s)':<28}{one:>16,.0f}{many:>16,.0f}{many / one:>8.2f}x")
    finally:
        for proc in services:
            proc.terminate()
            proc.wait(10)
        for server in servers:
            server.stop("immediate")
        root.remove()


# ---------------------------------------------------------------------------------------------
# load-test: several hundred clients mixing GETs, 10k-pair JSON lookups and NDJSON streams.
# The generator (build_workload, run_load, ServerMonitor) is shared with tests/test_load.py.

LOAD_KINDS = ("get", "json10k", "stream")
DEFAULT_MIX = "get=90,json10k=8,stream=2"
NDJSON = "application/x-ndjson"
MISSING_SHARE = 0.05


def parse_mix(text: str) -> dict[str, float]:
    """``get=90,json10k=8,stream=2``: relative weights of the request kinds."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        name = name.strip()
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or name not in LOAD_KINDS or value < 0:
            raise argparse.ArgumentTypeError(
                f"expected kind=weight,... with kinds {', '.join(LOAD_KINDS)}, not {part!r}"
            )
        mix[name] = value
    if not any(mix.values()):
        raise argparse.ArgumentTypeError("every weight is zero")
    return mix


class LoadCatalogue(Protocol):
    """What the load generator needs to know of the catalogue it runs against."""

    def sample(self, rng: np.random.Generator, n: int) -> Pairs:
        """``n`` random pairs, some of them unknown."""
        ...

    def fuid(self, run: int, event: int) -> str | None:
        """The file UUID the service must answer for the pair; None if it is unknown."""
        ...


@dataclass(frozen=True)
class BenchCatalogue:
    """The synthetic events ``prepare_database`` loads (5% of the sampled pairs unknown)."""

    n_events: int

    def sample(self, rng: np.random.Generator, n: int) -> Pairs:
        g = rng.integers(0, self.n_events, n)
        events = g % EVENTS_PER_RUN
        missing = rng.random(n) < MISSING_SHARE
        return (1000 + g // EVENTS_PER_RUN).tolist(), np.where(
            missing, events + EVENTS_PER_RUN, events
        ).tolist()

    def fuid(self, run: int, event: int) -> str | None:
        g = (run - 1000) * EVENTS_PER_RUN + event
        if run < 1000 or not 0 <= event < EVENTS_PER_RUN or g >= self.n_events:
            return None
        digest = hashlib.md5(b"file%d" % (g // EVENTS_PER_FILE), usedforsecurity=False)
        return str(uuid.UUID(digest.hexdigest()))  # md5('file' || n)::uuid, as loaded


# (index in the request, run, event, the expected fuid or None for an unknown pair)
Check = tuple[int, int, int, str | None]


@dataclass(frozen=True)
class LoadRequest:
    """A prepared lookup: its body, how many pairs it holds (and how many of them are not
    in the catalogue) and answers to check."""

    body: bytes
    content_type: str
    pairs: int
    unknown: int
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class LoadWorkload:
    gets: tuple[tuple[int, int, str | None], ...]
    json: tuple[LoadRequest, ...]
    streams: tuple[LoadRequest, ...]


def build_workload(
    catalogue: LoadCatalogue,
    *,
    json_pairs: int = JSON_PAIRS,
    stream_pairs: int = 100_000,
    variants: int = 4,
    gets: int = 20_000,
    checks: int = 64,
    seed: int = 0,
) -> LoadWorkload:
    """Request bodies made once (so that the clients spend their time on the service), with
    the first, the last and ``checks`` random answers of each to be checked. Streams
    alternate text (``run event``) and NDJSON object bodies."""
    rng = np.random.default_rng(seed)

    def request(body: bytes, content_type: str, runs: list[int], events: list[int]) -> LoadRequest:
        picked = {0, len(runs) - 1, *rng.integers(0, len(runs), checks).tolist()}
        return LoadRequest(
            body,
            content_type,
            len(runs),
            sum(catalogue.fuid(r, e) is None for r, e in zip(runs, events, strict=True)),
            tuple(
                (i, runs[i], events[i], catalogue.fuid(runs[i], events[i])) for i in sorted(picked)
            ),
        )

    json_requests = []
    stream_requests = []
    for v in range(variants):
        runs, events = catalogue.sample(rng, json_pairs)
        body = orjson.dumps({"pairs": [list(p) for p in zip(runs, events, strict=True)]})
        json_requests.append(request(body, "application/json", runs, events))
        runs, events = catalogue.sample(rng, stream_pairs)
        pairs = zip(runs, events, strict=True)
        if v % 2:
            body = b"".join(b'{"run_number":%d,"event_number":%d}\n' % p for p in pairs)
            stream_requests.append(request(body, NDJSON, runs, events))
        else:
            body = b"".join(b"%d %d\n" % p for p in pairs)
            stream_requests.append(request(body, "text/plain", runs, events))
    runs, events = catalogue.sample(rng, gets)
    singles = tuple((r, e, catalogue.fuid(r, e)) for r, e in zip(runs, events, strict=True))
    return LoadWorkload(singles, tuple(json_requests), tuple(stream_requests))


class WrongAnswer(Exception):
    """An answer with the wrong content: a count, a pair, a file, the order."""


class Refused(Exception):
    """A status other than the right one (503 from a busy pool, ...), or a stream that
    ended part-way with an error line (the pairs before it answered rightly)."""

    def __init__(self, what: str, status: int, detail: str) -> None:
        super().__init__(f"{what}: HTTP {status} {detail[:300]!r}")
        self.status = status


def _refused(what: str, response: httpx.Response) -> Refused:
    return Refused(what, response.status_code, response.text)


def _check_result(what: str, result: Any, check: Check) -> None:
    _, run, event, fuid = check
    if (
        not isinstance(result, dict)
        or result.get("run_number") != run
        or result.get("event_number") != event
        or result.get("found") is not (fuid is not None)
        or result.get("fuid_raw") != fuid
    ):
        raise WrongAnswer(f"{what}: answer {check[0]} is {result!r}, expected {check}")


async def _load_get(
    http: httpx.AsyncClient, work: LoadWorkload, rng: random.Random
) -> tuple[int, int]:
    """One GET; returns (pairs, unknown pairs). A 404 for an unknown event is right."""
    run, event, fuid = work.gets[rng.randrange(len(work.gets))]
    what = f"GET /v1/events/{run}/{event}"
    response = await http.get(f"/v1/events/{run}/{event}")
    if response.status_code not in (200, 404):
        raise _refused(what, response)
    if (response.status_code == 404) != (fuid is None):
        raise WrongAnswer(f"{what}: HTTP {response.status_code}, expected fuid_raw {fuid}")
    if fuid is None:
        return 1, 1
    answer = orjson.loads(response.content)
    if (answer.get("run_number"), answer.get("event_number"), answer.get("fuid_raw")) != (
        run,
        event,
        fuid,
    ):
        raise WrongAnswer(f"{what}: {answer!r}, expected fuid_raw {fuid}")
    return 1, 0


async def _load_json(
    http: httpx.AsyncClient, work: LoadWorkload, rng: random.Random
) -> tuple[int, int]:
    req = work.json[rng.randrange(len(work.json))]
    what = f"POST /v1/lookup JSON {req.pairs} pairs"
    response = await http.post(
        "/v1/lookup", content=req.body, headers={"content-type": req.content_type}
    )
    if response.status_code != 200:
        raise _refused(what, response)
    answer = orjson.loads(response.content)
    results = answer["results"]
    summary = answer["summary"]
    if len(results) != req.pairs or (summary["requested"], summary["missing"]) != (
        req.pairs,
        req.unknown,
    ):
        raise WrongAnswer(
            f"{what}: {len(results)} results, summary {summary}, {req.unknown} unknown sent"
        )
    for check in req.checks:
        _check_result(what, results[check[0]], check)
    return req.pairs, req.unknown


async def _load_stream(
    http: httpx.AsyncClient, work: LoadWorkload, rng: random.Random
) -> tuple[int, int]:
    """A streamed lookup read to its end: every line counted, the checked ones decoded."""
    req = work.streams[rng.randrange(len(work.streams))]
    what = f"POST /v1/lookup {req.content_type} -> NDJSON stream {req.pairs} pairs"
    checks = iter(req.checks)
    check = next(checks, None)
    lines = unknown = 0
    tail = last = b""
    headers = {"content-type": req.content_type, "accept": NDJSON}
    async with http.stream("POST", "/v1/lookup", content=req.body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise _refused(what, response)
        async for chunk in response.aiter_bytes():
            data = tail + chunk
            cut = data.rfind(b"\n") + 1  # whole lines before, a part of one after
            tail = data[cut:]
            if not cut:
                continue
            done = data[:cut]
            n = done.count(b"\n")
            unknown += done.count(b'"found":false')
            if check is not None and check[0] < lines + n:
                parts = done.split(b"\n")
                while check is not None and check[0] < lines + n:
                    line = parts[check[0] - lines]
                    if line.startswith(b'{"error"'):
                        break  # the stream failed here: the end says how
                    _check_result(what, orjson.loads(line), check)
                    check = next(checks, None)
            last = done[done.rfind(b"\n", 0, cut - 1) + 1 : cut - 1]
            lines += n
    if last.startswith(b'{"error"') and not tail:
        status = orjson.loads(last)["error"].get("status", 0)
        raise Refused(f"{what}: ended after {lines - 1} answers with", status, last.decode())
    if tail:
        raise WrongAnswer(f"{what}: the stream ended inside a line: {tail[:300]!r}")
    if lines != req.pairs or unknown != req.unknown:
        raise WrongAnswer(
            f"{what}: {lines} lines for {req.pairs} pairs, {unknown} not found for "
            f"{req.unknown} unknown"
        )
    return req.pairs, unknown


_LOAD_CALLS: dict[
    str, Callable[[httpx.AsyncClient, LoadWorkload, random.Random], Awaitable[tuple[int, int]]]
] = {"get": _load_get, "json10k": _load_json, "stream": _load_stream}


@dataclass
class KindStats:
    """One kind of request in one phase."""

    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    pairs: int = 0
    unknown: int = 0  # pairs answered as not in the catalogue (GET: the 404s)
    errors: int = 0
    wrong: int = 0  # of the errors: answers with the wrong content
    refused: dict[int, int] = field(default_factory=dict)  # of the errors: by HTTP status
    messages: list[str] = field(default_factory=list)  # the first few errors of each sort

    def fail(self, exc: Exception, message: str) -> None:
        self.errors += 1
        if isinstance(exc, WrongAnswer):
            self.wrong += 1
        elif isinstance(exc, Refused):
            self.refused[exc.status] = self.refused.get(exc.status, 0) + 1
        sort = type(exc).__name__
        if sum(m.startswith(sort + ":") for m in self.messages) < 3:
            self.messages.append(f"{sort}: {message}")

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) if self.latencies else float("nan")


@dataclass
class LoadGauge:
    """Live counters the monitor samples."""

    in_flight: int = 0
    done: int = 0


@dataclass
class LoadStats:
    kinds: dict[str, KindStats]
    clients: int
    elapsed: float = 0.0  # from the start to the end of the last request
    client_cpu: float = 0.0  # CPU seconds of this (client) process meanwhile

    @property
    def errors(self) -> int:
        return sum(k.errors for k in self.kinds.values())

    @property
    def wrong(self) -> int:
        return sum(k.wrong for k in self.kinds.values())

    @property
    def requests(self) -> int:
        return sum(len(k.latencies) + k.errors for k in self.kinds.values())

    def messages(self) -> list[str]:
        return [m for k in self.kinds.values() for m in k.messages]


async def run_load(
    base: str,
    work: LoadWorkload,
    *,
    clients: int,
    duration: float,
    mix: dict[str, float],
    timeout: float = 120.0,
    seed: int = 0,
    gauge: LoadGauge | None = None,
) -> LoadStats:
    """``clients`` concurrent clients, each with its own connection, each sending requests
    of a kind drawn from ``mix`` one after the other until ``duration`` is over; requests
    running then are finished. Every answer is checked: an error is a transport error, any
    status but 200 (and 404 for an unknown event's GET), or a wrong answer."""
    kinds = [k for k in LOAD_KINDS if mix.get(k, 0) > 0]
    weights = [mix[k] for k in kinds]
    stats = LoadStats({k: KindStats() for k in kinds}, clients)
    live = gauge if gauge is not None else LoadGauge()
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # One TLS context for all: httpx makes one per client otherwise (~40 ms of CPU each,
    # which held up the start of several hundred clients by seconds).
    tls = ssl.create_default_context()

    async def client(i: int) -> None:
        rng = random.Random(seed * 100_003 + i)
        async with httpx.AsyncClient(
            base_url=base, timeout=timeout, limits=limits, verify=tls
        ) as http:
            while time.perf_counter() < deadline:
                kind = rng.choices(kinds, weights)[0]
                kstats = stats.kinds[kind]
                live.in_flight += 1
                started = time.perf_counter()
                try:
                    pairs, unknown = await _LOAD_CALLS[kind](http, work, rng)
                except Exception as exc:
                    elapsed = time.perf_counter() - started
                    kstats.fail(exc, f"{kind} after {elapsed:.2f} s: {exc}")
                else:
                    kstats.latencies.append(time.perf_counter() - started)
                    kstats.pairs += pairs
                    kstats.unknown += unknown
                finally:
                    live.in_flight -= 1
                    live.done += 1

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(i) for i in range(clients)))
    stats.elapsed = time.perf_counter() - started
    stats.client_cpu = time.process_time() - cpu
    return stats


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state is [0], ppid [1])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of a process, its children (a PostgreSQL server's backends) and its
    children that have ended."""
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat(entry.name)
        except OSError:
            continue  # ended meanwhile
        if entry.name == str(root):
            ticks += sum(int(f) for f in fields[11:15])
        elif fields[1] == str(root):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def local_postmaster(db_url: str) -> int | None:
    """The pid of the PostgreSQL server behind ``db_url`` when it runs on this machine:
    the parent of the backend serving a connection."""
    conn = await asyncpg.connect(db_url)
    try:
        backend: int = await conn.fetchval("SELECT pg_backend_pid()")
        return _postgres_parent(backend)
    finally:
        await conn.close()


def _postgres_parent(backend: int) -> int | None:
    try:
        parent = int(_stat(backend)[1])
        if Path(f"/proc/{parent}/comm").read_text().strip() in ("postgres", "postmaster"):
            return parent
    except (OSError, ValueError):
        pass
    return None


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the machine, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


@dataclass(frozen=True)
class MonitorSample:
    t: float  # seconds since the monitor started
    phase: str
    rss_kib: int
    in_flight: int
    done: int
    server_cpu: float  # cumulative CPU seconds of the server
    postgres_cpu: float  # of the PostgreSQL server (nan if not on this machine)
    client_cpu: float  # of this process
    machine: tuple[int, int]  # cumulative (busy, total) jiffies
    lag: float  # how late this sample came: the client's event loop was busy


class ServerMonitor:
    """Samples the server's RSS (VmRSS), the CPU of the server, PostgreSQL (given its
    postmaster's pid), this client process and the machine, and the requests in flight."""

    def __init__(
        self, pid: int, gauge: LoadGauge, interval: float = 1.0, postmaster: int | None = None
    ) -> None:
        self.pid = pid
        self.gauge = gauge
        self.interval = interval
        self.postmaster = postmaster
        self.phase = "start"
        self.samples: list[MonitorSample] = []
        self._began = time.perf_counter()
        self._task: asyncio.Task[None] | None = None

    def sample(self, lag: float = 0.0) -> MonitorSample:
        s = MonitorSample(
            time.perf_counter() - self._began,
            self.phase,
            status_kib(self.pid, "VmRSS"),
            self.gauge.in_flight,
            self.gauge.done,
            cpu_seconds(self.pid),
            float("nan") if self.postmaster is None else tree_cpu_seconds(self.postmaster),
            time.process_time(),
            machine_jiffies(),
            lag,
        )
        self.samples.append(s)
        return s

    async def _run(self) -> None:
        due = time.perf_counter()
        while True:
            now = time.perf_counter()
            self.sample(max(0.0, now - due))
            due = now + self.interval
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._began = time.perf_counter()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()

    def cpu(self, phase: str) -> dict[str, float]:
        """Cores used during a phase (from the sample before it to its last one) by the
        server, PostgreSQL, this client, other processes, and the machine's idle cores."""
        idx = [i for i, s in enumerate(self.samples) if s.phase == phase]
        if not idx:
            return {}
        a, b = self.samples[max(0, idx[0] - 1)], self.samples[idx[-1]]
        dt = b.t - a.t
        busy, total = (y - x for x, y in zip(a.machine, b.machine, strict=True))
        if dt <= 0 or total <= 0:
            return {}
        cores = os.cpu_count() or 1
        used = {
            "server": (b.server_cpu - a.server_cpu) / dt,
            "PostgreSQL": (b.postgres_cpu - a.postgres_cpu) / dt,
            "client": (b.client_cpu - a.client_cpu) / dt,
        }
        known = sum(v for v in used.values() if v == v)
        used["others"] = busy / total * cores - known
        used["idle"] = (1 - busy / total) * cores
        return used


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def _load_settings(extra: dict[str, str]) -> str:
    from eventindex.config import Settings

    shown = []
    for name in (
        "pool_max_size",
        "pool_acquire_timeout",
        "stream_connections",
        "lookup_batch_size",
        "max_connections",
        "workers",
    ):
        if name not in Settings.model_fields:
            continue
        key = "EVENTINDEX_" + name.upper()
        value = extra.get(key, os.environ.get(key))
        origin = "set" if key in extra else "environment" if value is not None else "default"
        if value is None:
            value = str(Settings.model_fields[name].default)
        shown.append(f"{key}={value} ({origin})")
    return ", ".join(shown)


async def bench_load_test(args: argparse.Namespace) -> int:
    url, _server = server_url(args)
    db_url = await prepare_database(url, args.events)
    postmaster = await local_postmaster(db_url)
    mix = args.mix
    extra_env = dict(args.server_env)
    log("preparing request bodies ...")
    work = build_workload(
        BenchCatalogue(args.events), stream_pairs=args.stream_pairs, seed=args.seed
    )
    server_log = Path("bench-data") / "load-test-server.log"
    server_log.parent.mkdir(exist_ok=True)
    phases: dict[str, LoadStats] = {}
    with server_log.open("wb") as log_file:
        proc, base = start_service(db_url, extra_env, stderr=log_file)
        gauge = LoadGauge()
        monitor = ServerMonitor(proc.pid, gauge, postmaster=postmaster)

        async def single(phase: str) -> LoadStats:
            """One client, each kind alone in turn for --single-seconds."""
            monitor.phase = phase
            log(f"{phase}: one client, {args.single_seconds:g} s per kind ...")
            merged = LoadStats({}, 1)
            for kind in (k for k in LOAD_KINDS if mix.get(k, 0) > 0):
                one = await run_load(
                    base,
                    work,
                    clients=1,
                    duration=args.single_seconds,
                    mix={kind: 1},
                    gauge=gauge,
                    seed=1,
                    timeout=args.timeout,
                )
                merged.kinds.update(one.kinds)
                merged.elapsed += one.elapsed
                merged.client_cpu += one.client_cpu
            return merged

        try:
            monitor.start()
            monitor.phase = "warm-up"
            log(f"warm-up: 8 clients for {args.warmup:g} s ...")
            phases["warm-up"] = await run_load(
                base, work, clients=8, duration=args.warmup, mix=mix, gauge=gauge
            )
            phases["baseline"] = await single("baseline")
            monitor.phase = "load"
            log(f"load: {args.clients} clients for {args.duration:g} s ...")
            rss_before = status_kib(proc.pid, "VmRSS")
            reset_peak_rss(proc.pid)
            phases["load"] = await run_load(
                base,
                work,
                clients=args.clients,
                duration=args.duration,
                mix=mix,
                gauge=gauge,
                seed=2,
                timeout=args.timeout,
            )
            peak_kib = status_kib(proc.pid, "VmHWM")
            rss_after_load = status_kib(proc.pid, "VmRSS")
            phases["recovery"] = await single("recovery")
            monitor.phase = "idle"
            await asyncio.sleep(2)
        finally:
            await monitor.stop()
            proc.terminate()
            proc.wait(30)
    return report_load_test(
        args, phases, monitor, (rss_before, peak_kib, rss_after_load), extra_env, server_log
    )


def _log_summary(path: Path) -> list[str]:
    """The server's warnings and errors, counted by kind (numbers made N)."""
    kinds: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        for level in (" WARNING ", " ERROR ", " CRITICAL "):
            if level in line:
                key = level.strip() + " " + re.sub(r"\d+", "N", line.split(level, 1)[1])[:200]
                kinds[key] = kinds.get(key, 0) + 1
    return [f"{n:>6} x {key}" for key, n in sorted(kinds.items(), key=lambda kv: -kv[1])]


def report_load_test(
    args: argparse.Namespace,
    phases: dict[str, LoadStats],
    monitor: ServerMonitor,
    rss: tuple[int, int, int],
    extra_env: dict[str, str],
    server_log: Path,
) -> int:
    load = phases["load"]
    mix = ",".join(f"{k}={v:g}" for k, v in args.mix.items())
    print()
    print(
        f"EventIndex load test: {args.events:,} events; {args.clients} clients for "
        f"{args.duration:g} s, mix {mix} (get: one pair, {MISSING_SHARE:.0%} unknown -> 404; "
        f"json10k: {JSON_PAIRS:,} pairs as JSON; stream: {args.stream_pairs:,} pairs, text "
        "or NDJSON body, NDJSON answer read to its end)"
    )
    print(f"server: one `eventindex serve` (uvicorn); {_load_settings(extra_env)}")
    print(
        f"clients: {args.clients} asyncio tasks in this one Python process, each with its own "
        "httpx connection (keep-alive), every answer checked"
    )
    print()
    print(
        f"{'phase':<10}{'kind':<9}{'requests':>9}{'errors':>7}{'req/s':>9}{'pairs/s':>11}"
        f"{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"
    )
    for phase, stats in phases.items():
        for kind, k in stats.kinds.items():
            n = len(k.latencies) + k.errors
            # The one-client phases run each kind alone, for its own share of the time.
            seconds = stats.elapsed / (1 if stats.clients > 1 else len(stats.kinds))
            print(
                f"{phase:<10}{kind:<9}{n:>9,}{k.errors:>7}{n / seconds:>9,.1f}"
                f"{k.pairs / seconds:>11,.0f}{_ms(k.quantile(0.5)):>10}"
                f"{_ms(k.quantile(0.99)):>10}{_ms(max(k.latencies, default=float('nan'))):>10}"
            )
    print(
        f"load: {load.requests:,} requests in {load.elapsed:.1f} s "
        f"({load.requests / load.elapsed:,.1f} req/s, "
        f"{sum(k.pairs for k in load.kinds.values()) / load.elapsed:,.0f} pairs/s answered "
        f"rightly), {sum(k.unknown for k in load.kinds.values()):,} unknown pairs answered as "
        "unknown"
    )
    print()
    print("latency under load and after it, as ratios of the unloaded baseline p50 (one client):")
    print(f"{'kind':<9}{'baseline p50':>14}{'load p50':>10}{'load p99':>10}{'recovered p50':>15}")
    recovered = True
    for kind, k in load.kinds.items():
        b = phases["baseline"].kinds[kind].quantile(0.5)
        r = phases["recovery"].kinds[kind].quantile(0.5)
        recovered &= r / b <= args.recovery_ratio
        print(
            f"{kind:<9}{_ms(b) + ' ms':>14}{k.quantile(0.5) / b:>9.1f}x"
            f"{k.quantile(0.99) / b:>9.1f}x{r / b:>14.2f}x"
        )
    print()
    cores = os.cpu_count() or 1
    print(f"CPU, in cores (the machine has {cores}), per phase:")
    names = ["server", "PostgreSQL", "client", "others", "idle"]
    print(f"{'phase':<10}" + "".join(f"{n:>12}" for n in names))
    for phase in phases:
        used = monitor.cpu(phase)
        print(f"{phase:<10}" + "".join(f"{used.get(n, float('nan')):>12.2f}" for n in names))
    lags = [s.lag for s in monitor.samples if s.phase == "load"] or [0.0]
    print(
        "client event loop under load: 1 s monitor ticks late by "
        f"{statistics.median(lags) * 1e3:.0f} ms (median), {max(lags) * 1e3:.0f} ms (max); "
        "the client is a bottleneck only if it uses a whole core or its ticks are late by much"
    )
    print()
    print("server RSS over time (every 5 s; in flight: client requests running)")
    print(f"{'t s':>6}  {'phase':<9}{'RSS MiB':>9}{'in flight':>11}{'req/s':>9}{'server CPU':>12}")
    rows = [s for i, s in enumerate(monitor.samples) if i % 5 == 0] + monitor.samples[-1:]
    prev = monitor.samples[0]
    for s in rows:
        dt = s.t - prev.t
        rate = (s.done - prev.done) / dt if dt > 0 else 0.0
        cpu = (s.server_cpu - prev.server_cpu) / dt if dt > 0 else 0.0
        print(
            f"{s.t:>6.0f}  {s.phase:<9}{s.rss_kib / 1024:>9.0f}{s.in_flight:>11}"
            f"{rate:>9,.1f}{cpu:>11.0%}"
        )
        prev = s
    rss_before, peak_kib, rss_after_load = rss
    growth = (peak_kib - rss_before) / 1024
    within = growth <= args.max_rss_growth_mib
    print(
        f"server RSS: {rss_before / 1024:.0f} MiB before the load, peak {peak_kib / 1024:.0f} "
        f"MiB (VmHWM) during it: +{growth:.0f} MiB, "
        f"{'within' if within else 'OVER'} the bound of {args.max_rss_growth_mib} MiB; "
        f"{rss_after_load / 1024:.0f} MiB when it ended, "
        f"{monitor.samples[-1].rss_kib / 1024:.0f} MiB after recovery"
    )
    print(
        f"recovery: p50 of every kind within {args.recovery_ratio:g}x its baseline: "
        f"{'yes' if recovered else 'NO'}"
    )
    errors = sum(s.errors for s in phases.values())
    print(f"errors: {errors}, of which wrong answers: {sum(s.wrong for s in phases.values())}")
    for phase, stats in phases.items():
        for kind, k in stats.kinds.items():
            if k.errors:
                refused = ", ".join(f"HTTP {code}: {n}" for code, n in sorted(k.refused.items()))
                transport = k.errors - k.wrong - sum(k.refused.values())
                print(
                    f"  {phase} {kind}: {k.errors} = {k.wrong} wrong answers, refused "
                    f"({refused or 'none'}), {transport} transport or other errors"
                )
    for phase, stats in phases.items():
        for message in stats.messages():
            print(f"  {phase}: {message}")
    summary = _log_summary(server_log)
    if summary:
        print(f"server warnings and errors ({server_log}), by kind:")
        for line in summary[:10]:
            print(line)
    return 1 if errors or not within else 0


def _server_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("EVENTINDEX_"):
        raise argparse.ArgumentTypeError(f"expected EVENTINDEX_NAME=VALUE, not {text!r}")
    return name, value


async def _churn_one(host: str, port: int, i: int, request: bytes) -> str | None:
    """One connection of the churn: what went wrong, or None."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as exc:
        return f"connect: {exc!r}"
    try:
        kind = i % 10
        if kind < 7:  # a whole request, read to the end, then close
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                return head.split(b"\r\n", 1)[0].decode("latin-1")
            await reader.read()
        elif kind < 9:  # half a request line, then gone
            writer.write(request[:9])
            await writer.drain()
        else:  # a request, then reset without reading the answer
            writer.write(request)
            await writer.drain()
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
        return None
    except (OSError, asyncio.IncompleteReadError) as exc:
        return repr(exc)
    finally:
        writer.close()


async def bench_churn(args: argparse.Namespace) -> int:
    """Connections opened and dropped as fast as one client process can: a whole request
    (70%), half a request line (20%) or a reset before the answer (10%). The server's open
    files and memory afterwards are compared with before (the baseline)."""
    url, _server = server_url(args)
    db_url = await migrated_database(url, "eventindex_churn")
    proc, base = start_service(db_url)
    host, port = base.removeprefix("http://").split(":")
    request = f"GET {args.path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
    try:
        fds_before = len(os.listdir(f"/proc/{proc.pid}/fd"))
        rss_before = status_kib(proc.pid, "VmRSS") / 1024
        errors: list[str] = []
        done = 0
        started = time.perf_counter()
        next_report = started + 10
        while done < args.connections:
            batch = min(args.concurrency, args.connections - done)
            results = await asyncio.gather(
                *(_churn_one(host, int(port), done + i, request) for i in range(batch))
            )
            errors += [r for r in results if r is not None]
            done += batch
            if time.perf_counter() > next_report:
                next_report += 10
                log(
                    f"  {done:,} connections, {done / (time.perf_counter() - started):,.0f}/s, "
                    f"server RSS {status_kib(proc.pid, 'VmRSS') / 1024:.0f} MiB, "
                    f"{len(os.listdir(f'/proc/{proc.pid}/fd'))} open files"
                )
        elapsed = time.perf_counter() - started
        await asyncio.sleep(1)  # the server's side of the last closes
        fds_after = len(os.listdir(f"/proc/{proc.pid}/fd"))
        rss_after = status_kib(proc.pid, "VmRSS") / 1024
        peak = status_kib(proc.pid, "VmHWM") / 1024
        async with httpx.AsyncClient() as client:
            answer = (await client.get(base + args.path, timeout=10)).status_code
    finally:
        proc.terminate()
        proc.wait(30)
    print(
        f"churn: {done:,} connections ({args.concurrency} at a time) to {args.path} in "
        f"{elapsed:.1f} s = {done / elapsed:,.0f} connections/s"
    )
    print(
        f"server open files: {fds_before} before, {fds_after} after ({fds_after / fds_before:.2f}x)"
    )
    print(
        f"server RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after "
        f"({rss_after / rss_before:.2f}x), peak {peak:.0f} MiB"
    )
    print(f"errors on whole requests: {len(errors)}; the server answers afterwards: {answer}")
    for error in errors[:5]:
        print("  " + error)
    return 1 if errors or answer != 200 else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lookup", help="lookup throughput: the service vs the bare driver")
    p.add_argument("--database-url", help="PostgreSQL server URL (default: embedded)")
    p.add_argument("--events", type=int, default=1_000_000, help="catalogue size (default 1M)")
    p.add_argument(
        "--pairs",
        type=int,
        nargs="+",
        default=[200_000, 1_000_000],
        help="pair-set sizes for the stream (default 200000 1000000)",
    )
    p.add_argument("--gets", type=int, default=5_000, help="single-pair GETs per round")
    p.add_argument("--concurrency", type=int, default=32, help="concurrent GET clients")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=bench_lookup)
    p = sub.add_parser("client", help="lookup_stream end to end vs the raw server stream")
    p.add_argument("--database-url", help="PostgreSQL server URL (default: embedded)")
    p.add_argument("--events", type=int, default=1_000_000, help="catalogue size (default 1M)")
    p.add_argument("--pairs", type=int, default=1_000_000, help="pairs (default 1M)")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=bench_client)

    p = sub.add_parser("catalogue", help="catalogue queries: time of each, vs a scan")
    p.add_argument("--database-url", help="PostgreSQL server URL (default: embedded)")
    p.add_argument("--events", type=int, default=10_000_000, help="catalogue size (default 10M)")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=bench_catalogue)

    p = sub.add_parser("scale", help="lookups: single server vs sharded (local PostgreSQL 15)")
    p.add_argument("--events", type=int, default=2_000_000, help="catalogue size (default 2M)")
    p.add_argument("--shards", type=int, default=3, help="shard servers (default 3)")
    p.add_argument("--pairs", type=int, nargs="+", default=[10_000, 1_000_000], help="stream sizes")
    p.add_argument("--shared-buffers", default="512MB", help="each server's shared_buffers")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=bench_scale)

    p = sub.add_parser("load", help="loader throughput: store_events vs raw COPY")
    p.add_argument("--database-url", help="PostgreSQL server URL (default: embedded)")
    p.add_argument("--events", type=int, default=10_000_000, help="events per file (default 10M)")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=bench_load)

    p = sub.add_parser(
        "load-test", help="many concurrent clients: throughput, latency, errors, server memory"
    )
    p.add_argument("--database-url", help="PostgreSQL server URL (default: embedded)")
    p.add_argument("--events", type=int, default=1_000_000, help="catalogue size (default 1M)")
    p.add_argument("--clients", type=int, default=300, help="concurrent clients (default 300)")
    p.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    p.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix(DEFAULT_MIX),
        help=f"weights of the request kinds (default {DEFAULT_MIX})",
    )
    p.add_argument(
        "--stream-pairs", type=int, default=100_000, help="pairs per stream (default 100000)"
    )
    p.add_argument(
        "--single-seconds",
        type=float,
        default=5,
        help="baseline and recovery: seconds of one client per kind (default 5)",
    )
    p.add_argument("--warmup", type=float, default=5, help="seconds of warm-up (default 5)")
    p.add_argument(
        "--timeout", type=float, default=120, help="client timeout per request (default 120 s)"
    )
    p.add_argument(
        "--max-rss-growth-mib",
        type=int,
        default=512,
        help="the server's memory bound: peak RSS growth under load (default 512 MiB)",
    )
    p.add_argument(
        "--recovery-ratio",
        type=float,
        default=1.5,
        help="recovered p50 / baseline p50 counted as recovered (default 1.5; reported only)",
    )
    p.add_argument(
        "--server-env",
        type=_server_env,
        action="append",
        default=[],
        metavar="EVENTINDEX_NAME=VALUE",
        help="a setting for the server (repeatable); by default none is changed",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_load_test)

    p = sub.add_parser("churn", help="connections opened and dropped: the server's files, memory")
    p.add_argument("--connections", type=int, default=1_000_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--path", default="/health")
    p.add_argument("--database-url")
    p.set_defaults(func=bench_churn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "lookup" and args.events < 200_000:
        raise SystemExit("bench: --events must be at least 200000")
    status = asyncio.run(args.func(args))
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
