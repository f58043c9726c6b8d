"""``python -m bench catalogue``: catalogue queries against scans of events."""

from __future__ import annotations

import argparse
import io
import time

import asyncpg
import httpx
import numpy as np

from bench.common import Pairs, Results, log, migrated_database, server_url, start_service
from bench.load import generated

COUNT_EVENTS = "SELECT count(*) FROM events"
TRUNCATE_ALL = "TRUNCATE events, datasets, files, run_olt_counts, loads CASCADE"
ANALYZE_ALL = "VACUUM ANALYZE"
FIRST_RUN = "SELECT min(run_number) FROM files"
SOME_FILE = "SELECT fuid_raw::text FROM files ORDER BY fuid_raw LIMIT 1"
ALL_PAIRS = "SELECT run_number, event_number FROM events"

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
        if await conn.fetchval(COUNT_EVENTS) != args.events:
            log(f"loading {args.events:,} events with the loader ...")
            await conn.execute(TRUNCATE_ALL)
            loader = Loader(conn, progress_stream=io.StringIO())
            async with conn.transaction():
                await loader.load_datasets(Source("d", data / "datasets.csv"))
                await loader.load_events(Source("e", data / "events.csv"))
            await conn.execute(ANALYZE_ALL)
        run = await conn.fetchval(FIRST_RUN)
        fuid = await conn.fetchval(SOME_FILE)
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


async def sample_pairs(url: str, n_pairs: int, seed: int) -> Pairs:
    """Random events of the catalogue (with repeats), 5% of them made unknown."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(ALL_PAIRS)
    finally:
        await conn.close()
    rng = np.random.default_rng(seed)
    runs = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    events = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    pick = rng.integers(0, len(rows), n_pairs)
    missing = rng.random(n_pairs) < 0.05
    return runs[pick].tolist(), np.where(missing, events[pick] + 10**9, events[pick]).tolist()
