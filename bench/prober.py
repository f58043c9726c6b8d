"""One interactive client in a process of its own: sequential single-event GETs over one
keep-alive connection, for ``bench load-test`` to run beside its load.

The load's own clients share one Python process, which under several hundred of them is
busy reading answers: the latency they see is partly their own (the load test prints how
late that process's event loop runs). This client sees what a physicist's GET sees while
the service is under that load.

``python -m bench.prober BASE_URL SECONDS EVENTS`` prints one JSON object: the count and
the latencies' p50, p99 and maximum in milliseconds.
"""

from __future__ import annotations

import asyncio
import sys

import orjson

from bench.common import make_pairs
from bench.qos import percentile, sequential_gets


async def probe(base: str, seconds: float, n_events: int) -> dict[str, float]:
    pairs = list(zip(*make_pairs(n_events, 500_000, seed=11), strict=True))
    latencies = await sequential_gets(base, pairs, seconds)
    return {
        "n": len(latencies),
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies) * 1000,
    }


def main() -> None:
    base, seconds, n_events = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    print(orjson.dumps(asyncio.run(probe(base, seconds, n_events))).decode(), flush=True)


if __name__ == "__main__":
    main()
