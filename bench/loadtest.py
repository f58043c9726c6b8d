"""``python -m bench load-test``: hundreds of clients against a real uvicorn, and its
report."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
from pathlib import Path

import orjson

from bench.common import (
    JSON_PAIRS,
    log,
    prepare_database,
    reset_peak_rss,
    server_url,
    start_service,
    status_kib,
)
from bench.monitor import ServerMonitor, local_postmaster
from bench.workload import (
    LOAD_KINDS,
    MISSING_SHARE,
    BenchCatalogue,
    LoadGauge,
    LoadStats,
    build_workload,
    run_load,
)


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
            # One more client, in a process of its own, for as long as the load.
            prober = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.prober",
                base,
                str(args.duration),
                str(args.events),
                stdout=asyncio.subprocess.PIPE,
            )
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
            probe_out, _ = await prober.communicate()
            probe = orjson.loads(probe_out) if prober.returncode == 0 else None
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
        args, phases, monitor, (rss_before, peak_kib, rss_after_load), extra_env, server_log, probe
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
    probe: dict[str, float] | None,
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
    if probe is None:
        print("one more client (sequential GETs, a process of its own): it failed")
    else:
        print(
            f"one more client during the load (sequential GETs over one connection, in a "
            f"process of its own): {probe['n']:,.0f} GETs, p50 {probe['p50']:.1f} ms, "
            f"p99 {probe['p99']:.1f} ms, max {probe['max']:.1f} ms"
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
    return 1 if errors or not within or probe is None else 0


def server_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.startswith("EVENTINDEX_"):
        raise argparse.ArgumentTypeError(f"expected EVENTINDEX_NAME=VALUE, not {text!r}")
    return name, value
