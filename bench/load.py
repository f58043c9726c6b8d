"""``python -m bench load``: the loader against raw COPY of the same file."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import asyncpg

from bench.common import Results, log, migrated_database, server_url, timed

TRUNCATE_LOADS = "TRUNCATE events, events_baseline, load_conflicts, loads"
ANALYZE_LOADED = "VACUUM ANALYZE events, events_baseline"
CHECKPOINT = "CHECKPOINT"


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
                await conn.execute(TRUNCATE_LOADS)
                if scenario == "holding":
                    await raw_copy(conn, "events_baseline", other / "events.csv")
                    await raw_copy(conn, "events", other / "events.csv")
                    await conn.execute(ANALYZE_LOADED)
                steps = [
                    ("raw", lambda: raw_copy(conn, "events_baseline", new / "events.csv")),
                    ("loader", lambda: loader_copy(conn, new / "events.csv")),
                ]
                if rnd % 2:
                    steps.reverse()
                for name, step in steps:
                    await conn.execute(CHECKPOINT)
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
