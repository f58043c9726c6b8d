"""The database goes away and comes back: 503 while it is gone, then recovery by itself."""

from __future__ import annotations

import asyncio

import asyncpg

from eventindex import migrate
from eventindex.config import Settings
from tests.support.servers import EmbeddedServer, app_client


async def test_database_down_gives_503_then_recovers(own_server: EmbeddedServer) -> None:
    url = own_server.url()
    conn = await asyncpg.connect(url)
    await migrate.apply(conn)
    await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'd')")
    await conn.execute("SELECT events_add_partitions(ARRAY[1])")
    await conn.execute(
        "INSERT INTO events VALUES (1, 1, 0, 1, '00000000-0000-0000-0000-000000000001')"
    )
    await conn.close()

    settings = Settings(database_url=url, pool_min_size=2, pool_acquire_timeout=2.0)
    async for client in app_client(settings):
        assert (await client.get("/v1/events/1/1")).status_code == 200

        own_server.stop()
        for path in ("/v1/events/1/1", "/v1/events/1/1", "/ready"):
            down = await client.get(path)
            assert down.status_code == 503, down.text
        problem = (await client.post("/v1/lookup", json={"pairs": [[1, 1]]})).json()
        assert problem["status"] == 503
        assert "database" in problem["detail"]
        assert (await client.get("/health")).status_code == 200

        own_server.start()
        # Bounded wait for the pool to reconnect; the service needs no restart.
        for _ in range(50):
            response = await client.get("/v1/events/1/1")
            if response.status_code == 200:
                break
            await asyncio.sleep(0.2)
        assert response.status_code == 200
        assert response.json()["fuid_raw"] == "00000000-0000-0000-0000-000000000001"
        assert (await client.get("/ready")).status_code == 200


async def test_service_starts_while_database_is_down(own_server: EmbeddedServer) -> None:
    url = own_server.url()
    own_server.stop()
    settings = Settings(database_url=url, pool_acquire_timeout=2.0)
    async for client in app_client(settings):
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 503
        own_server.start()
        conn = await asyncpg.connect(url)
        await migrate.apply(conn)
        await conn.close()
        assert (await client.get("/ready")).status_code == 200
