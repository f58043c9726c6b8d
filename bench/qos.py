"""``python -m bench qos``: interactive answers beside bulk streams, and what one lookup
costs against the database's own ceiling for it, each beside its baseline in one run.

- sequential single-event GETs (and 1,000-pair JSON lookups, the page's size), idle and
  while bulk clients stream 300k-pair NDJSON lookups without pause;
- the bulk streams' throughput without and with the interactive requests;
- GET throughput from many connections (wrk when installed, else a light socket client)
  against pgbench running the same one-row statement with as many connections as the
  service's pools hold, and against a bare ASGI app on the same stack (bench/bareget.py:
  uvicorn and asyncpg with nothing else), which shows what the service's own work costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

import httpx

from bench.common import (
    EVENTS_PER_RUN,
    log,
    make_pairs,
    prepare_database,
    server_url,
    service_gets,
    start_service,
)
from tests.support.localpg import free_port

NDJSON = "application/x-ndjson"
JSON = {"content-type": "application/json"}
ONE_ROW = (
    "SELECT run_number, event_number, fuid_raw::text, dsid_raw, olt_result "
    "FROM events WHERE run_number = :r AND event_number = :e;"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] * 1000


class Bulk:
    """Clients streaming big NDJSON lookups back to back; counts the pairs answered."""

    def __init__(self, base: str, bodies: list[bytes], sizes: list[int]) -> None:
        self.base = base
        self.bodies = bodies
        self.sizes = sizes
        self.pairs = 0
        self.stop = asyncio.Event()

    async def client(self, k: int) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=600) as http:
            while not self.stop.is_set():
                async with http.stream(
                    "POST",
                    "/v1/lookup",
                    content=self.bodies[k],
                    headers={"content-type": "text/plain", "accept": NDJSON},
                ) as response:
                    if response.status_code != 200:
                        raise SystemExit(f"bench: bulk stream answered {response.status_code}")
                    async for chunk in response.aiter_bytes():
                        self.pairs += chunk.count(b"\n")
                        if self.stop.is_set():
                            break

    async def run_for(self, seconds: float, during: object = None) -> float:
        """Pairs per second over ``seconds`` (with ``during`` running beside, if given)."""
        self.stop.clear()
        tasks = [asyncio.create_task(self.client(k)) for k in range(len(self.bodies))]
        await asyncio.sleep(2)  # streams under way
        start_pairs, started = self.pairs, time.perf_counter()
        if during is not None:
            await during  # type: ignore[misc]
        else:
            await asyncio.sleep(seconds)
        rate = (self.pairs - start_pairs) / (time.perf_counter() - started)
        self.stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return rate


async def sequential_gets(base: str, pairs: list[tuple[int, int]], seconds: float) -> list[float]:
    """One request at a time over a keep-alive socket; the latency of each."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    latencies = []
    deadline = time.perf_counter() + seconds
    try:
        for run, event in pairs:
            started = time.perf_counter()
            writer.write(b"GET /v1/events/%d/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (run, event))
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if head[9:12] not in (b"200", b"404"):
                raise SystemExit(f"bench: GET answered {head[9:12].decode()}")
            if started > deadline:
                break
    finally:
        writer.close()
    return latencies


async def sequential_json(base: str, bodies: list[bytes], seconds: float) -> list[float]:
    latencies = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for body in bodies:
            started = time.perf_counter()
            r = await http.post(
                "/v1/lookup", content=body, headers={"content-type": "application/json"}
            )
            latencies.append(time.perf_counter() - started)
            if r.status_code != 200:
                raise SystemExit(f"bench: JSON lookup answered {r.status_code}")
            if started > deadline:
                break
    return latencies


def wrk_gets(base: str, n_events: int, seconds: float, connections: int) -> float | None:
    if shutil.which("wrk") is None:
        return None
    script = f"""
math.randomseed(7)
request = function()
  local g = math.random(0, {n_events - 1})
  local run, event = 1000 + math.floor(g / {EVENTS_PER_RUN}), g % {EVENTS_PER_RUN}
  return wrk.format("GET", "/v1/events/" .. run .. "/" .. event)
end
"""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        run = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds:.0f}s", "-s", f.name, base],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(f.name)
    if run.stderr.strip():
        raise SystemExit(f"bench: wrk failed: {run.stderr.strip()[:300]}")
    out = run.stdout
    if "Non-2xx" in out:
        # 404s are answers too (none here: every event exists), but say so.
        log("wrk: " + next(line for line in out.splitlines() if "Non-2xx" in line).strip())
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match[1]) if match else None


def bare_gets(db_url: str, n_events: int, seconds: float, connections: int, workers: int) -> float:
    """GET/s of bench/bareget.py under wrk, served like the service (uvicorn, workers)."""
    port = free_port()
    env = {
        **os.environ,
        "BAREGET_DSN": db_url,
        "BAREGET_POOL": os.environ.get("EVENTINDEX_POOL_MAX_SIZE", "10"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.bareget:app",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(base + "/v1/events/1000/0", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        rate = wrk_gets(base, n_events, seconds, connections)
    finally:
        proc.terminate()
        proc.wait(10)
    if rate is None:
        raise SystemExit("bench: wrk gave no rate for the bare app")
    return rate


def pgbench_ceiling(db_url: str, n_events: int, seconds: float, clients: int) -> float:
    script = (
        f"\\set g random(0, {n_events - 1})\n"
        f"\\set r 1000 + :g / {EVENTS_PER_RUN}\n"
        f"\\set e :g % {EVENTS_PER_RUN}\n" + ONE_ROW + "\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(script)
    parts = urlsplit(db_url)
    env = {**os.environ, "PGPASSWORD": parts.password or ""}
    try:
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-M",
                "prepared",
                "-c",
                str(clients),
                "-j",
                "2",
                "-T",
                f"{seconds:.0f}",
                "-f",
                f.name,
                "-h",
                parts.hostname or "127.0.0.1",
                "-p",
                str(parts.port or 5432),
                "-U",
                parts.username or "postgres",
                (parts.path or "/postgres").lstrip("/"),
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
    finally:
        os.unlink(f.name)
    match = re.search(r"tps = ([\d.]+)", out)
    if match is None:
        raise SystemExit(f"bench: pgbench printed no tps:\n{out}")
    return float(match[1])


async def bench_qos(args: argparse.Namespace) -> None:
    url, _server = server_url(args)
    if shutil.which("pgbench") is None:
        raise SystemExit("bench: pgbench is needed (apt-get install postgresql-client)")
    db_url = await prepare_database(url, args.events)
    bodies = []
    for k in range(args.bulk_clients):
        runs, events = make_pairs(args.events, args.bulk_pairs, seed=100 + k)
        bodies.append(b"".join(b"%d %d\n" % p for p in zip(runs, events, strict=True)))
    singles = list(zip(*make_pairs(args.events, 200_000, seed=3), strict=True))
    json_bodies = []
    for k in range(2000):
        runs, events = make_pairs(args.events, 1000, seed=1000 + k)
        json_bodies.append(
            b'{"pairs":['
            + b",".join(b"[%d,%d]" % p for p in zip(runs, events, strict=True))
            + b"]}"
        )
    env = {"EVENTINDEX_WORKERS": str(args.workers)} if args.workers else {}
    proc, base = start_service(db_url, env)
    t = args.seconds
    try:
        workers = args.workers or 1  # the service's default outside production
        pool = int(os.environ.get("EVENTINDEX_POOL_MAX_SIZE", "10")) * workers
        log("warming up")
        await service_gets(base, singles[:2000], 8)
        log("idle: sequential GETs and JSON lookups")
        idle_gets = await sequential_gets(base, singles[:100_000], t)
        idle_json = await sequential_json(base, json_bodies, t)
        bulk = Bulk(base, bodies, [args.bulk_pairs] * args.bulk_clients)
        log("bulk alone")
        bulk_alone = await bulk.run_for(t)
        log("bulk with sequential GETs")
        gets_under: list[float] = []

        async def gets() -> None:
            gets_under.extend(await sequential_gets(base, singles[100_000:], t))

        bulk_with_gets = await bulk.run_for(t, gets())
        log("bulk with sequential JSON lookups")
        json_under: list[float] = []

        async def jsons() -> None:
            json_under.extend(await sequential_json(base, json_bodies[::-1], t))

        bulk_with_json = await bulk.run_for(t, jsons())
        log(f"GET throughput ({args.connections} connections) and the database's ceiling")
        rate = wrk_gets(base, args.events, t, args.connections)
        tool = "wrk"
        if rate is None:
            tool = "socket client"
            n = 50_000
            started = time.perf_counter()
            await service_gets(base, random.Random(5).sample(singles, n), args.connections)
            rate = n / (time.perf_counter() - started)
        ceiling = pgbench_ceiling(db_url, args.events, t, pool)
    finally:
        proc.terminate()
        proc.wait(10)
    bare = bare_gets(db_url, args.events, t, args.connections, workers) if tool == "wrk" else None

    def row(label: str, value: str, base_value: str, ratio: str) -> None:
        print(f"{label:<60}{value:>16}  {base_value:>16}  {ratio:>7}")

    print()
    print(
        f"EventIndex QoS benchmark: {args.events:,} events, {args.bulk_clients} bulk clients "
        f"streaming {args.bulk_pairs:,}-pair NDJSON lookups, {workers} worker(s), {t:g} s a phase"
    )
    row("measurement", "with bulk", "idle / baseline", "ratio")
    g50, g99 = statistics.median(gets_under) * 1000, percentile(gets_under, 0.99)
    i50, i99 = statistics.median(idle_gets) * 1000, percentile(idle_gets, 0.99)
    row("single GET p50 (sequential client)", f"{g50:.1f} ms", f"{i50:.1f} ms", f"{g50 / i50:.2f}x")
    row("single GET p99", f"{g99:.1f} ms", f"{i99:.1f} ms", f"{g99 / i99:.2f}x")
    j50, j99 = statistics.median(json_under) * 1000, percentile(json_under, 0.99)
    k50, k99 = statistics.median(idle_json) * 1000, percentile(idle_json, 0.99)
    row("1,000-pair JSON lookup p50", f"{j50:.1f} ms", f"{k50:.1f} ms", f"{j50 / k50:.2f}x")
    row("1,000-pair JSON lookup p99", f"{j99:.1f} ms", f"{k99:.1f} ms", f"{j99 / k99:.2f}x")
    row(
        "bulk pairs/s beside the GETs (vs bulk alone)",
        f"{bulk_with_gets:,.0f}",
        f"{bulk_alone:,.0f}",
        f"{bulk_with_gets / bulk_alone:.2f}x",
    )
    row(
        "bulk pairs/s beside the JSON lookups (vs bulk alone)",
        f"{bulk_with_json:,.0f}",
        f"{bulk_alone:,.0f}",
        f"{bulk_with_json / bulk_alone:.2f}x",
    )
    row(
        f"GET/s ({tool}, {args.connections} conns) vs pgbench ({pool} conns)",
        f"{rate:,.0f}",
        f"{ceiling:,.0f}",
        f"{rate / ceiling:.2f}x",
    )
    if bare is not None:
        row(
            "GET/s vs a bare ASGI app (uvicorn + asyncpg, same workers)",
            f"{rate:,.0f}",
            f"{bare:,.0f}",
            f"{rate / bare:.2f}x",
        )
        row(
            "bare ASGI app's GET/s vs pgbench (the stack's own ceiling)",
            f"{bare:,.0f}",
            f"{ceiling:,.0f}",
            f"{bare / ceiling:.2f}x",
        )
    print(
        "targets: GET p99 <= 50 ms and p50 within 3x of idle under bulk; JSON p99 <= 100 ms; "
        "bulk >= 0.8x; GET/s >= 0.2x the database's ceiling"
    )
