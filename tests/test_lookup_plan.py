"""The lookup query probes the primary key once per pair: a nested loop, whatever the size."""

from __future__ import annotations

import asyncpg

from eventindex import queries
from eventindex.lookup import lookup_batch, lookup_connections


async def test_plan_is_nested_loop_over_primary_key(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        runs = [100 + i % 5 for i in range(50_000)]
        events = [(i * 7919) % 1000 for i in range(50_000)]
        async with lookup_connections(pool, 1, 5.0) as (conn,):
            plan = "\n".join(
                row[0]
                for row in await conn.fetch(
                    "EXPLAIN " + queries.LOOKUP_BATCH_JSON, runs, events, "\n"
                )
            )
        assert "Nested Loop Left Join" in plan, plan
        assert "Index Scan using events_pkey" in plan, plan
        assert "Hash" not in plan, plan
        assert "Seq Scan" not in plan, plan
    finally:
        await pool.close()


async def test_batch_restores_input_order(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with lookup_connections(pool, 1, 5.0) as (conn,):
            result = await lookup_batch(conn, [104, 100, 7, 100], [3, 2, 1, 2], "\n")
        lines = result.body.split(b"\n")
        assert [line[:40] for line in lines] == [
            b'{"run_number":104,"event_number":3,"foun',
            b'{"run_number":100,"event_number":2,"foun',
            b'{"run_number":7,"event_number":1,"found"',
            b'{"run_number":100,"event_number":2,"foun',
        ]
        assert (result.requested, result.found) == (4, 3)
    finally:
        await pool.close()
