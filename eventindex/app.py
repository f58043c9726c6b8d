"""The application factory. Nothing is built at import time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypedDict

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, APIRouter

from eventindex import __version__
from eventindex.auth import Authenticator
from eventindex.config import Settings
from eventindex.db import Database
from eventindex.ingest.collector import Collector
from eventindex.metrics import Metrics
from eventindex.middleware.bodylimits import BodyLimits
from eventindex.middleware.clientcert import ClientCertificates, trusted_networks
from eventindex.middleware.fastget import SingleEventFastPath
from eventindex.middleware.hostcheck import LoopbackHostsOnly
from eventindex.middleware.interactive import BulkAdmission, InteractiveFirst, Priority
from eventindex.middleware.ratelimit import RateLimit, RateLimiter
from eventindex.middleware.requestlog import RequestLog, configure_logging
from eventindex.middleware.secheaders import SecurityHeaders
from eventindex.problems import install_handlers
from eventindex.routes import (
    admin,
    apidocs,
    browse,
    collection,
    events,
    health,
    prometheus,
    web,
)
from eventindex.routes.admin import CertificateRequest, TokenRequest
from eventindex.schemas import DatasetRequest, LookupRequest, ProblemDetail
from eventindex.singles import SingleLookups

log = logging.getLogger("eventindex")

_STREAM_CLOSE_TIMEOUT = 5.0
# Single-event batch queries in flight at once, per worker (see singles.py).
_SINGLE_QUERIES = 2
_REF = "#/components/schemas/{model}"


class State(TypedDict):
    auth: Authenticator
    db: Database
    settings: Settings
    streams: set[asyncio.Task[Any]]  # running streams (streaming.LookupStream, CursorStream)
    collector: Collector  # group commit of uploaded files
    priority: Priority  # interactive requests in flight, which bulk work lets go first
    admission: BulkAdmission  # bulk requests served at once, and those waiting their turn
    singles: SingleLookups  # single-event lookups, asked together when they crowd


def create_app(settings: Settings) -> FastAPI:
    if settings.database_url is None:
        raise ValueError("settings.database_url must be set (the CLI starts an embedded server)")
    dsn = settings.database_url

    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[State]:
        streams: set[asyncio.Task[Any]] = set()
        async with (
            Database.open(settings, dsn) as db,
            Authenticator.open(settings) as auth,
            Collector.open(db, settings) as collector,
            SingleLookups.open(db.reads, _SINGLE_QUERIES) as singles,
        ):
            metrics.pool = db.reads.pool
            admission = BulkAdmission(
                settings.bulk_connections, settings.bulk_queue, settings.bulk_queue_timeout
            )
            metrics.admission = admission
            try:
                yield {
                    "auth": auth,
                    "db": db,
                    "settings": settings,
                    "streams": streams,
                    "collector": collector,
                    "priority": Priority(),
                    "admission": admission,
                    "singles": singles,
                }
            finally:
                # The server has cancelled what outlived its grace period: let the streams
                # among them write their closing error line before the pools close.
                running = [t for t in streams if not t.done()]
                if running:
                    await asyncio.wait(running, timeout=_STREAM_CLOSE_TIMEOUT)
                metrics.pool = None
                metrics.admission = None

    docs = settings.docs_enabled
    app = FastAPI(
        title="EventIndex",
        version=__version__,
        # FastAPI's own docs pages load their code from a CDN: routes/apidocs.py serves it.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        summary="Event catalogue of the SPD experiment: which raw file holds each event.",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    install_handlers(app)
    app.include_router(health.router)
    app.include_router(events.router)
    app.include_router(browse.router)
    app.include_router(collection.router)
    if settings.auth_enabled:
        # An open service has nobody to give tokens to: its tokens (for the day it is
        # served with authentication) are made with the CLI, on the database's side.
        app.include_router(admin.router)
        app.include_router(admin.certificates)
    if settings.metrics_enabled:
        app.include_router(prometheus.router)
    # Innermost: inside the certificate check and the rate limit (and all the rest).
    app.add_middleware(
        SingleEventFastPath, route=_route(events.router, "/v1/events/{run_number}/{event_number}")
    )
    # Inside the rate limit: a refused certificate has paid for its request.
    app.add_middleware(
        ClientCertificates,
        max_proxies=settings.cert_max_proxy_depth,
        subject_header=settings.cert_subject_header,
        trusted=trusted_networks(settings.forwarded_allow_ips),
    )
    if settings.rate_limit_per_second > 0:
        limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
        app.add_middleware(RateLimit, limiter=limiter)
    web.mount(app)
    if docs:
        apidocs.mount(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Accept", "X-Request-Id"],
            expose_headers=["X-Request-Id", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(
        BodyLimits,
        max_bytes=settings.max_body_bytes,
        timeout=settings.body_timeout,
        # These read their own bodies, with their own limits.
        exempt=frozenset({"/v1/lookup"}),
        exempt_prefixes=("/v1/files/",),
    )
    app.add_middleware(SecurityHeaders)
    if settings.loopback_only:
        app.add_middleware(LoopbackHostsOnly)
    app.add_middleware(InteractiveFirst)
    # Outermost: every request is timed and logged, errors and 429s included.
    app.add_middleware(RequestLog, metrics=metrics)
    _document_raw_bodies(app, credential_required=settings.auth_enabled)
    return app


def _route(router: APIRouter, path: str) -> APIRoute:
    found = [r for r in router.routes if isinstance(r, APIRoute) and r.path == path]
    if len(found) != 1:
        raise LookupError(f"no single route {path}")
    return found[0]


def _document_raw_bodies(app: FastAPI, credential_required: bool) -> None:
    """Add the models of bodies that handlers read themselves to the OpenAPI components."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (
                DatasetRequest,
                LookupRequest,
                ProblemDetail,
                TokenRequest,
                CertificateRequest,
            ):
                model_schema = model.model_json_schema(ref_template=_REF)
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            if not credential_required:
                # Open (development) service: a credential may be sent, need not be.
                for item in schema["paths"].values():
                    for operation in item.values():
                        if "security" in operation:
                            operation["security"] = [{}, *operation["security"]]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_from_environment() -> FastAPI:
    """Factory for ``uvicorn --factory``: each worker process (``serve --workers N``, one
    per CPU in production) and each reloaded one builds its app, and sets up its logging,
    from the environment (a new process inherits neither)."""
    settings = Settings()
    configure_logging(settings.log_level.value, settings.json_logs)
    return create_app(settings)


__all__ = ["app_from_environment", "create_app"]
