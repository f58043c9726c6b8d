"""Single-event lookups of concurrent requests go to the database together: each request
still gets its own answer, a failure reaches every request of its query, and a request
that gives up takes nobody's answer with it."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from eventindex.config import Settings
from eventindex.db import Database
from eventindex.singles import SingleLookups
from tests.support.catalogue import EVENTS_PER_RUN, RUNS, dsid_of, fuid_of, olt_of


def row_of(run: int, event: int) -> dict[str, object] | None:
    if run in RUNS and 0 <= event < EVENTS_PER_RUN:
        return {
            "run_number": run,
            "event_number": event,
            "fuid_raw": fuid_of(run, event),
            "dsid_raw": dsid_of(run),
            "olt_result": olt_of(event),
        }
    return None


def mixed_pairs(n: int, seed: int) -> list[tuple[int, int]]:
    """Known and unknown events, some asked twice."""
    rng = random.Random(seed)
    runs = [*RUNS, max(RUNS) + 7]
    pairs = [(rng.choice(runs), rng.randrange(EVENTS_PER_RUN + 20)) for _ in range(n)]
    return pairs + pairs[: n // 5]


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    settings = Settings(database_url=database_url, pool_max_size=3)
    async with Database.open(settings, database_url) as db:
        yield db


async def loop_turns(n: int = 5) -> None:
    """Let the tasks already started run up to their first real wait."""
    for _ in range(n):
        await asyncio.sleep(0)


def queries_made(metrics: str) -> float:
    match = re.search(
        r'^eventindex_db_query_duration_seconds_count\{query="get_event"\} (\S+)$',
        metrics,
        re.M,
    )
    return float(match[1]) if match else 0.0


async def test_concurrent_gets_each_get_their_own_answer_in_fewer_queries(
    client: httpx.AsyncClient,
) -> None:
    pairs = mixed_pairs(150, 1)
    before = queries_made((await client.get("/metrics")).text)
    answers = await asyncio.gather(*(client.get(f"/v1/events/{r}/{e}") for r, e in pairs))
    for (run, event), answer in zip(pairs, answers, strict=True):
        want = row_of(run, event)
        if want is None:
            assert answer.status_code == 404, (run, event)
            assert f"run_number {run} and event_number {event}" in answer.json()["detail"]
        else:
            assert answer.status_code == 200, (run, event)
            assert answer.json() == want
    asked = queries_made((await client.get("/metrics")).text) - before
    # The requests that arrived while a query was out went together in the next one.
    assert 1 <= asked < len(pairs) / 2


async def test_the_batch_query_answers_as_single_lookups_do(db: Database) -> None:
    pairs = mixed_pairs(300, 2)
    async with SingleLookups.open(db.reads, 1) as singles:
        alone = [await singles.get(r, e) for r, e in pairs[:40]]
        together = await asyncio.gather(*(singles.get(r, e) for r, e in pairs))
    for (run, event), row in zip(pairs, together, strict=True):
        assert (dict(row) if row is not None else None) == row_of(run, event)
    assert [dict(r) if r is not None else None for r in alone] == [
        row_of(r, e) for r, e in pairs[:40]
    ]


async def test_a_request_that_gives_up_leaves_the_others_their_answers(
    db: Database, database_url: str
) -> None:
    locker = await asyncpg.connect(database_url)
    try:
        async with SingleLookups.open(db.reads, 1) as singles:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            first = asyncio.create_task(singles.get(RUNS[0], 1))  # its query waits on the lock
            await loop_turns()
            assert len(singles.running) == 1
            waiting = [asyncio.create_task(singles.get(RUNS[0], e)) for e in (2, 3, 3)]
            await loop_turns()
            assert len(singles.waiting) == 2  # (run, 2) and (run, 3), for the next query
            waiting[1].cancel()  # gave up while waiting for the next query
            await tx.rollback()
            assert dict(await first or {}) == row_of(RUNS[0], 1)
            assert dict(await waiting[0] or {}) == row_of(RUNS[0], 2)
            assert dict(await waiting[2] or {}) == row_of(RUNS[0], 3)
            with pytest.raises(asyncio.CancelledError):
                await waiting[1]
    finally:
        await locker.close()


async def test_a_failed_query_fails_each_of_its_requests(database_url: str) -> None:
    settings = Settings(database_url=database_url, statement_timeout_ms=200)
    locker = await asyncpg.connect(database_url)
    try:
        async with (
            Database.open(settings, database_url) as db,
            SingleLookups.open(db.reads, 1) as singles,
        ):
            async with locker.transaction():
                await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
                got = await asyncio.gather(
                    *(singles.get(RUNS[0], e) for e in range(6)), return_exceptions=True
                )
            assert all(isinstance(g, asyncpg.QueryCanceledError) for g in got), got
            # And the next ones are answered.
            assert dict(await singles.get(RUNS[0], 5) or {}) == row_of(RUNS[0], 5)
    finally:
        await locker.close()


async def test_closing_cancels_the_queries_in_flight_and_those_waiting(
    db: Database, database_url: str
) -> None:
    locker = await asyncpg.connect(database_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
            async with SingleLookups.open(db.reads, 1) as singles:
                asked = asyncio.create_task(singles.get(RUNS[0], 1))
                await loop_turns()
                waiting = asyncio.create_task(singles.get(RUNS[0], 2))
                await loop_turns()
                assert (len(singles.running), len(singles.waiting)) == (1, 1)
            assert not singles.running
            await loop_turns()
            assert not singles.running  # nothing started after the close
            for task in (asked, waiting):
                with pytest.raises(asyncio.CancelledError):
                    await task
            with pytest.raises(asyncio.CancelledError):
                await singles.get(RUNS[0], 3)
    finally:
        await locker.close()
