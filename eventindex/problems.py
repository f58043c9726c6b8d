"""RFC 9457 problem details: every error the API returns is one of these."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from eventindex.db import UNAVAILABLE_ERRORS, PoolExhausted, scrub

PROBLEM_JSON = "application/problem+json"
_TYPE_BASE = "urn:eventindex:problem:"

log = logging.getLogger("eventindex")


class Problem(Exception):
    """An error the client should see, with its HTTP status and the details."""

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def body(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": _TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def response(self, instance: str | None = None) -> Response:
        return Response(
            orjson.dumps(self.body(instance)),
            status_code=self.status,
            media_type=PROBLEM_JSON,
            headers=self.headers,
        )


_PROBLEM_SCHEMA_REF = "#/components/schemas/ProblemDetail"
_PROBLEM_DESCRIPTIONS = {
    400: "The request body cannot be decoded (it is not UTF-8)",
    401: "Authentication is on, and the credential is missing, unknown, expired or revoked",
    403: "The credential lacks the scope the operation needs",
    404: "Not found",
    405: "Method not allowed",
    406: "The Accept header names no form the operation answers in",
    408: "The request body did not arrive in time",
    409: "Conflicts with what exists",
    413: "The request body is too large",
    415: "Unsupported Content-Type",
    422: "Invalid request: each wrong field is named",
    429: "Too many requests: see Retry-After",
    503: "The database (or a shard) is unavailable, or the query timed out: see Retry-After",
}


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for errors: RFC 9457 problem details, documented under their
    own media type (a ``model`` would document them as application/json)."""
    return {
        code: {
            "description": _PROBLEM_DESCRIPTIONS.get(code, "Error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_SCHEMA_REF}}},
        }
        for code in codes
    }


def database_unavailable() -> Problem:
    return Problem(
        503,
        "database-unavailable",
        "Database unavailable",
        "The event catalogue's database cannot be reached; try again shortly.",
        headers={"Retry-After": "5"},
    )


def schema_missing(exc: BaseException) -> Problem:
    return Problem(
        503,
        "schema-missing",
        "Catalogue not initialised",
        f"The database is not migrated ({exc}); run 'eventindex migrate'.",
        headers={"Retry-After": "30"},
    )


# How a sharded coordinator reports a shard it cannot use: PL/Proxy names the database
# and address, postgres_fdw its foreign server (named shard_<name>).
_PLPROXY_FAILURE = re.compile(
    r"PL/Proxy function [^:]*: \[(?P<db>[^\]]*)\] (?:\w+: )?"
    r"(?:connection to server at \"(?P<host>[^\"]*)\", port (?P<port>\d+) failed: )?"
    r"(?P<why>[^\n]*)"
)
_FDW_FAILURE = re.compile(r'could not connect to server "shard_(?P<name>[^"]+)"')


def shard_problem(exc: BaseException) -> Problem | None:
    """A shard that is down or failing: 503 naming it. No partial answer is given, so
    events on the other shards are never reported as missing."""
    message = str(exc)
    where = why = None
    if match := _PLPROXY_FAILURE.search(message):
        where = f"database {match['db']}"
        if match["host"]:
            where += f" at {match['host']}:{match['port']}"
        why = match["why"].strip()
    elif match := _FDW_FAILURE.search(message):
        where, why = match["name"], (getattr(exc, "detail", None) or "").split("\n")[0]
    if where is None:
        return None
    return Problem(
        503,
        "shard-unavailable",
        "Shard unavailable",
        # PL/Proxy's and libpq's messages are passed on: never a connection string's password.
        scrub(
            f"The shard {where} cannot be used ({why or 'no reason given'}); the other "
            "shards' answers are withheld rather than given without it. Try again when it "
            "is back."
        ),
        headers={"Retry-After": "10"},
    )


def database_problem(exc: BaseException) -> Problem | None:
    """The problem to show for a database failure that is not the client's fault."""
    if (shard := shard_problem(exc)) is not None:
        return shard
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedFunctionError):
        return schema_missing(exc)
    if isinstance(exc, PoolExhausted):
        return Problem(
            503,
            "busy",
            "Service busy",
            (
                f"All {exc.size} of the database connections this worker lets bulk work "
                f"(streams, lookups of many pairs, cursors) hold stayed in use for "
                f"{exc.timeout:g} s (EVENTINDEX_BULK_CONNECTIONS); try again shortly."
            )
            if exc.bulk
            else (
                f"All {exc.size} of the service's database connections stayed in use for "
                f"{exc.timeout:g} s; try again shortly."
            ),
            headers={"Retry-After": "2"},
        )
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return database_unavailable()
    if isinstance(exc, asyncpg.DataError):
        # A value from the request that PostgreSQL refuses (a NUL byte in text, ...).
        return Problem(
            422,
            "invalid-value",
            "Invalid value",
            f"A value in the request is not acceptable: {str(exc).splitlines()[0]}",
        )
    if isinstance(exc, asyncpg.ObjectNotInPrerequisiteStateError):
        # The database's own refusal of events of a closed dataset (migration 0007).
        return Problem(409, "dataset-closed", "Dataset closed", str(exc).splitlines()[0])
    if isinstance(exc, asyncpg.TransactionRollbackError):
        # A deadlock or serialization failure that outlived its retries: nothing was
        # written, and the same request again is expected to succeed.
        return Problem(
            503,
            "conflict-retry",
            "Concurrent change",
            "The database rolled the request back because of a concurrent change "
            f"({str(exc).splitlines()[0]}); nothing was written. Send it again.",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, asyncpg.QueryCanceledError):
        return Problem(
            503,
            "query-timeout",
            "Query timed out",
            "The database did not answer within the statement timeout; split the request.",
            headers={"Retry-After": "5"},
        )
    return None


def _loc_text(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_problem(errors: Sequence[Mapping[str, Any]], what: str = "request") -> Problem:
    """A 422 that names each wrong field, and for pair lists the pair's index."""
    items = []
    for err in errors[:100]:
        loc = tuple(err.get("loc", ()))
        # FastAPI prefixes the source ("body", "path", "query"); keep it out of the prose.
        where = loc[1:] if loc and loc[0] in ("body", "path", "query", "header") else loc
        item: dict[str, Any] = {"loc": _loc_text(where), "message": err.get("msg", "invalid")}
        if len(where) >= 2 and where[0] == "pairs" and isinstance(where[1], int):
            item["pair"] = where[1]
        items.append(item)
    first = items[0] if items else {"loc": what, "message": "invalid"}
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    detail = f"{first['loc'] or what}: {first['message']}{more}"
    return Problem(422, "invalid-request", "Invalid request", detail, errors=items)


_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def _allowed_methods(request: Request) -> str | None:
    """The methods some route at the request's path takes. Starlette's 405 names only the
    methods of the first route there (``/v1/tokens`` has one route for GET, another for
    POST)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed) or None


def problem_of_failure(exc: Exception, path: str) -> Problem:
    """What a request that failed with ``exc`` answers: the database's state when that is
    the cause (logged as a warning), else a 500 (logged with its traceback)."""
    problem = database_problem(exc)
    if problem is None:
        log.error("unexpected error on %s", path, exc_info=exc)
        return Problem(500, "internal", "Internal error", "An unexpected error occurred.")
    log.warning("database problem on %s: %s", path, scrub(repr(exc)))
    return problem


def install_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return exc.response(request.url.path)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return validation_problem(exc.errors()).response(request.url.path)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers) if exc.headers else None
        if exc.status_code == 405 and (allowed := _allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allowed}
        problem = Problem(
            exc.status_code,
            "http-" + str(exc.status_code),
            str(exc.detail) if exc.status_code != 404 else "Not found",
            str(exc.detail),
            headers=headers,
        )
        return problem.response(request.url.path)

    async def on_failure(request: Request, exc: Exception) -> Response:
        return problem_of_failure(exc, request.url.path).response(request.url.path)

    async def on_disconnect(request: Request, exc: Exception) -> Response:
        # The client went away while sending its body: nobody will read an answer, and
        # nothing went wrong here.
        log.info("client disconnected during the body of %s", request.url.path)
        problem = Problem(
            400, "body-incomplete", "Body incomplete", "The connection ended before the body did."
        )
        return problem.response(request.url.path)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(ClientDisconnect, on_disconnect)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    database_errors: tuple[type[Exception], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)
    for exc_type in database_errors:
        app.add_exception_handler(exc_type, on_failure)
    app.add_exception_handler(Exception, on_failure)
