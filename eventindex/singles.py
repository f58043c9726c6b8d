"""Single-event lookups of concurrent requests, asked of the database together.

A one-row lookup costs the database little (an index probe) and the service much more:
a connection taken from the pool and given back, a statement sent and its answer read,
and the event-loop turns around each. Under many concurrent ``GET /v1/events/{r}/{e}``
those per-query costs, paid once per request, were most of the machine's CPU (``bench
qos``). So the lookups that arrive while others are being asked wait for the query in
flight to end and then go together, in one query on one connection: a lone request is
asked at once as before, and a crowd costs a query per batch instead of per request.

A lone lookup calls ``eventindex_lookup_one`` (migration 0009), a batch
``eventindex_lookup`` (migration 0005): on one server both probe the primary key; on a
sharded coordinator both are routed to the shards of the runs (``sharding.sql``), so the
answers are exact either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from eventindex.db import Lane
from eventindex.lookup import BROKEN_CONNECTION_ERRORS, RETRY_PAUSE
from eventindex.metrics import timed_query

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

# One event: eventindex_lookup_one (migration 0009) is inlined into this query on a single
# server (one index probe), and routed to the run's shard on a coordinator.
GET_EVENT = """
SELECT run_number, event_number, fuid_raw::text AS fuid_raw, dsid_raw, olt_result
FROM eventindex_lookup_one($1::integer, $2::bigint)
"""

# Several events at once, in no particular order (each answer carries its numbers), through
# the bulk lookup's function: on a coordinator it sends each shard its pairs in one call,
# where a call of eventindex_lookup_one per pair would ask the shards one pair at a time.
GET_EVENTS = """
SELECT run_number, event_number, fuid_raw::text AS fuid_raw, dsid_raw, olt_result
FROM eventindex_lookup($1::integer[], $2::bigint[])
"""

# Most lookups a query asks at once; more wait for the next query.
MAX_BATCH = 256

Key = tuple[int, int]


class SingleLookups:
    """Answers ``get(run, event)``, asking the database for waiting lookups together.

    At most ``queries`` batch queries are in flight at once (each holds one interactive
    connection of ``lane`` while it runs); lookups that arrive while they are all busy
    wait for the next free one and go in its batch. Made by :meth:`open` in the lifespan,
    which owns the batch tasks and waits for them on the way out.
    """

    def __init__(self, lane: Lane, queries: int) -> None:
        self.lane = lane
        self.queries = queries
        self.waiting: dict[Key, list[asyncio.Future[asyncpg.Record | None]]] = {}
        self.running: set[asyncio.Task[None]] = set()
        self.scheduled = False
        self.closed = False

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, lane: Lane, queries: int) -> AsyncIterator[SingleLookups]:
        lookups = cls(lane, queries)
        try:
            yield lookups
        finally:
            lookups.closed = True  # no batch starts after this
            for futures in lookups.waiting.values():
                for future in futures:
                    future.cancel()
            lookups.waiting.clear()
            for task in lookups.running:
                task.cancel()
            if lookups.running:
                await asyncio.wait(lookups.running)

    async def get(self, run: int, event: int) -> asyncpg.Record | None:
        """The event's row, or None when the catalogue has no such event."""
        if self.closed:
            raise asyncio.CancelledError  # the service is stopping
        loop = asyncio.get_running_loop()
        future: asyncio.Future[asyncpg.Record | None] = loop.create_future()
        self.waiting.setdefault((run, event), []).append(future)
        if not self.scheduled and len(self.running) < self.queries:
            # Once the requests already read in this turn of the loop have joined.
            self.scheduled = True
            loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        self.scheduled = False
        if self.closed:
            return
        while self.waiting and len(self.running) < self.queries:
            keys = list(itertools.islice(self.waiting, MAX_BATCH))
            batch = {key: self.waiting.pop(key) for key in keys}
            task = asyncio.create_task(self._ask(batch))
            self.running.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        if self.waiting and not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    async def _ask(self, batch: dict[Key, list[asyncio.Future[asyncpg.Record | None]]]) -> None:
        try:
            rows = await self._query(list(batch))
        except BaseException as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        if isinstance(exc, asyncio.CancelledError):
                            future.cancel()
                        else:
                            future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for key, futures in batch.items():
            row = rows.get(key)
            for future in futures:
                if not future.done():
                    future.set_result(row)

    async def _query(self, keys: list[Key]) -> dict[Key, Any]:
        try:
            return await self._query_once(keys)
        except BROKEN_CONNECTION_ERRORS:
            # A lookup only reads: one more try on a new connection (see lookup_on_pool).
            await asyncio.sleep(RETRY_PAUSE)
        return await self._query_once(keys)

    async def _query_once(self, keys: list[Key]) -> dict[Key, Any]:
        async with self.lane.acquire() as conn:
            with timed_query("get_event"):
                if len(keys) == 1:
                    row = await conn.fetchrow(GET_EVENT, *keys[0])
                    return {keys[0]: row} if row is not None else {}
                runs, events = zip(*keys, strict=True)
                rows = await conn.fetch(GET_EVENTS, runs, events)
        return {(row["run_number"], row["event_number"]): row for row in rows}
