"""The Python client and `eventindex pick` against a real uvicorn and database."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from eventindex.client import EventIndexClient, ProblemError, SyncEventIndexClient, UnavailableError
from tests.support.catalogue import DATASETS, EVENTS_PER_RUN, RUNS, dsid_of, fuid_of, olt_of
from tests.support.localpg import free_port
from tests.support.servers import Server, run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow


def known(run: int, event: int) -> bool:
    return run in RUNS and 0 <= event < EVENTS_PER_RUN


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Server]:
    with run_server(database_url) as running:
        yield running


def random_pairs(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.choice([*RUNS, 1]), rng.randrange(EVENTS_PER_RUN + 100)) for _ in range(n)]


async def test_get_event_and_small_lookup(server: Server) -> None:
    async with EventIndexClient(server.url) as client:
        event = await client.get_event(101, 5)
        assert event is not None
        assert str(event.fuid_raw) == fuid_of(101, 5)
        assert await client.get_event(101, 10**9) is None
        answer = await client.lookup([(100, 1), (9, 9), (100, 1)])
        assert [r.found for r in answer.results] == [True, False, True]
        assert answer.summary.missing == 1


async def test_stream_keeps_order_over_chunks_and_connections(server: Server) -> None:
    pairs = random_pairs(30_000, 1)
    async with EventIndexClient(server.url, chunk_size=7_000, concurrency=3) as client:
        results = [r async for r in client.lookup_stream(pairs)]
    assert [(r.run_number, r.event_number) for r in results] == pairs
    for r in results:
        assert r.found == known(r.run_number, r.event_number)
        if r.found:
            assert str(r.fuid_raw) == fuid_of(r.run_number, r.event_number)
            assert r.dsid_raw == dsid_of(r.run_number)


async def test_stream_from_async_generator(server: Server) -> None:
    async def pairs() -> AsyncIterator[tuple[int, int]]:
        for e in range(2_500):
            yield 102, e

    async with EventIndexClient(server.url, chunk_size=1_000) as client:
        results = [r async for r in client.lookup_stream(pairs())]
    assert [r.event_number for r in results] == list(range(2_500))
    assert sum(r.found for r in results) == EVENTS_PER_RUN


def test_sync_client(server: Server) -> None:
    with SyncEventIndexClient(server.url, chunk_size=500) as client:
        assert client.get_event(103, 3) is not None
        results = list(client.lookup_stream((103, e) for e in range(1_200)))
    assert [r.event_number for r in results] == list(range(1_200))


async def test_refused_request_carries_the_problem(server: Server) -> None:
    async with EventIndexClient(server.url) as client:
        with pytest.raises(ProblemError) as info:
            await client.lookup([(1, 1), (-1, 2)])
    assert info.value.status == 422
    assert info.value.problem["errors"][0]["pair"] == 1
    assert "pairs[1]" in str(info.value)


async def test_unreachable_service_gives_up_after_retries() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with EventIndexClient(url, retries=2, backoff=0.01) as client:
        with pytest.raises(UnavailableError, match="did not answer after 2 retries"):
            await client.get_event(1, 1)


async def test_rate_limited_requests_are_retried(database_url: str) -> None:
    with run_server(
        database_url, EVENTINDEX_RATE_LIMIT_PER_SECOND="2", EVENTINDEX_RATE_LIMIT_BURST="1"
    ) as limited:
        async with httpx.AsyncClient(base_url=limited.url) as raw:
            answers = [await raw.get("/v1/events/100/1") for _ in range(3)]
        assert answers[0].status_code == 200
        refused = next(a for a in answers[1:] if a.status_code == 429)
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) >= 1
        assert "requests per second" in refused.json()["detail"]
        async with EventIndexClient(limited.url, backoff=0.01) as client:
            events = [await client.get_event(100, e) for e in range(4)]
        assert all(e is not None for e in events)


async def test_stream_survives_a_server_restart(database_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "EVENTINDEX_DATABASE_URL": database_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_LOG_LEVEL": "warning",
    }

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "eventindex", "serve"], env=env)

    proc = start()
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as probe:
            for _ in range(100):
                try:
                    await probe.get(url + "/health", timeout=1)
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        pairs = random_pairs(120_000, 5)
        got: list[tuple[int, int, bool]] = []
        # Chunks of 60k read at most a few blocks ahead: the kill at 30k falls mid-chunk.
        async with EventIndexClient(url, chunk_size=60_000, backoff=0.2) as client:
            async for r in client.lookup_stream(pairs):
                got.append((r.run_number, r.event_number, r.found))
                if len(got) == 30_000:
                    # Killed mid-stream, and back a moment later on the same port.
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                    proc = start()
        assert [(r, e) for r, e, _ in got] == pairs  # no duplicate, no gap
        assert all(found == known(r, e) for r, e, found in got)
    finally:
        proc.terminate()
        proc.wait(10)


def pick(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventindex", "pick", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# The first Online Filter bits' names (migrations/, docs/cli.md), for olt_of(event) < 16.
DECISIONS = ("minimum_bias", "high_multiplicity", "high_pt_hadron", "dimuon")


def decision_names(event: int) -> str:
    return ",".join(name for bit, name in enumerate(DECISIONS) if olt_of(event) >> bit & 1)


def test_pick_formats_and_exit_codes(server: Server, tmp_path: Path) -> None:
    found_only = b"run event\n100 1\n100:2 # note\n101,300\n"
    with_missing = found_only + b"5 5\n"

    ndjson = pick("--url", server.url, stdin=found_only)
    assert ndjson.returncode == 0, ndjson.stderr
    assert [line.split(",")[1] for line in ndjson.stdout.splitlines()] == [
        '"event_number":1',
        '"event_number":2',
        '"event_number":300',
    ]
    assert ndjson.stderr == "eventindex: 3 pairs: 3 found, 0 missing\n"

    table = pick("--url", server.url, "--format", "table", stdin=with_missing)
    assert table.returncode == 3
    rows = table.stdout.splitlines()
    assert rows[0].split() == ["run", "event", "file", "(fuid_raw)", "dataset", "decisions"]
    assert rows[1].split() == ["100", "1", fuid_of(100, 1), DATASETS[dsid_of(100)], "minimum_bias"]
    assert rows[3].split() == [
        "101", "300", fuid_of(101, 300), DATASETS[dsid_of(101)], decision_names(300)
    ]  # fmt: skip
    assert rows[-1].split() == ["5", "5", "(not", "found)"]
    assert table.stderr == "eventindex: 4 pairs: 3 found, 1 missing\n"

    path = tmp_path / "picks.txt"
    path.write_bytes(with_missing)
    as_csv = pick(str(path), "--url", server.url, "--format", "csv")
    assert as_csv.returncode == 3
    lines = list(csv.reader(io.StringIO(as_csv.stdout)))
    assert lines[0] == [
        "run_number", "event_number", "found", "fuid_raw", "dsid_raw", "olt_result",
        "dataset", "decisions",
    ]  # fmt: skip
    assert lines[1] == [
        "100", "1", "true", fuid_of(100, 1), str(dsid_of(100)), "1",
        DATASETS[dsid_of(100)], "minimum_bias",
    ]  # fmt: skip
    assert lines[3][5:] == [str(olt_of(300)), DATASETS[dsid_of(101)], decision_names(300)]
    assert lines[-1] == ["5", "5", "false", "", "", "", "", ""]

    files = pick("--url", server.url, "--format", "files", stdin=with_missing)
    assert files.stdout.splitlines() == [f"{fuid_of(100, 1)} 2", f"{fuid_of(101, 300)} 1"]

    missing = pick("--url", server.url, "--missing", stdin=with_missing)
    assert missing.returncode == 3
    assert missing.stdout.count("\n") == 1
    assert '"run_number":5' in missing.stdout


def test_pick_skip_invalid_reports_bad_lines_and_looks_up_the_rest(server: Server) -> None:
    # Good lines well past a chunk, then bad ones among them and at the end.
    good = [(100 + i % 5, i % 1000) for i in range(1_200)]
    lines = [b"%d %d" % p for p in good]
    lines.insert(10, b"100 -5")
    lines.insert(700, b"not a pair")
    lines.append(b"101 x")
    body = b"\n".join(lines) + b"\n"

    stopped = pick("--url", server.url, "--chunk-size", "500", stdin=body)
    assert stopped.returncode == 1
    assert stopped.stdout == ""
    assert stopped.stderr.splitlines() == [
        "eventindex: error: stdin: line 11: event_number -5 is negative "
        "(--skip-invalid skips bad lines, looks up the rest)"
    ]

    skipped = pick(
        "--url", server.url, "--chunk-size", "500", "--format", "csv", "--skip-invalid",
        stdin=body,
    )  # fmt: skip
    assert skipped.returncode == 0, skipped.stderr
    rows = list(csv.reader(io.StringIO(skipped.stdout)))[1:]
    assert [(int(r[0]), int(r[1])) for r in rows] == good
    assert all(r[2] == "true" for r in rows)
    assert skipped.stderr.splitlines() == [
        "eventindex: stdin: line 11: event_number -5 is negative (skipped)",
        "eventindex: stdin: line 701: expected 'run event' (or run:event, run,event, "
        "run/event), got 'not a pair' (skipped)",
        "eventindex: stdin: line 1203: event_number 'x' is not a whole number (skipped)",
        "eventindex: 1,200 pairs: 1,200 found, 0 missing; 3 bad lines skipped",
    ]

    nothing = pick("--url", server.url, "--skip-invalid", stdin=b"x1\n1 -1\n")
    assert nothing.returncode == 1
    assert nothing.stderr.splitlines()[-1] == (
        "eventindex: error: stdin: no pairs to look up, only 2 bad lines"
    )


def test_pick_errors_are_one_line(server: Server, tmp_path: Path) -> None:
    bad = pick("--url", server.url, stdin=b"100 1\nnot a pair\n")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "eventindex: error: stdin: line 2: expected 'run event' (or run:event, run,event, "
        "run/event), got 'not a pair' (--skip-invalid skips bad lines, looks up the rest)"
    ]
    nofile = pick(str(tmp_path / "absent.txt"), "--url", server.url)
    assert nofile.returncode == 1
    assert "No such file or directory" in nofile.stderr
    down = pick("--url", f"http://127.0.0.1:{free_port()}", "--retries", "0", stdin=b"1 1\n")
    assert down.returncode == 1
    assert len(down.stderr.strip().splitlines()) == 1
    assert "did not answer" in down.stderr
    usage = pick("--format", "xml", stdin=b"")
    assert usage.returncode == 2


# Runs `eventindex pick` and records its own peak RSS (VmHWM: since exec, unlike
# ru_maxrss, which also counts the pages shared with the forking test process).
_PICK_WITH_PEAK = """
import runpy, sys
from pathlib import Path
report = sys.argv.pop()
sys.argv[0] = "eventindex"
try:
    runpy.run_module("eventindex", run_name="__main__")
finally:
    status = Path("/proc/self/status").read_text().splitlines()
    Path(report).write_text(next(x for x in status if x.startswith("VmHWM")).split()[1])
"""


def peak_rss_of_pick(path: Path, url: str, tmp_path: Path) -> tuple[float, list[int]]:
    report = tmp_path / "peak.txt"
    command = [sys.executable, "-c", _PICK_WITH_PEAK, "pick", str(path), "--format", "files"]
    result = subprocess.run(
        [*command, "--url", url, str(report)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    counts = [int(line.split()[1]) for line in result.stdout.splitlines()]
    return int(report.read_text()) / 1024, counts


def test_million_pairs_in_bounded_client_memory(server: Server, tmp_path: Path) -> None:
    rng = random.Random(9)
    sizes = {"small": 100_000, "large": 1_000_000}
    peaks: dict[str, float] = {}
    for name, n in sizes.items():
        path = tmp_path / f"{name}.txt"
        with path.open("w") as f:
            for _ in range(n):
                f.write(f"{rng.choice(RUNS)} {rng.randrange(EVENTS_PER_RUN)}\n")
        peaks[name], counts = peak_rss_of_pick(path, server.url, tmp_path)
        assert sum(counts) == n
        assert len(counts) == len(RUNS) * EVENTS_PER_RUN // 250
    # Ten times the pairs, about the same memory: 900k more answers held at once would
    # take well over 150 MiB.
    growth = peaks["large"] - peaks["small"]
    print(f"pick peak RSS {peaks['small']:.0f} MiB for 100k pairs, {peaks['large']:.0f} for 1M")
    assert growth < 60, f"the client grew by {growth:.0f} MiB from 100k to 1M pairs"
    assert peaks["large"] < 150, f"the client's peak RSS was {peaks['large']:.0f} MiB"


async def test_client_peak_memory_stays_bounded(server: Server) -> None:
    # The client's own allocations while it streams 400k pairs: far below what
    # holding the answers (~400 B each as Python objects) would take.
    import tracemalloc

    def pairs() -> Iterator[tuple[int, int]]:
        rng = random.Random(3)
        for _ in range(400_000):
            yield rng.choice(RUNS), rng.randrange(EVENTS_PER_RUN)

    tracemalloc.start()
    try:
        found = 0
        async with EventIndexClient(server.url, chunk_size=50_000) as client:
            async for batch in client.lookup_stream_raw(pairs()):
                found += len(batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found == 400_000
    assert peak < 60 * 1024 * 1024, f"peak {peak / 2**20:.0f} MiB"
    await asyncio.sleep(0)
