"""The least a Python service on this stack can do per single-event GET: a raw ASGI app
under uvicorn (same workers, same event loop and HTTP parser) answering
``GET /v1/events/{run}/{event}`` with one asyncpg query from a pool, and nothing else:
no routing, credentials, limits, headers or logs. ``bench qos`` measures it beside the
service, so that the service's cost per request is seen apart from the stack's.

Run as ``uvicorn bench.bareget:app`` with ``BAREGET_DSN`` and ``BAREGET_POOL`` set.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg
import orjson

ONE_ROW = (
    "SELECT run_number, event_number, fuid_raw::text AS fuid_raw, dsid_raw, olt_result "
    "FROM events WHERE run_number = $1 AND event_number = $2"
)


class BareGet:
    def __init__(self) -> None:
        self.pool: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    size = int(os.environ.get("BAREGET_POOL", "10"))
                    self.pool = await asyncpg.create_pool(
                        os.environ["BAREGET_DSN"], min_size=size, max_size=size
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.pool.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        parts = scope["path"].split("/")
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(ONE_ROW, int(parts[3]), int(parts[4]))
        status, body = (200, orjson.dumps(dict(row))) if row is not None else (404, b"{}")
        head = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": body})


app = BareGet()
