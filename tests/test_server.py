"""A real uvicorn over TCP: streaming in bounded memory, and clients that go away."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.catalogue import (
    EVENTS_PER_RUN,
    RUNS,
    busy_lookup_backends,
    dsid_of,
    fuid_of,
    olt_of,
)
from tests.support.servers import Server, endless_upload, feed, run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

NDJSON = "application/x-ndjson"


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Server]:
    with run_server(database_url) as running:
        yield running


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        yield client


async def test_over_tcp(http: httpx.AsyncClient) -> None:
    assert (await http.get("/ready")).status_code == 200
    response = await http.get("/v1/events/100/10")
    assert response.json()["fuid_raw"] == fuid_of(100, 10)


async def test_large_stream_in_bounded_memory(server: Server, http: httpx.AsyncClient) -> None:
    n = 300_000
    rng = random.Random(11)
    pairs = [(rng.choice(RUNS), rng.randrange(EVENTS_PER_RUN + 50)) for _ in range(n)]
    body = b"".join(b"%d %d\n" % p for p in pairs)

    # The request (~3 MB) and answer (~45 MB) held whole would grow the server by
    # well over 100 MB (Python objects per pair); streaming stays far below.
    reset_peak_rss(server.proc.pid)
    before = rss_kib(server.proc.pid, "VmRSS")

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    count = 0
    checked = 0
    async with http.stream(
        "POST",
        "/v1/lookup",
        content=chunks(),
        headers={"content-type": "text/plain", "accept": NDJSON},
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line:
                continue
            if count % 997 == 0:
                item = orjson.loads(line)
                run, event = pairs[count]
                assert (item["run_number"], item["event_number"]) == (run, event)
                assert item["found"] == (event < EVENTS_PER_RUN)
                checked += 1
            count += 1
    assert count == n
    assert checked > 300
    growth_mib = (rss_kib(server.proc.pid, "VmHWM") - before) / 1024
    assert growth_mib < 60, f"server grew by {growth_mib:.0f} MiB while streaming"


async def test_client_going_away_frees_connections(server: Server, database_url: str) -> None:
    reader, writer = await endless_upload(server.url)
    sender = asyncio.create_task(feed(writer, 5000, 0))
    try:
        received = 0
        busy_seen = 0
        while received < 3_000_000 or (not busy_seen and received < 100_000_000):
            data = await asyncio.wait_for(reader.read(65536), 30)
            assert data, "server closed the stream"
            received += len(data)
            # A batch holds a connection only while it is asked: look while streaming.
            busy_seen = max(busy_seen, await busy_lookup_backends(database_url))
        assert busy_seen > 0
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.transport.abort()
    # Bounded wait: the server notices the disconnect and gives its connections back.
    for _ in range(100):
        if await busy_lookup_backends(database_url) == 0:
            break
        await asyncio.sleep(0.1)
    assert await busy_lookup_backends(database_url) == 0


async def test_a_csv_stream_that_fails_part_way_is_cut_off(http: httpx.AsyncClient) -> None:
    # A bad line past the first batch (20,000 pairs by default), after answers went out:
    # NDJSON says so in a last line; CSV cannot, so the answer is left incomplete (no last
    # chunk), which a client sees as an error rather than as a complete, shorter file.
    body = b"".join(b"101 %d\n" % (i % 1000) for i in range(25_000)) + b"101 -5\n"
    received: list[bytes] = []
    headers: dict[str, str] = {}

    async def read() -> None:
        async with http.stream(
            "POST",
            "/v1/lookup",
            content=body,
            headers={"content-type": "text/plain", "accept": "text/csv"},
        ) as response:
            headers.update(response.headers)
            async for chunk in response.aiter_bytes():
                received.append(chunk)

    with pytest.raises(httpx.RemoteProtocolError):
        await read()
    assert headers["content-type"] == "text/csv; charset=utf-8"
    lines = b"".join(received).decode().splitlines()
    assert lines[0] == "run_number,event_number,found,fuid_raw,dsid_raw,olt_result"
    assert lines[1] == f"101,0,true,{fuid_of(101, 0)},{dsid_of(101)},{olt_of(0)}"
    assert len(lines) - 1 == 25_000  # every line before the bad one is answered
    # The same request as complete CSV when it has no bad line.
    whole = await http.post(
        "/v1/lookup",
        content=body[: -len(b"101 -5\n")],
        headers={"content-type": "text/plain", "accept": "text/csv"},
    )
    assert whole.status_code == 200
    assert len(whole.text.splitlines()) == 25_001
