"""Batched lookups of (run_number, event_number) pairs on the primary key."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import asyncpg

from eventindex.db import Connection, Lane
from eventindex.metrics import count_pairs, timed_query
from eventindex.middleware.interactive import as_bulk, bulk_turn, is_bulk, weighty

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

# Every lookup goes through eventindex_lookup(runs, events) (migration 0005): on one
# server a SQL function probing the primary key, on a sharded coordinator a PL/Proxy
# function of the same signature that sends each shard its own pairs (docs/scaling.md).
# The function sets its own plan (a nested loop of index probes); what is left here is
# matching its answers back to the request, which is a hash join at every size, and JIT
# costs more than it saves.
LOOKUP_PLAN_SETTINGS = (
    "SET LOCAL enable_nestloop = off; SET LOCAL enable_mergejoin = off; SET LOCAL jit = off"
)

# One round trip per batch, and the database writes the JSON text itself, so the
# service never builds a Python object per pair; each pair's position in the request
# puts the answers in request order. $3 separates the objects: a newline for NDJSON, a
# comma inside a JSON array.
LOOKUP_BATCH_JSON = """
SELECT convert_to(
           string_agg(
               CASE WHEN x.fuid_raw IS NULL THEN
                   '{"run_number":' || p.r || ',"event_number":' || p.e
                   || ',"found":false,"fuid_raw":null,"dsid_raw":null,"olt_result":null}'
               ELSE
                   '{"run_number":' || p.r || ',"event_number":' || p.e
                   || ',"found":true,"fuid_raw":"' || x.fuid_raw
                   || '","dsid_raw":' || x.dsid_raw || ',"olt_result":' || x.olt_result || '}'
               END,
               $3::text ORDER BY p.o),
           'UTF8') AS body,
       count(x.fuid_raw) AS found
FROM unnest($1::text::integer[], $2::text::bigint[]) WITH ORDINALITY AS p (r, e, o)
LEFT JOIN eventindex_lookup($1::text::integer[], $2::text::bigint[]) AS x
       ON x.run_number = p.r AND x.event_number = p.e
"""

# The same answers as CSV rows (Accept: text/csv), in the columns of CSV_HEADER; no field
# needs quoting (numbers, a UUID, true/false).
LOOKUP_BATCH_CSV = """
SELECT convert_to(
           string_agg(
               p.r || ',' || p.e || CASE WHEN x.fuid_raw IS NULL THEN ',false,,,'
                   ELSE ',true,' || x.fuid_raw || ',' || x.dsid_raw || ',' || x.olt_result END,
               $3::text ORDER BY p.o),
           'UTF8') AS body,
       count(x.fuid_raw) AS found
FROM unnest($1::text::integer[], $2::text::bigint[]) WITH ORDINALITY AS p (r, e, o)
LEFT JOIN eventindex_lookup($1::text::integer[], $2::text::bigint[]) AS x
       ON x.run_number = p.r AND x.event_number = p.e
"""
CSV_HEADER = b"run_number,event_number,found,fuid_raw,dsid_raw,olt_result\n"

# Run and event numbers as ints (a JSON body) or as their decimal digits (a streamed body,
# see PairParser.feed_tokens).
Numbers = Sequence[int] | Sequence[bytes]
Batch = tuple[Numbers, Numbers]


def array_literal(values: Numbers) -> str:
    """The numbers as a PostgreSQL array literal, sent as one text parameter: asyncpg
    checks every element of an int[] parameter in Python, which cost a bulk stream twice
    the service's CPU of joining the digits (bench qos)."""
    if values and isinstance(values[0], bytes):
        return "{" + b",".join(cast(Sequence[bytes], values)).decode("ascii") + "}"
    return "{" + ",".join(map(str, values)) + "}"


# Errors of a connection that broke under a query, as opposed to errors of the query.
BROKEN_CONNECTION_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InternalClientError,
    ConnectionError,
)
RETRY_PAUSE = 0.5

# Below this, splitting a request over connections costs more than it saves.
MIN_SPLIT = 2_000


@dataclass(frozen=True)
class BatchResult:
    """The answers to one batch as JSON objects joined by the separator, in request order."""

    body: bytes
    requested: int
    found: int


async def lookup_batch(
    conn: Connection,
    runs: Numbers,
    events: Numbers,
    separator: str,
    csv: bool = False,
) -> BatchResult:
    """One query for the whole batch (JSON objects, or CSV rows). Expects a connection from
    ``lookup_connection``."""
    if not runs:
        return BatchResult(b"", 0, 0)
    query = LOOKUP_BATCH_CSV if csv else LOOKUP_BATCH_JSON
    with timed_query("lookup_batch"):
        row = await conn.fetchrow(query, array_literal(runs), array_literal(events), separator)
    assert row is not None
    return BatchResult(bytes(row["body"]), len(runs), int(row["found"]))


@asynccontextmanager
async def lookup_connection(lane: Lane, *, bulk: bool = False) -> AsyncIterator[Connection]:
    """A pooled connection in a read-only transaction set up for lookups."""
    async with lane.acquire(bulk=bulk) as conn, conn.transaction(readonly=True):
        await conn.execute(LOOKUP_PLAN_SETTINGS)
        yield conn


async def lookup_on_pool(
    lane: Lane,
    runs: Numbers,
    events: Numbers,
    separator: str,
    csv: bool = False,
    *,
    bulk: bool = False,
) -> BatchResult:
    """One batch on a connection of its own, held only while the query runs.

    A lookup only reads, so a batch whose connection broke (the database
    restarted since the connection was made) is asked once more on a new one:
    a restart while the service is idle or between batches goes unseen.
    """
    try:
        async with lookup_connection(lane, bulk=bulk) as conn:
            return await lookup_batch(conn, runs, events, separator, csv)
    except BROKEN_CONNECTION_ERRORS:
        await asyncio.sleep(RETRY_PAUSE)
    async with lookup_connection(lane, bulk=bulk) as conn:
        return await lookup_batch(conn, runs, events, separator, csv)


async def lookup_batches(
    lane: Lane,
    batches: AsyncIterable[Batch],
    separator: str,
    *,
    width: int,
    csv: bool = False,
    bulk: bool = True,
    interactive_below: int = 0,
) -> AsyncIterator[BatchResult]:
    """Results of each batch, in order, with up to ``width`` queries in flight.

    The next batch is read (parsed) while the database works on the previous
    ones, so the service's CPU and the database's overlap. Each query takes a
    pooled connection for itself and gives it back when it is done: a stream
    that waits for its client (a slow upload, a slow reader) holds none, so
    slow clients cannot starve the pool. If reading the batches fails, the
    batches already read are answered before the error is raised. A first batch
    smaller than ``interactive_below`` is the whole request (a stream's first
    batch waits to be full): it is answered as interactive work.
    """
    in_flight: deque[asyncio.Task[BatchResult]] = deque()
    failure: Exception | None = None
    batch_iterator = aiter(batches)
    first = True
    try:
        while True:
            try:
                runs, events = await anext(batch_iterator)
            except StopAsyncIteration:
                break
            except Exception as exc:
                # Bad input: answer what came before it first. (A failed query is not
                # caught here: answering later batches after it would leave a gap.)
                failure = exc
                break
            if len(in_flight) >= width:
                yield await in_flight.popleft()
            this_bulk = bulk and not (first and len(runs) < interactive_below)
            if this_bulk:
                as_bulk()
                await bulk_turn()  # the batch's query is encoded next: another step
            first = False
            in_flight.append(
                asyncio.create_task(
                    lookup_on_pool(lane, runs, events, separator, csv, bulk=this_bulk)
                )
            )
        while in_flight:
            result = await in_flight[0]
            in_flight.popleft()
            yield result
        if failure is not None:
            raise failure
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)


async def iterate_batches(runs: list[int], events: list[int], size: int) -> AsyncIterator[Batch]:
    for start in range(0, len(runs), size):
        yield runs[start : start + size], events[start : start + size]


async def lookup_all(
    lane: Lane,
    runs: list[int],
    events: list[int],
    *,
    separator: str,
    batch_size: int,
    connections: int,
) -> BatchResult:
    """Every pair of an in-memory list, answered as one joined body.

    A list smaller than a batch is still split over the connections (down to
    ``MIN_SPLIT`` pairs a query), so a medium-sized request uses both the
    database's cores. One that fits in a batch is interactive work (the page's
    lookups), served before the batches of streams, unless its request was admitted as
    bulk work (``middleware/interactive.py``); a larger one is bulk.
    """
    bulk = len(runs) > batch_size or is_bulk()
    if not bulk:
        weighty()
    per_connection = max(MIN_SPLIT, -(-len(runs) // connections))
    batch_size = min(batch_size, per_connection)
    n_batches = -(-len(runs) // batch_size)
    parts: list[bytes] = []
    found = 0
    async for result in lookup_batches(
        lane,
        iterate_batches(runs, events, batch_size),
        separator,
        width=max(1, min(connections, n_batches)),
        bulk=bulk,
    ):
        parts.append(result.body)
        found += result.found
    count_pairs(found, len(runs))
    return BatchResult(separator.encode().join(parts), len(runs), found)
