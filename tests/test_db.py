"""The fair gate in front of the connection pool: first come, first served, no lost slots."""

from __future__ import annotations

import asyncio

import pytest

from eventindex.db import FairGate


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
