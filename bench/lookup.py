"""``python -m bench lookup``: streams, JSON and GETs against the database's floor."""

from __future__ import annotations

import argparse

import asyncpg
import httpx

from bench.common import (
    JSON_PAIRS,
    Results,
    floor_one_query,
    floor_sorted_batches,
    log,
    make_pairs,
    prepare_database,
    reset_peak_rss,
    seed_design,
    server_url,
    service_gets,
    service_json,
    service_stream,
    start_service,
    status_kib,
    timed,
)


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
