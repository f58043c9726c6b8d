"""EventIndex benchmarks: the project measured against its baseline, in one run.

    python -m tools.bench lookup [--events 1000000] [--pairs 200000 1000000] [--rounds 3]
    python -m tools.bench load [--events 10000000] [--rounds 3]
    python -m tools.bench client [--pairs 1000000] [--rounds 3]
    python -m tools.bench catalogue [--events 10000000] [--rounds 3]

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
import io
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
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await admin.execute(f'CREATE DATABASE "{name}"')
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
                writer.write(b"GET /v1/events/%d/%d HTTP/1.1\r\nHost: b\r\n\r\n" % (run, event))
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


def start_service(db_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "EVENTINDEX_DATABASE_URL": db_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen([sys.executable, "-m", "eventindex", "serve"], env=env)
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
    from tools import store_events

    loader = store_events.Loader(conn, progress_stream=io.StringIO())
    async with conn.transaction():
        result = await loader.load_events(store_events.Source(str(path), path))
    if result.careful or result.inserted != result.rows:
        raise SystemExit(f"bench: the loader took its careful path: {result.summary()}")


def generated(n_events: int, first_run: int, first_dataset: int, seed: int) -> Path:
    from tools import gen_data

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
    from tools import store_events

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
        loader = store_events.Loader(conn, progress_stream=io.StringIO())
        for d in (new, other):
            async with conn.transaction():
                await loader.load_datasets(store_events.Source("d", d / "datasets.csv"))
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
    from tools import store_events

    url, _server = server_url(args)
    data = generated(args.events, 1000, 1, seed=1)
    name = "eventindex_bench_catalogue"
    db_url = await migrated_database(url, name)
    conn = await asyncpg.connect(db_url)
    try:
        if await conn.fetchval("SELECT count(*) FROM events") != args.events:
            log(f"loading {args.events:,} events with the loader ...")
            await conn.execute("TRUNCATE events, datasets, files, run_olt_counts, loads CASCADE")
            loader = store_events.Loader(conn, progress_stream=io.StringIO())
            async with conn.transaction():
                await loader.load_datasets(store_events.Source("d", data / "datasets.csv"))
                await loader.load_events(store_events.Source("e", data / "events.csv"))
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "lookup" and args.events < 200_000:
        raise SystemExit("bench: --events must be at least 200000")
    asyncio.run(args.func(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
