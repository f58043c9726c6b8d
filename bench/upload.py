"""``python -m bench upload``: files uploaded over HTTP (``PUT /v1/files``) by many
concurrent producers, and one large file, against raw COPY of the same events into a
table with the same primary key, measured in the same run."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import httpx

from bench.common import (
    Results,
    log,
    migrated_database,
    reset_peak_rss,
    server_url,
    start_service,
    status_kib,
)

TRUNCATE = "TRUNCATE events, events_baseline, files, run_olt_counts, loads, load_conflicts"
CHECKPOINT = "CHECKPOINT"
HEADER = b"run_number,event_number,olt_result\n"


@dataclass
class File:
    fuid: str
    run: int
    body: bytes  # what a producer sends
    rows: bytes  # the same events with dataset and file, as raw COPY takes them


def make_files(n_files: int, per_file: int, first_run: int, seed: int) -> list[File]:
    rng = random.Random(seed)
    files = []
    for k in range(n_files):
        run = first_run + k // 10
        first = (k % 10) * per_file + 1
        fuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        olts = [rng.getrandbits(9) for _ in range(per_file)]
        lines = [f"{run},{first + i},{o}" for i, o in enumerate(olts)]
        body = HEADER + ("\n".join(lines) + "\n").encode()
        rows = "".join(f"{line},1,{fuid}\n" for line in lines).encode()
        files.append(File(fuid, run, body, rows))
    return files


async def raw_copy(conn: asyncpg.Connection, files: list[File]) -> None:
    async def data() -> AsyncIterator[bytes]:
        for f in files:
            yield f.rows

    await conn.copy_to_table(
        "events_baseline",
        source=data(),
        columns=["run_number", "event_number", "olt_result", "dsid_raw", "fuid_raw"],
        format="csv",
    )


async def upload_all(base: str, files: list[File], producers: int, latencies: list[float]) -> None:
    queue: asyncio.Queue[File] = asyncio.Queue()
    for f in files:
        queue.put_nowait(f)
    limits = httpx.Limits(max_connections=producers, max_keepalive_connections=producers)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=600) as client:

        async def producer() -> None:
            while not queue.empty():
                f = queue.get_nowait()
                started = time.perf_counter()
                r = await client.put(
                    f"/v1/files/{f.fuid}",
                    params={"dataset": "bench"},
                    content=f.body,
                    headers={"Content-Type": "text/csv"},
                )
                latencies.append(time.perf_counter() - started)
                if r.status_code != 201:
                    raise SystemExit(f"bench: upload answered {r.status_code}: {r.text[:300]}")

        await asyncio.gather(*(producer() for _ in range(producers)))


async def bench_upload(args: argparse.Namespace) -> None:
    url, _server = server_url(args)
    db_url = await migrated_database(url, "eventindex_bench_upload", fresh=True)
    conn = await asyncpg.connect(db_url)
    n_files, per_file = args.files, args.events_per_file
    log(f"making {n_files} files of {per_file:,} events and one of {args.large:,} ...")
    small = make_files(n_files, per_file, 1000, seed=1)
    large = make_files(1, args.large, 5000, seed=2)
    n_small = n_files * per_file
    await conn.execute(
        "CREATE TABLE events_baseline (LIKE events INCLUDING CONSTRAINTS INCLUDING INDEXES)"
    )
    await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'bench')")
    runs = sorted({f.run for f in small + large})
    await conn.fetchval("SELECT events_add_partitions($1::integer[])", runs)
    proc, base = start_service(db_url, {"EVENTINDEX_LOG_LEVEL": "warning"})
    res = Results()
    latencies: list[float] = []
    rss_growth = 0
    try:
        for rnd in range(args.rounds):
            log(f"round {rnd + 1}/{args.rounds}")
            steps: list[tuple[str, int, Callable[[], Awaitable[None]]]] = [
                ("raw small", n_small, lambda: raw_copy(conn, small)),
                (
                    "upload small",
                    n_small,
                    lambda: upload_all(base, small, args.producers, latencies),
                ),
                ("raw large", args.large, lambda: raw_copy(conn, large)),
                ("upload large", args.large, lambda: upload_all(base, large, 1, [])),
            ]
            if rnd % 2:
                steps = [steps[1], steps[0], steps[3], steps[2]]
            await conn.execute(TRUNCATE)
            for name, n, step in steps:
                await conn.execute(CHECKPOINT)
                before = status_kib(proc.pid, "VmRSS")
                reset_peak_rss(proc.pid)
                started = time.perf_counter()
                await step()
                res.add(name, n / (time.perf_counter() - started))
                if name.startswith("upload"):
                    rss_growth = max(rss_growth, status_kib(proc.pid, "VmHWM") - before)
            loaded = await conn.fetchval("SELECT count(*) FROM events")
            if loaded != n_small + args.large:
                raise SystemExit(
                    f"bench: {loaded} events in the catalogue, not {n_small + args.large}"
                )
    finally:
        proc.terminate()
        proc.wait(10)
        await conn.close()

    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
    up, raw = res.median("upload small"), res.median("raw small")
    up_l, raw_l = res.median("upload large"), res.median("raw large")
    print()
    print(
        f"EventIndex upload benchmark: {args.producers} producers x {n_files} files of "
        f"{per_file:,} events, one file of {args.large:,}; {args.rounds} rounds, medians"
    )
    print(f"{'measurement':<58}{'uploads':>14}  {'raw COPY':>14}  {'ratio':>6}")
    print(
        f"{f'{args.producers} concurrent producers, {per_file:,}-event files':<58}"
        f"{up:>10,.0f} e/s  {raw:>10,.0f} e/s  {up / raw:>5.2f}x"
    )
    print(
        f"{f'one upload of {args.large:,} events':<58}"
        f"{up_l:>10,.0f} e/s  {raw_l:>10,.0f} e/s  {up_l / raw_l:>5.2f}x"
    )
    print(
        f"uploads/s {up / per_file:,.1f}; latency per upload p50 {p50:,.0f} ms, "
        f"p99 {p99:,.0f} ms; server peak RSS growth {rss_growth / 1024:,.0f} MB"
    )
