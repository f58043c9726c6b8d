"""Event picking: one event by its numbers, or any number of (run, event) pairs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError

from eventindex import lookup
from eventindex.auth import require
from eventindex.config import MAX_EVENT_NUMBER, MAX_RUN_NUMBER, Settings
from eventindex.db import Lane
from eventindex.deps import DatabaseDep, SettingsDep
from eventindex.middleware.bodylimits import too_slow
from eventindex.pairs import PairParser, PairSyntaxError
from eventindex.problems import Problem, problem_responses, validation_problem
from eventindex.schemas import ASCII_DIGITS, Event, LookupResponse, parse_lookup_request
from eventindex.streaming import NDJSON, LookupStream, syntax_problem

router = APIRouter(prefix="/v1", tags=["event picking"], dependencies=[Depends(require("read"))])

_LINE_TYPES = {
    "application/x-ndjson",
    "application/ndjson",
    "application/jsonl",
    "application/json-lines",
    "text/plain",
    "text/csv",
}


@router.get(
    "/events/{run_number}/{event_number}",
    response_model=Event,
    summary="One event: its file, dataset and Online Filter decisions",
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def get_event(
    run_number: Annotated[int, Path(ge=0, le=MAX_RUN_NUMBER, examples=[1234]), ASCII_DIGITS],
    event_number: Annotated[int, Path(ge=0, le=MAX_EVENT_NUMBER, examples=[56789]), ASCII_DIGITS],
    db: DatabaseDep,
) -> Response:
    row = await lookup.get_event(db.reads, run_number, event_number)
    if row is None:
        raise Problem(
            404,
            "event-not-found",
            "Event not found",
            f"No event with run_number {run_number} and event_number {event_number}.",
        )
    return Response(orjson.dumps(dict(row)), media_type="application/json")


_LOOKUP_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/LookupRequest"}},
            NDJSON: {
                "schema": {"type": "string"},
                "example": '{"run_number": 1234, "event_number": 56789}\n'
                '{"run_number": 1234, "event_number": 56790}\n',
            },
            "text/plain": {"schema": {"type": "string"}, "example": "1234 56789\n1234:56790\n"},
        },
    },
    "responses": {
        "200": {
            "content": {
                NDJSON: {
                    "schema": {"$ref": "#/components/schemas/LookupResult"},
                    "example": '{"run_number":1234,"event_number":56789,"found":true,'
                    '"fuid_raw":"0b5e6a8e-8f3e-4a0c-9b1e-1f2a3b4c5d6e","dsid_raw":1,"olt_result":5}\n',
                }
            }
        }
    },
}


@router.post(
    "/lookup",
    response_model=LookupResponse,
    summary="Files of many events, in input order",
    description=(
        'Send pairs as JSON (`{"pairs": [[run, event], ...]}`, or objects with '
        "`run_number` and `event_number`), or as lines (NDJSON objects or `run event` text, "
        "`Content-Type: application/x-ndjson` or `text/plain`). With `Accept: "
        "application/x-ndjson` the answer is streamed, one line per pair in input order, and "
        "the request may be of any size; a stream that fails part-way ends with a line "
        '`{"error": {...}}`. JSON answers are limited to `max_json_pairs` pairs.'
    ),
    responses=problem_responses(401, 403, 408, 413, 415, 422, 503),
    openapi_extra=_LOOKUP_BODY_DOC,
)
async def lookup_pairs(
    request: Request,
    db: DatabaseDep,
    settings: SettingsDep,
    invalid: Annotated[
        Literal["fail", "report"],
        Query(
            description="For line bodies: `fail` (default) rejects the request at a bad line; "
            '`report` skips bad lines and reports each (`{"line": N, "error": ...}` lines '
            "in a stream, `invalid_lines` in JSON), and a stream ends with a `summary` line."
        ),
    ] = "fail",
) -> Response:
    content_type = request.headers.get("content-type", "application/json")
    media = content_type.split(";", 1)[0].strip().lower()
    accept = request.headers.get("accept", "")
    wants_stream = any(t in accept for t in ("ndjson", "jsonl", "json-lines"))

    if media == "application/json" or media.endswith("+json"):
        body = await _read_limited(request, settings.max_body_bytes, settings.body_timeout)
        try:
            runs, events = parse_lookup_request(body)
        except ValidationError as exc:
            raise validation_problem(exc.errors(), "pairs") from None
        _check_count(len(runs), settings)
        if wants_stream:
            return LookupStream(db.reads, settings, (runs, events))
        return await _json_answer(request, db.reads, settings, runs, events)

    if media in _LINE_TYPES:
        report = invalid == "report"
        if wants_stream or "application/json" not in accept:
            return LookupStream(db.reads, settings, report_invalid=report)
        body = await _read_limited(request, settings.max_body_bytes, settings.body_timeout)
        parser = PairParser(collect_errors=True)
        runs, events = parser.feed(body)
        if parser.errors and (not report or not runs):
            raise syntax_problem(PairSyntaxError(parser.errors, parser.error_count))
        if not runs:
            raise Problem(422, "no-pairs", "No pairs", "The request body contains no pairs.")
        _check_count(len(runs), settings)
        extra = {"invalid_lines": [{"line": e.line, "error": e.reason} for e in parser.errors]}
        return await _json_answer(
            request, db.reads, settings, runs, events, extra if report else None
        )

    raise Problem(
        415,
        "unsupported-media-type",
        "Unsupported media type",
        f"Content-Type {media!r} is not accepted; use application/json, "
        "application/x-ndjson or text/plain.",
    )


def _check_count(n: int, settings: Settings) -> None:
    if n > settings.max_json_pairs:
        raise Problem(
            413,
            "too-many-pairs",
            "Too many pairs for a JSON answer",
            f"{n} pairs exceed the limit of {settings.max_json_pairs} for a JSON answer; "
            f"ask for a stream with 'Accept: {NDJSON}' (and send the pairs as NDJSON or text "
            "lines), which takes any number of pairs.",
        )


async def _read_limited(request: Request, limit: int, timeout: float) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _body_too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise _body_too_large(limit)
                chunks.append(chunk)
    except TimeoutError:
        raise too_slow(timeout) from None
    return b"".join(chunks)


def _body_too_large(limit: int) -> Problem:
    return Problem(
        413,
        "body-too-large",
        "Request body too large",
        f"The request body exceeds {limit} bytes; stream the pairs as NDJSON or text lines "
        f"with 'Accept: {NDJSON}' instead.",
        # The rest of the body is not wanted: close rather than read and drop it all.
        headers={"Connection": "close"},
    )


async def _json_answer(
    request: Request,
    lane: Lane,
    settings: Settings,
    runs: list[int],
    events: list[int],
    extra: dict[str, Any] | None = None,
) -> Response:
    result = await lookup.lookup_all(
        lane,
        runs,
        events,
        separator=",",
        batch_size=settings.lookup_batch_size,
        connections=settings.stream_connections,
    )
    request.state.pairs = result.requested
    summary = {
        "requested": result.requested,
        "found": result.found,
        "missing": result.requested - result.found,
    }
    tail = orjson.dumps(extra)[1:-1] if extra else b""
    body = b'{"results":[' + result.body + b'],"summary":' + orjson.dumps(summary)
    body += b"," + tail + b"}" if tail else b"}"
    return Response(body, media_type="application/json")
