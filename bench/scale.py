"""``python -m bench scale``: one server, replicas and shards on the same lookups."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time

import httpx
import orjson

from bench.catalogue import sample_pairs
from bench.common import (
    Results,
    log,
    migrated_database,
    service_json,
    service_stream,
    start_service,
    timed,
)
from bench.load import generated

CREATE_BENCH_DATABASE = "CREATE DATABASE eventindex"
ANALYZE_ALL = "VACUUM ANALYZE"


async def bench_scale(args: argparse.Namespace) -> None:
    """Single server vs a coordinator with ``--shards`` shards, all local PostgreSQL 15."""
    from eventindex import sharding
    from tests.support.localpg import LocalServer, Root

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
            server.psql(CREATE_BENCH_DATABASE)
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
            server.psql(ANALYZE_ALL, "eventindex")
        runs, events = await sample_pairs(single_url, max(args.pairs), 11)
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
