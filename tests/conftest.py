"""Shared fixtures: a real PostgreSQL, a migrated database with known events, the app."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import httpx
import pytest

from eventindex import migrate
from eventindex.config import Settings
from tests.support.catalogue import create_database, create_known_catalogue, drop_database
from tests.support.servers import EmbeddedServer, app_client


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A PostgreSQL of the test's own, which it may stop and start."""
    server = EmbeddedServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """Admin URL of the server the suite uses."""
    configured = os.environ.get("EVENTINDEX_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    server = EmbeddedServer()
    try:
        yield server.url()
    finally:
        server.close()


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A fresh database for this session, migrated and holding the known events."""
    name = f"eventindex_test_{os.getpid()}"
    yield await create_known_catalogue(server_url, name)
    await drop_database(server_url, name)


@pytest.fixture
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    """An empty database, dropped after the test."""
    name = f"eventindex_scratch_{uuid.uuid4().hex[:12]}"
    url = await create_database(server_url, name)
    yield url
    await drop_database(server_url, name)


@pytest.fixture
async def catalogue(scratch_database: str) -> str:
    """An empty, migrated catalogue, dropped after the test."""
    conn = await asyncpg.connect(scratch_database)
    await migrate.apply(conn)
    await conn.close()
    return scratch_database


@pytest.fixture
def settings(database_url: str) -> Settings:
    # Small batches so that multi-batch paths run on the small test catalogue.
    return Settings(database_url=database_url, lookup_batch_size=700, max_json_pairs=5000)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in app_client(settings):
        yield c
