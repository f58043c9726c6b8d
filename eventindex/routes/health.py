"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from eventindex import migrate
from eventindex.db import UNAVAILABLE_ERRORS, ping
from eventindex.deps import DatabaseDep
from eventindex.schemas import Health, Readiness

router = APIRouter(tags=["health"])

_READY_TIMEOUT = 3.0


@router.get("/health", response_model=Health, summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=Readiness,
    summary="The database is reachable and fully migrated",
    responses={503: {"model": Readiness}},
)
async def ready(db: DatabaseDep) -> Any:
    try:
        async with db.connection(timeout=_READY_TIMEOUT) as conn:
            await ping(conn, _READY_TIMEOUT)
            pending = [m.name for m in await migrate.pending(conn)]
    except UNAVAILABLE_ERRORS:
        body = {"status": "unavailable", "database": "unreachable", "pending_migrations": []}
        return _unready(body)
    except migrate.MigrationError as exc:
        body = {"status": "unavailable", "database": str(exc), "pending_migrations": []}
        return _unready(body)
    if pending:
        body = {"status": "unavailable", "database": "ok", "pending_migrations": pending}
        return _unready(body)
    return {"status": "ok", "database": "ok", "pending_migrations": []}


def _unready(body: dict[str, Any]) -> Response:
    return Response(orjson.dumps(body), status_code=503, media_type="application/json")
