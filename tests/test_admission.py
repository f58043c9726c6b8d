"""Bulk requests take turns: a few are served at once, the rest wait in arrival order (or
are refused at once with 503 and Retry-After), and interactive requests never wait
behind them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from eventindex.config import Settings
from eventindex.middleware.interactive import INTERACTIVE_BODY_BYTES
from tests.support.catalogue import EVENTS_PER_RUN, RUNS, fuid_of
from tests.support.servers import app_client

NDJSON = "application/x-ndjson"
RUN = RUNS[0]


def lines_body(events: range) -> bytes:
    return b"".join(b"%d %d\n" % (RUN, e) for e in events)


def big_json(n: int) -> bytes:
    """A JSON lookup whose body is too large for an interactive request."""
    body = orjson.dumps({"pairs": [[RUN, e % EVENTS_PER_RUN] for e in range(n)]})
    assert len(body) > INTERACTIVE_BODY_BYTES
    return body


class HeldBody:
    """A streamed request body (no Content-Length: bulk by its head) whose end waits for
    ``release``: its request holds its turn until then."""

    def __init__(self, first: bytes, rest: bytes) -> None:
        self.first, self.rest = first, rest
        self.release = asyncio.Event()
        self.sent_first = asyncio.Event()

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.first
        self.sent_first.set()
        await self.release.wait()
        yield self.rest


async def hold_a_turn(
    api: httpx.AsyncClient, held: HeldBody
) -> tuple[HeldBody, asyncio.Task[httpx.Response]]:
    """A streamed lookup that holds its turn among the bulk requests until its body ends."""
    first = asyncio.create_task(
        api.post(
            "/v1/lookup",
            content=held.chunks(),
            headers={"content-type": "text/plain", "accept": NDJSON},
        )
    )
    await held.sent_first.wait()
    return held, first


def bulk_requests(metrics: httpx.Response) -> dict[str, int]:
    """The eventindex_bulk_requests gauges of /metrics, by state."""
    found = re.findall(r'^eventindex_bulk_requests\{state="(\w+)"\} (\S+)$', metrics.text, re.M)
    return {state: int(float(value)) for state, value in found}


def problem(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    for needle in needles:
        assert needle in body["detail"], body
    return body


async def test_bulk_requests_wait_their_turn_and_interactive_ones_do_not(
    database_url: str,
) -> None:
    settings = Settings(database_url=database_url, bulk_connections=1, bulk_queue=5)
    async for api in app_client(settings):
        held, first = await hold_a_turn(
            api, HeldBody(lines_body(range(0, 10)), lines_body(range(10, 20)))
        )
        second = asyncio.create_task(
            api.post(
                "/v1/lookup",
                content=big_json(5000),
                headers={"content-type": "application/json"},
            )
        )
        for _ in range(1000):  # until the second request is in the queue
            if bulk_requests(await api.get("/metrics")) == {"served": 1, "waiting": 1}:
                break
            await asyncio.sleep(0.01)
        # Interactive requests are answered while the second bulk request waits its turn.
        got = await api.get(f"/v1/events/{RUN}/7")
        assert got.json()["fuid_raw"] == fuid_of(RUN, 7)
        small = await api.post("/v1/lookup", json={"pairs": [[RUN, 8], [RUN, 9]]})
        assert [r["fuid_raw"] for r in small.json()["results"]] == [
            fuid_of(RUN, 8),
            fuid_of(RUN, 9),
        ]
        assert bulk_requests(await api.get("/metrics")) == {"served": 1, "waiting": 1}
        held.release.set()
        streamed = await first
        assert [orjson.loads(x)["event_number"] for x in streamed.content.splitlines()] == list(
            range(20)
        )
        answered = (await second).json()["results"]
        assert [r["event_number"] for r in answered] == [e % EVENTS_PER_RUN for e in range(5000)]
        assert all(r["fuid_raw"] == fuid_of(RUN, r["event_number"]) for r in answered)


async def test_beyond_the_queue_a_bulk_request_is_refused_at_once(database_url: str) -> None:
    settings = Settings(database_url=database_url, bulk_connections=1, bulk_queue=0)
    async for api in app_client(settings):
        held, first = await hold_a_turn(api, HeldBody(lines_body(range(0, 10)), b""))
        refused = await api.post(
            "/v1/lookup", content=big_json(5000), headers={"content-type": "application/json"}
        )
        body = problem(refused, 503, "1 bulk requests", "EVENTINDEX_BULK_QUEUE")
        assert body["type"] == "urn:eventindex:problem:busy"
        assert refused.headers["retry-after"].isdigit()
        # A catalogue listing is bulk work too.
        listing = await api.get(f"/v1/files/{fuid_of(RUN, 0)}/events")
        problem(listing, 503, "EVENTINDEX_BULK_QUEUE")
        held.release.set()
        assert (await first).status_code == 200
        # Its turn given back, the next bulk request is served.
        again = await api.post(
            "/v1/lookup", content=big_json(5000), headers={"content-type": "application/json"}
        )
        assert again.status_code == 200
        assert len(again.json()["results"]) == 5000
        listed = await api.get(f"/v1/files/{fuid_of(RUN, 0)}/events")
        assert listed.status_code == 200
        assert len(listed.content.splitlines()) == 250


async def test_a_bulk_request_waits_no_longer_than_its_timeout(database_url: str) -> None:
    settings = Settings(
        database_url=database_url, bulk_connections=1, bulk_queue=5, bulk_queue_timeout=0.2
    )
    async for api in app_client(settings):
        held, first = await hold_a_turn(api, HeldBody(lines_body(range(0, 10)), b""))
        late = await api.post(
            "/v1/lookup",
            content=HeldBody(lines_body(range(0, 100)), b"").chunks(),  # no stated length
            headers={"content-type": "text/plain", "accept": NDJSON},
        )
        problem(late, 503, "EVENTINDEX_BULK_QUEUE_TIMEOUT")
        held.release.set()
        assert (await first).status_code == 200
