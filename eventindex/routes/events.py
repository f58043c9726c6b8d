"""Event picking: one event by its numbers, or any number of (run, event) pairs."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from eventindex import lookup
from eventindex.auth import require
from eventindex.config import MAX_EVENT_NUMBER, MAX_RUN_NUMBER, Settings
from eventindex.db import Lane
from eventindex.deps import DatabaseDep, SettingsDep, SinglesDep
from eventindex.middleware.bodylimits import too_slow
from eventindex.pairs import JsonBodyError, PairParser, PairSyntaxError
from eventindex.problems import Problem, problem_responses
from eventindex.schemas import ASCII_DIGITS, Event, LookupResponse, parse_lookup_request
from eventindex.singles import SingleLookups
from eventindex.streaming import NDJSON, LookupStream, no_pairs, syntax_problem

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
    singles: SinglesDep,
) -> Response:
    return await event_answer(singles, run_number, event_number)


async def event_answer(singles: SingleLookups, run_number: int, event_number: int) -> Response:
    """The answer of ``GET /v1/events/{run}/{event}``, here and on its fast path
    (``middleware/fastget.py``)."""
    row = await singles.get(run_number, event_number)
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
                },
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "run_number,event_number,found,fuid_raw,dsid_raw,olt_result\n"
                    "1234,56789,true,0b5e6a8e-8f3e-4a0c-9b1e-1f2a3b4c5d6e,1,5\n"
                    "1234,56790,false,,,\n",
                },
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
        '`{"error": {...}}`. `Accept: text/csv` streams CSV rows under a header line (a CSV '
        "stream that fails part-way is cut off, seen as incomplete). JSON answers are limited "
        "to `max_json_pairs` pairs. Another `Accept` gets 406."
    ),
    responses=problem_responses(401, 403, 406, 408, 413, 415, 422, 503),
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
    json_body = media == "application/json" or media.endswith("+json")
    if not json_body and media not in _LINE_TYPES:
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"Content-Type {media!r} is not accepted; use application/json, "
            "application/x-ndjson or text/plain.",
        )
    answer = negotiate(request.headers.get("accept"), "json" if json_body else "ndjson")

    if json_body:
        body = await _read_limited(request, settings.max_body_bytes, settings.body_timeout)
        try:
            runs, events = parse_lookup_request(body)
        except JsonBodyError as exc:
            raise json_body_problem(exc) from None
        _check_count(len(runs), settings)
        if answer != "json":
            return LookupStream(db.reads, settings, (runs, events), csv=answer == "csv")
        return await _json_answer(request, db.reads, settings, runs, events)

    report = invalid == "report"
    if answer == "csv" and report:
        raise Problem(
            422,
            "invalid-report-needs-json",
            "invalid=report cannot be answered in CSV",
            "CSV has no place for the bad lines that invalid=report reports: ask for "
            f"'Accept: {NDJSON}' or application/json, or leave invalid=report out.",
        )
    if answer != "json":
        return LookupStream(db.reads, settings, report_invalid=report, csv=answer == "csv")
    body = await _read_limited(request, settings.max_body_bytes, settings.body_timeout)
    parser = PairParser(collect_errors=True)
    runs, events = parser.feed(body)
    if parser.errors and (not report or not runs):
        raise syntax_problem(PairSyntaxError(parser.errors, parser.error_count))
    if not runs:
        raise no_pairs(not body)
    _check_count(len(runs), settings)
    extra = {"invalid_lines": [{"line": e.line, "error": e.reason} for e in parser.errors]}
    return await _json_answer(request, db.reads, settings, runs, events, extra if report else None)


# What /v1/lookup answers in, by media type.
_ANSWERS = {
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
    "application/json-lines": "ndjson",
    "application/json": "json",
    "text/csv": "csv",
}
# Types named with the same quality: the stream first (as before there was CSV), then JSON.
_ORDER = ("ndjson", "json", "csv")


def negotiate(accept: str | None, default: str) -> str:
    """The answer's form from the Accept header: ``json``, ``ndjson`` or ``csv``.

    The highest quality wins, then the most specific range that names it; among types named
    alike, a stream first (as before there was a choice); among wildcards, ``default`` (JSON
    for a JSON body, a stream for lines). Absent, or only ``*/*``: ``default``. Nothing
    acceptable: 406.
    """
    if accept is None or not accept.strip():
        return default
    best: dict[str, tuple[float, int]] = {}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        kind, _, subtype = media.partition("/")
        for answer_type, answer in _ANSWERS.items():
            answer_kind = answer_type.split("/")[0]
            if media == answer_type:
                specificity = 2
            elif subtype == "*" and kind in ("*", answer_kind):
                specificity = 0 if kind == "*" else 1
            else:
                continue
            # The most specific range naming a form sets its quality (RFC 9110, 12.5.1).
            if answer not in best or specificity > best[answer][1]:
                best[answer] = (q, specificity)
    acceptable = [(q, s, a) for a, (q, s) in best.items() if q > 0]
    if not acceptable:
        raise Problem(
            406,
            "not-acceptable",
            "Not acceptable",
            f"Accept {_shown(accept)} names no form this operation answers in: "
            f"application/json, {NDJSON} or text/csv.",
        )

    def rank(item: tuple[float, int, str]) -> tuple[float, int, int]:
        q, specificity, answer = item
        if specificity == 2:
            preference = len(_ORDER) - _ORDER.index(answer)
        else:
            preference = len(_ORDER) + 1 if answer == default else 0
        return q, specificity, preference

    return max(acceptable, key=rank)[2]


def _shown(text: str) -> str:
    return repr(text if len(text) <= 100 else text[:100] + "...")


def json_body_problem(exc: JsonBodyError) -> Problem:
    """A 422 naming each bad pair by its index, in the words of the line parser."""
    errors = []
    for e in exc.errors[:100]:
        item: dict[str, Any] = {"loc": e.loc, "message": e.reason}
        if e.pair is not None:
            item["pair"] = e.pair
        errors.append(item)
    return Problem(422, "invalid-request", "Invalid request", str(exc), errors=errors)


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
