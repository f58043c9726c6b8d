"""Prometheus metrics at /metrics (off with EVENTINDEX_METRICS_ENABLED=false)."""

from __future__ import annotations

import hmac

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eventindex.db import UNAVAILABLE_ERRORS
from eventindex.deps import DatabaseDep, SettingsDep
from eventindex.metrics import Metrics, events_loaded
from eventindex.middleware.ratelimit import charge_of
from eventindex.problems import Problem, problem_responses

router = APIRouter(tags=["operations"])

_DATABASE_AWAY: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.UndefinedTableError)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **problem_responses(401),
    },
)
async def metrics(request: Request, db: DatabaseDep, settings: SettingsDep) -> Response:
    if settings.metrics_token is not None:
        expected = "Bearer " + settings.metrics_token.get_secret_value()
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise Problem(
                401,
                "unauthorized",
                "Unauthorized",
                "/metrics wants the metrics token as 'Authorization: Bearer <token>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if (charge := charge_of(request.scope)) is not None:
            charge.principal("metrics", "scraper")
    registry: Metrics = request.app.state.metrics
    try:
        async with db.connection(read=True, timeout=2.0) as conn:
            registry.set_loaded(await events_loaded(conn, 2.0))
    except _DATABASE_AWAY:
        # The rest of the metrics matter most when the database is away (or not migrated
        # yet: no `loads`).
        pass
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
