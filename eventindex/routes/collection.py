"""Data collection: production jobs report each raw file's events; datasets are
registered, filled and closed (write scope)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from eventindex.auth import Principal, require
from eventindex.deps import CollectorDep, DatabaseDep, SettingsDep
from eventindex.ingest import lifecycle
from eventindex.ingest.collector import Dataset, Upload
from eventindex.ingest.filebody import (
    BodyError,
    FileBody,
    Format,
    RowBuffer,
    parse_content_digest,
)
from eventindex.middleware.interactive import as_bulk, bulk_turn
from eventindex.problems import Problem, problem_responses
from eventindex.routes.jsonbody import read_json
from eventindex.schemas import (
    DATASET_NAME_PATTERN,
    DatasetRequest,
    DatasetStatus,
    UploadResult,
)

router = APIRouter(prefix="/v1", tags=["data collection"])

WRITE = Depends(require("write"))

_FORMATS: dict[str, Format] = {
    "text/csv": "csv",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
    "application/jsonl": "ndjson",
}

_UPLOAD_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                "schema": {"type": "string"},
                "example": "run_number,event_number,olt_result\n1234,1,5\n1234,2,1\n",
            },
            "application/x-ndjson": {
                "schema": {"type": "string"},
                "example": '{"run_number": 1234, "event_number": 1, "olt_result": 5}\n',
            },
        },
    }
}

# A registered name, or an id (digits); a dataset loaded with another kind of name is
# reached by its id.
DATASET_REF_PATTERN = DATASET_NAME_PATTERN

DatasetRef = Annotated[
    str,
    Path(
        pattern=DATASET_REF_PATTERN,
        description="the dataset's id or name",
        examples=["spd-run2026-raw"],
    ),
]


def _problem(exc: BodyError) -> Problem:
    extra = dict(exc.extra)
    headers = extra.pop("headers", None)
    return Problem(exc.status, exc.kind, exc.title, exc.detail, headers=headers, **extra)


def _json(data: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(data), status_code=status, media_type="application/json", headers=headers
    )


@router.put(
    "/files/{fuid}",
    response_model=UploadResult,
    status_code=201,
    summary="Report a raw file's events (all or nothing; idempotent)",
    description=(
        "The body is the file's events: CSV with the header "
        "`run_number,event_number,olt_result` (`Content-Type: text/csv`) or NDJSON objects "
        "with those fields (`application/x-ndjson`), optionally `Content-Encoding: gzip`; "
        "a raw file holds the events of one run. 201: loaded; 200: the same events were "
        "already loaded (nothing changed) or, with `replace=true` (admin scope), replaced. "
        "409: the file is loaded with other events, an event is held by another file, or "
        "the dataset is closed. 422: bad lines (numbered). A 2xx answer means committed. "
        "An optional `Content-Digest: sha-256=:...:` (RFC 9530) is checked."
    ),
    responses={
        200: {"model": UploadResult, "description": "Already loaded, or replaced"},
        **problem_responses(400, 401, 403, 404, 408, 409, 413, 415, 422, 503),
    },
    openapi_extra=_UPLOAD_DOC,
)
async def put_file(
    request: Request,
    fuid: Annotated[UUID, Path(description="the raw file's UUID in distributed storage")],
    dataset: Annotated[
        str, Query(pattern=DATASET_REF_PATTERN, description="the dataset's id or name")
    ],
    db: DatabaseDep,
    settings: SettingsDep,
    collector: CollectorDep,
    principal: Annotated[Principal, WRITE],
    replace: Annotated[bool, Query(description="replace the file's events (admin scope)")] = False,
) -> Response:
    as_bulk()  # an upload is read and checked in steps that let interactive requests first
    if replace and "admin" not in principal.scopes:
        raise Problem(
            403,
            "forbidden",
            "Forbidden",
            f"'{principal.name}' lacks the 'admin' scope that replacing a file needs.",
        )
    if fuid.int == 0:
        raise Problem(
            422, "nil-uuid", "Nil UUID", "The nil UUID names no file; nothing was loaded."
        )
    fmt = _format(request)
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("identity", "gzip", "x-gzip"):
        raise Problem(
            415,
            "unsupported-encoding",
            "Unsupported content encoding",
            f"Content-Encoding {coding!r} is not accepted; send identity or gzip.",
        )
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > settings.upload_max_bytes:
        raise _problem(_too_large(settings.upload_max_bytes))
    try:
        expected = parse_content_digest(request.headers.get("content-digest"))
    except BodyError as exc:
        raise _problem(exc) from None
    async with db.connection() as conn:
        found = await lifecycle.resolve(conn, dataset)
    if found["state"] != "open":
        raise Problem(
            409,
            "dataset-closed",
            "Dataset closed",
            f"Dataset {found['id']} ({found['name']}) is {found['state']}: it takes no new files.",
        )
    target = Dataset(found["id"], found["name"])
    with RowBuffer(collector.budget) as rows:
        body = FileBody(
            fuid,
            target.id,
            fmt,
            rows,
            gzip=coding != "identity",
            max_bytes=settings.upload_max_bytes,
            max_events=settings.upload_max_events,
        )
        name = principal.name if principal.kind != "open" else None
        upload = Upload(body, target, name, replace, may_read="read" in principal.scopes)
        chunks = _body_chunks(request, settings.stream_idle_timeout, settings.upload_timeout)
        try:
            async for chunk in chunks:
                for _ in body.steps(chunk):
                    await bulk_turn()
                # A large file is written while it arrives (when a slot is free).
                large = body.count > settings.upload_group_rows and not body.errors
                if large and await collector.streamable():
                    outcome = await collector.stream(upload, chunks, expected)
                    break
            else:
                body.finish()
                body.check_digest(expected)
                outcome = await collector.submit(upload)
        except BodyError as exc:
            raise _problem(exc) from None
        finally:
            await chunks.aclose()
    request.state.pairs = outcome.events
    result = {
        "fuid_raw": str(outcome.fuid),
        "dataset": {"id": outcome.dataset.id, "name": outcome.dataset.name},
        "events": outcome.events,
        "result": outcome.result,
    }
    location = {"Location": f"/v1/files/{outcome.fuid}"}
    return _json(result, 201 if outcome.result == "loaded" else 200, location)


def _format(request: Request) -> Format:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    fmt = _FORMATS.get(media)
    if fmt is None:
        shown = repr(media) if media else "missing"
        raise Problem(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"Content-Type {shown} is not accepted for a file's events; use text/csv "
            "(header run_number,event_number,olt_result) or application/x-ndjson.",
        )
    return fmt


def _too_large(limit: int) -> BodyError:
    return BodyError(
        413,
        "upload-too-large",
        "Upload too large",
        f"The file's body exceeds {limit} bytes; nothing was loaded.",
        headers={"Connection": "close"},
    )


async def _body_chunks(request: Request, idle: float, total: float) -> AsyncGenerator[bytes, None]:
    """The body as it arrives; a client silent for ``idle`` seconds, or still sending
    after ``total``, gets 408."""
    stream = request.stream().__aiter__()
    deadline = asyncio.get_running_loop().time() + total
    while True:
        left = deadline - asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(min(idle, left)):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except ClientDisconnect:
            raise BodyError(
                400,
                "body-incomplete",
                "Body incomplete",
                "The connection ended before the body did; nothing was loaded.",
                headers={"Connection": "close"},
            ) from None
        except TimeoutError:
            raise BodyError(
                408,
                "body-timeout",
                "Request body too slow",
                f"No part of the body arrived for {idle:g} seconds, or it was not whole "
                f"within {total:g} seconds; nothing was loaded.",
                headers={"Connection": "close"},
            ) from None
        if chunk:
            yield chunk


@router.post(
    "/datasets",
    response_model=DatasetStatus,
    status_code=201,
    summary="Register a dataset (idempotent)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/DatasetRequest"}}
            },
        }
    },
    responses={
        200: {"model": DatasetStatus, "description": "Already registered the same way"},
        **problem_responses(400, 401, 403, 408, 409, 413, 422, 503),
    },
)
async def register_dataset(
    request: Request, db: DatabaseDep, _: Annotated[Principal, WRITE]
) -> Response:
    body = await read_json(request, DatasetRequest)
    # Acquired after the body is in: a slow client holds no connection.
    async with db.connection() as conn:
        dataset, created = await lifecycle.register(conn, body.model_dump())
    headers = {"Location": f"/v1/datasets/{dataset['id']}"}
    return _json(_shown(dataset), 201 if created else 200, headers)


def _shown(dataset: dict[str, Any]) -> Any:
    return DatasetStatus(**dataset).model_dump(mode="json")


@router.post(
    "/datasets/{dataset}/close",
    response_model=DatasetStatus,
    summary="End a dataset's filling and validate it",
    description=(
        "New files are refused from now on. The consistency check runs: the dataset "
        "becomes `validated` when it is clean (and holds the files expected, if that was "
        "given), or stays `closed` with its problems in `close_report`. Closing a closed "
        "dataset checks it again; a validated one is left as it is."
    ),
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def close_dataset(
    dataset: DatasetRef, db: DatabaseDep, _: Annotated[Principal, WRITE]
) -> Response:
    # The connection is taken only now, after the credential's check: a request with a
    # made-up token never holds one.
    async with db.connection() as conn:
        found = await lifecycle.resolve(conn, dataset)
        closed = await lifecycle.close(conn, found["id"])
    return _json(_shown(closed), 200)


@router.get(
    "/datasets/{dataset}/status",
    response_model=DatasetStatus,
    summary="A dataset's state, files loaded and files expected",
    responses=problem_responses(401, 403, 404, 422, 503),
)
async def dataset_status(
    dataset: DatasetRef, db: DatabaseDep, _: Annotated[Principal, Depends(require("read"))]
) -> Response:
    async with db.connection(read=True) as conn:
        found = await lifecycle.resolve(conn, dataset)
        status = await lifecycle.status(conn, found["id"])
    return _json(_shown(status), 200)
