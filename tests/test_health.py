"""Liveness and readiness."""

from __future__ import annotations

import httpx

from eventindex.config import Settings
from tests.support.servers import app_client


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "database": "ok", "pending_migrations": []}


async def test_not_ready_until_migrated(scratch_database: str) -> None:
    async for client in app_client(Settings(database_url=scratch_database)):
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert "0001_core_schema" in ready.json()["pending_migrations"]
        # The missing table is a 503, not a 500.
        response = await client.get("/v1/events/1/1")
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("application/problem+json")
