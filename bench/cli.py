"""The ``python -m bench`` command line."""

from __future__ import annotations

import argparse
import asyncio

from bench.catalogue import bench_catalogue
from bench.churn import bench_churn
from bench.client import bench_client
from bench.load import bench_load
from bench.loadtest import bench_load_test, server_env
from bench.lookup import bench_lookup
from bench.qos import bench_qos
from bench.scale import bench_scale
from bench.upload import bench_upload
from bench.workload import DEFAULT_MIX, parse_mix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
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

    p = sub.add_parser("qos", help="interactive lookups beside bulk streams; GET/s vs pgbench")
    p.add_argument("--database-url", help="PostgreSQL server URL (default: embedded)")
    p.add_argument("--events", type=int, default=2_000_000, help="catalogue size (default 2M)")
    p.add_argument("--bulk-clients", type=int, default=4, help="bulk streams (default 4)")
    p.add_argument("--bulk-pairs", type=int, default=300_000, help="pairs per bulk stream")
    p.add_argument("--seconds", type=float, default=15, help="length of each phase")
    p.add_argument("--connections", type=int, default=32, help="connections for GET/s")
    p.add_argument("--workers", type=int, help="service workers (default: its own default)")
    p.set_defaults(func=bench_qos)

    p = sub.add_parser("upload", help="uploads over HTTP (group commit) vs raw COPY")
    p.add_argument("--database-url", help="PostgreSQL server URL (default: embedded)")
    p.add_argument("--producers", type=int, default=50, help="concurrent uploaders (default 50)")
    p.add_argument("--files", type=int, default=400, help="files uploaded (default 400)")
    p.add_argument("--events-per-file", type=int, default=5000, help="(default 5,000)")
    p.add_argument("--large", type=int, default=1_000_000, help="events of the large file")
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=bench_upload)

    p = sub.add_parser(
        "load-test", help="many concurrent clients: throughput, latency, errors, server memory"
    )
    p.add_argument("--database-url", help="PostgreSQL server URL (default: embedded)")
    p.add_argument("--events", type=int, default=1_000_000, help="catalogue size (default 1M)")
    p.add_argument("--clients", type=int, default=300, help="concurrent clients (default 300)")
    p.add_argument("--duration", type=float, default=60, help="seconds of load (default 60)")
    p.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix(DEFAULT_MIX),
        help=f"weights of the request kinds (default {DEFAULT_MIX})",
    )
    p.add_argument(
        "--stream-pairs", type=int, default=100_000, help="pairs per stream (default 100000)"
    )
    p.add_argument(
        "--single-seconds",
        type=float,
        default=5,
        help="baseline and recovery: seconds of one client per kind (default 5)",
    )
    p.add_argument("--warmup", type=float, default=5, help="seconds of warm-up (default 5)")
    p.add_argument(
        "--timeout", type=float, default=120, help="client timeout per request (default 120 s)"
    )
    p.add_argument(
        "--max-rss-growth-mib",
        type=int,
        default=512,
        help="the server's memory bound: peak RSS growth under load (default 512 MiB)",
    )
    p.add_argument(
        "--recovery-ratio",
        type=float,
        default=1.5,
        help="recovered p50 / baseline p50 counted as recovered (default 1.5; reported only)",
    )
    p.add_argument(
        "--server-env",
        type=server_env,
        action="append",
        default=[],
        metavar="EVENTINDEX_NAME=VALUE",
        help="a setting for the server (repeatable); by default none is changed",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=bench_load_test)

    p = sub.add_parser("churn", help="connections opened and dropped: the server's files, memory")
    p.add_argument("--connections", type=int, default=1_000_000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--path", default="/health")
    p.add_argument("--database-url")
    p.set_defaults(func=bench_churn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "lookup" and args.events < 200_000:
        raise SystemExit("bench: --events must be at least 200000")
    status = asyncio.run(args.func(args))
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
