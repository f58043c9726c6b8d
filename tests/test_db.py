"""The fair gate in front of the connection pool: first come, first served, no lost slots;
and pooled connections handed back clean."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from eventindex import lookup
from eventindex.config import Settings
from eventindex.db import Database, FairGate
from eventindex.ingest.collector import Collector, Dataset, Upload
from eventindex.ingest.filebody import FileBody, RowBuffer
from eventindex.singles import SingleLookups
from tests.support.uploads import as_csv, events_of


async def test_waiters_are_served_in_arrival_order() -> None:
    gate = FairGate(2)
    order: list[int] = []
    await gate.enter(1)
    await gate.enter(1)

    async def waiter(i: int) -> None:
        await gate.enter(5)
        order.append(i)

    tasks = []
    for i in range(6):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0)  # arrive in this order
    for _ in range(8):
        gate.leave()
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4, 5]


async def test_a_newcomer_does_not_overtake_a_waiter() -> None:
    gate = FairGate(1)
    await gate.enter(1)
    first = asyncio.create_task(gate.enter(5))
    await asyncio.sleep(0)
    gate.leave()  # the slot goes to the waiter, even before it runs
    with pytest.raises(TimeoutError):
        await gate.enter(0.05)
    await first


async def test_timeouts_and_cancellations_lose_no_slot() -> None:
    gate = FairGate(1)
    await gate.enter(1)
    with pytest.raises(TimeoutError):
        await gate.enter(0.01)
    cancelled = asyncio.create_task(gate.enter(5))
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    gate.leave()
    # The one slot is free again, exactly once.
    await gate.enter(0.1)
    with pytest.raises(TimeoutError):
        await gate.enter(0.01)
    gate.leave()
    assert gate.free == 1
    assert not gate.waiters


async def test_bulk_work_never_takes_the_reserved_places() -> None:
    gate = FairGate(4, reserve=2)
    await gate.enter(1, bulk=True)
    await gate.enter(1, bulk=True)
    with pytest.raises(TimeoutError):
        await gate.enter(0.02, bulk=True)  # two places are free, but reserved
    await gate.enter(0.02)  # interactive work gets them
    await gate.enter(0.02)
    assert gate.free == 0
    for bulk in (True, True, False, False):
        gate.leave(bulk)
    assert (gate.free, gate.bulk_held) == (4, 0)


async def test_a_freed_place_goes_to_interactive_work_before_bulk() -> None:
    gate = FairGate(2, reserve=0)
    await gate.enter(1, bulk=True)
    await gate.enter(1, bulk=True)
    order: list[str] = []

    async def waiter(name: str, bulk: bool) -> None:
        await gate.enter(5, bulk=bulk)
        order.append(name)

    tasks = [asyncio.create_task(waiter("batch 1", True))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(waiter("batch 2", True)))
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(waiter("single event", False)))
    await asyncio.sleep(0)
    for _ in range(3):
        gate.leave(True)
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert order == ["single event", "batch 1", "batch 2"]


async def test_pooled_connections_come_back_with_no_session_state(catalogue: str) -> None:
    """The pool skips asyncpg's reset query (a round trip per request), which is right only
    while no work leaves anything on the session: after an upload (group commit and the
    comparison of a file sent again), lookups of every kind and a conflict that rolled a
    transaction back, the one pooled connection holds no session setting, advisory lock,
    cursor, LISTEN or transaction."""
    settings = Settings(
        database_url=catalogue, pool_min_size=1, pool_max_size=1, stream_connections=1
    )
    setup = await asyncpg.connect(catalogue)
    try:
        await setup.execute("INSERT INTO datasets (id, name) VALUES (1, 'prod')")
    finally:
        await setup.close()
    events = events_of(80, 1, 300)
    async with Database.open(settings, catalogue) as db, Collector.open(db, settings) as collector:
        for _ in range(2):  # loaded, then compared as identical
            with RowBuffer(collector.budget) as buffer:
                body = FileBody(uuid.UUID(int=5), 1, "csv", buffer)
                body.feed(as_csv(events))
                body.finish()
                outcome = await collector.submit(Upload(body, Dataset(1, "prod"), "tester"))
            assert outcome.result in ("loaded", "identical")
        runs = [80] * 2_000
        numbers = list(range(1, 2_001))
        whole = await lookup.lookup_all(
            db.reads, runs, numbers, separator="\n", batch_size=700, connections=1
        )
        assert (whole.requested, whole.found) == (2_000, 300)
        async with SingleLookups.open(db.reads, 2) as singles:
            row = await singles.get(80, 7)
        assert row is not None
        assert row["fuid_raw"] == str(uuid.UUID(int=5))
        with pytest.raises(asyncpg.UniqueViolationError):
            async with db.primary.acquire() as conn, conn.transaction():
                await conn.execute("INSERT INTO events VALUES (80, 1, 1, 1, $1)", uuid.uuid4())
        async with db.primary.acquire() as conn:
            in_transaction = conn.is_in_transaction()
            # A setting that RESET ALL would change (asyncpg's own type introspection
            # sets jit for the session and puts it back: same value, source 'session').
            state = await conn.fetchrow(
                """
                SELECT (SELECT count(*) FROM pg_settings
                        WHERE source = 'session' AND setting IS DISTINCT FROM reset_val
                       ) AS settings,
                       (SELECT count(*) FROM pg_locks
                        WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks,
                       (SELECT count(*) FROM pg_cursors WHERE name <> '') AS cursors,
                       (SELECT count(*) FROM pg_listening_channels()) AS channels
                """
            )
    assert state is not None
    assert dict(state) == {
        "settings": 0,
        "locks": 0,
        "cursors": 0,
        "channels": 0,
    }
    assert not in_transaction
