"""The known catalogue (runs, events, files, datasets computed by formula) and the
databases tests make and drop."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from eventindex import migrate, queries
from eventindex.ingest.statements import ADD_PARTITIONS

RUNS = range(100, 105)


EVENTS_PER_RUN = 1000


EVENTS_PER_FILE = 250


DATASETS = {1: "spd.test.raw.a", 2: "spd.test.raw.b", 3: "spd.test.raw.c"}


def fuid_of(run: int, event: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{run}/{event // EVENTS_PER_FILE}"))


def dsid_of(run: int) -> int:
    return 1 + run % 3


def olt_of(event: int) -> int:
    return event % 16


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(queries.DROP_DATABASE.format(name=queries.ident(name)))
        await conn.execute(queries.CREATE_DATABASE.format(name=queries.ident(name)))
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(queries.DROP_DATABASE.format(name=queries.ident(name)))
    finally:
        await conn.close()


async def create_known_catalogue(server_url: str, name: str) -> str:
    """Database ``name`` (made anew), migrated and holding the known events."""
    url = await create_database(server_url, name)
    conn = await asyncpg.connect(url)
    try:
        await migrate.apply(conn)
        await conn.executemany(
            "INSERT INTO datasets (id, name) VALUES ($1, $2)", list(DATASETS.items())
        )
        rows = [
            (run, event, olt_of(event), dsid_of(run), uuid.UUID(fuid_of(run, event)))
            for run in RUNS
            for event in range(EVENTS_PER_RUN)
        ]
        await conn.execute(ADD_PARTITIONS, list(RUNS))
        await conn.copy_records_to_table(
            "events",
            records=rows,
            columns=["run_number", "event_number", "olt_result", "dsid_raw", "fuid_raw"],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return url


async def busy_lookup_backends(database_url: str) -> int:
    """The service's database sessions doing something (a query, or a transaction open)."""
    conn = await asyncpg.connect(database_url)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'eventindex' "
            "AND state <> 'idle'"
        )
        return count
    finally:
        await conn.close()
