"""``python -m bench client``: EventIndexClient against raw HTTP."""

from __future__ import annotations

import argparse

import httpx

from bench.common import (
    Results,
    log,
    make_pairs,
    prepare_database,
    server_url,
    service_stream,
    start_service,
    timed,
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
