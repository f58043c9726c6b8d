"""The lookup query probes the primary key once per pair: a nested loop, whatever the size."""

from __future__ import annotations

import asyncpg

from eventindex.db import Lane
from eventindex.lookup import (
    LOOKUP_BATCH_JSON,
    LOOKUP_PLAN_SETTINGS,
    array_literal,
    lookup_batch,
    lookup_connection,
)
from eventindex.singles import GET_EVENT
from tests.support.catalogue import fuid_of, olt_of


async def _explain(conn: asyncpg.Connection, sql: str, *args: object) -> str:
    return "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *args))


async def test_plan_is_nested_loop_over_primary_key(database_url: str) -> None:
    """The probes inside eventindex_lookup are a nested loop of primary-key index scans
    (its own body, planned under its own settings); matching the answers back to the
    request outside it is a hash join."""
    runs = [100 + i % 5 for i in range(50_000)]
    events = [(i * 7919) % 1000 for i in range(50_000)]
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction(readonly=True):
            await conn.execute(LOOKUP_PLAN_SETTINGS)
            outer = await _explain(
                conn, LOOKUP_BATCH_JSON, array_literal(runs), array_literal(events), "\n"
            )
            function = await conn.fetchrow(
                "SELECT prosrc, proconfig FROM pg_proc WHERE proname = 'eventindex_lookup'"
            )
            assert function is not None
            body, config = function["prosrc"], function["proconfig"]
            for setting in config:
                name, value = setting.split("=", 1)
                await conn.execute(f"SET LOCAL {name} = {value}")
            body = body.replace("unnest(runs, events)", "unnest($1::integer[], $2::bigint[])")
            inner = await _explain(conn, body, runs, events)
    finally:
        await conn.close()
    assert "Nested Loop" in inner, inner
    assert "Index Scan using events_r0000000100_pkey" in inner, inner
    assert "Hash" not in inner, inner
    assert "Seq Scan" not in inner, inner
    assert "Hash Right Join" in outer or "Hash Left Join" in outer, outer
    assert "Nested Loop" not in outer, outer


async def test_batch_restores_input_order(database_url: str) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        async with lookup_connection(Lane(pool, 5.0)) as conn:
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


async def test_one_event_is_one_index_probe_with_no_function_call(database_url: str) -> None:
    """GET's lookup is inlined: the plan is the probe itself, no function scan (whose SET
    clauses would double the cost of a single lookup)."""
    conn = await asyncpg.connect(database_url)
    try:
        plan = await _explain(conn, GET_EVENT, 102, 417)
        row = await conn.fetchrow(GET_EVENT, 102, 417)
    finally:
        await conn.close()
    assert "Index Scan using events_r0000000100_pkey" in plan, plan
    assert "Function Scan" not in plan, plan
    assert row is not None
    assert (row["run_number"], row["event_number"], row["olt_result"]) == (102, 417, olt_of(417))
    assert row["fuid_raw"] == fuid_of(102, 417)
