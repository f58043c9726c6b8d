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
