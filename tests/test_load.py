"""A bounded load test against a real uvicorn: 200 concurrent clients mixing single GETs,
10k-pair JSON lookups and NDJSON streams for a few seconds, with the generator of
``python -m bench load-test``. Behaviour is asserted, not timing: no errors, right
answers, bounded server memory, and a server that still answers afterwards; and, past
what a tiny pool can serve, refusals (503) but never a wrong answer."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from bench.common import Pairs, reset_peak_rss, status_kib
from bench.monitor import ServerMonitor
from bench.workload import DEFAULT_MIX, LoadGauge, build_workload, parse_mix, run_load
from tests.support.catalogue import EVENTS_PER_RUN, RUNS, fuid_of
from tests.support.servers import run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

CLIENTS = 200
SECONDS = 6.0
STREAM_PAIRS = 20_000
MAX_RSS_GROWTH_MIB = 200


class SuiteCatalogue:
    """The session database's known events; 5% of the sampled pairs are unknown."""

    def sample(self, rng: np.random.Generator, n: int) -> Pairs:
        runs = rng.integers(RUNS.start, RUNS.stop, n)
        events = rng.integers(0, EVENTS_PER_RUN, n)
        missing = rng.random(n) < 0.05
        return runs.tolist(), np.where(missing, events + EVENTS_PER_RUN, events).tolist()

    def fuid(self, run: int, event: int) -> str | None:
        return fuid_of(run, event) if run in RUNS and 0 <= event < EVENTS_PER_RUN else None


async def test_load(database_url: str) -> None:
    work = build_workload(SuiteCatalogue(), stream_pairs=STREAM_PAIRS, variants=2, gets=5_000)
    mix = parse_mix(DEFAULT_MIX)
    with run_server(database_url) as server:
        pid = server.proc.pid
        gauge = LoadGauge()
        monitor = ServerMonitor(pid, gauge)
        # The server warmed up (statements prepared, pool grown) before its memory is measured.
        warm = await run_load(server.url, work, clients=4, duration=1.0, mix=mix, gauge=gauge)
        assert warm.errors == 0, warm.messages()
        rss_before = status_kib(pid, "VmRSS")
        reset_peak_rss(pid)
        monitor.start()
        began = time.perf_counter()
        stats = await run_load(
            server.url, work, clients=CLIENTS, duration=SECONDS, mix=mix, gauge=gauge, seed=3
        )
        load_seconds = time.perf_counter() - began
        await monitor.stop()
        growth_mib = (status_kib(pid, "VmHWM") - rss_before) / 1024

        # Still answering, and rightly, once the load is over.
        after = await run_load(server.url, work, clients=1, duration=1.0, mix=mix, seed=4)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.get("/ready")).status_code == 200
            event = (await http.get("/v1/events/102/345")).json()
            assert event["fuid_raw"] == fuid_of(102, 345)
            assert (await http.get("/v1/events/102/999999")).status_code == 404
        assert server.proc.poll() is None

    rss = [(round(s.t), s.rss_kib // 1024, s.in_flight) for s in monitor.samples]
    summary = (
        f"{stats.requests} requests in {load_seconds:.1f} s; per kind "
        + ", ".join(
            f"{kind}: {len(k.latencies)} answered, {k.errors} errors"
            for kind, k in stats.kinds.items()
        )
        + f"; RSS (t s, MiB, in flight): {rss}"
    )
    assert stats.errors == 0, f"{summary}; first errors: {stats.messages()}"
    assert after.errors == 0, after.messages()
    # Every kind ran under load, with all the clients in flight at once.
    assert all(k.latencies for k in stats.kinds.values()), summary
    assert max(s.in_flight for s in monitor.samples) == CLIENTS, summary
    # Unknown events were asked for and answered as unknown (GET: 404) without an error.
    assert stats.kinds["get"].unknown > 0, summary
    assert stats.kinds["stream"].pairs == STREAM_PAIRS * len(stats.kinds["stream"].latencies)
    assert growth_mib < MAX_RSS_GROWTH_MIB, f"server RSS grew {growth_mib:.0f} MiB; {summary}"


async def test_overload_refuses_but_never_answers_wrongly(database_url: str) -> None:
    """Far more clients than a tiny pool serves within its acquire timeout: requests may be
    refused (503, or a stream ending with an error line), but no answer is ever wrong:
    a stream that fails part-way has answered every pair before the failure, in order.
    (A batch whose pooled connection did not come in time once let the next batch answer
    in its place: caught here, 5 runs out of 5, as answers for the wrong pairs.)"""
    # Every 5th answer checked, so that a few answers out of place cannot pass unseen.
    work = build_workload(
        SuiteCatalogue(), stream_pairs=STREAM_PAIRS, variants=2, gets=5_000, checks=4_000
    )
    env = {
        "EVENTINDEX_POOL_MAX_SIZE": "2",
        "EVENTINDEX_POOL_ACQUIRE_TIMEOUT": "0.2",
        "EVENTINDEX_LOOKUP_BATCH_SIZE": "1000",  # many batches a stream, each a new wait
        # Bulk requests otherwise take turns, two at a time, and none is refused: here many
        # run at once and their batches wait for the one connection bulk work may hold.
        "EVENTINDEX_BULK_CONNECTIONS": "16",
    }
    with run_server(database_url, **env) as server:
        # More streams than the default mix: they are where a failure part-way shows.
        mix = parse_mix("get=60,json10k=10,stream=30")
        stats = await run_load(server.url, work, clients=100, duration=3.0, mix=mix, seed=5)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            assert (await http.get("/v1/events/102/345")).json()["fuid_raw"] == fuid_of(102, 345)
    summary = {
        kind: (len(k.latencies), k.errors, k.wrong, k.refused) for kind, k in stats.kinds.items()
    }
    messages = stats.messages()
    assert stats.errors > 0, f"no request was refused: not an overload ({summary})"
    assert stats.wrong == 0, f"{summary}; {messages}"
    refused = {code for k in stats.kinds.values() for code in k.refused}
    assert refused <= {503}, f"{summary}; {messages}"
