"""What the catalogue holds: datasets, files, runs, Online Filter counts and overlaps,
selections by decision, and the consistency report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import StreamingResponse

from eventindex import catalogue
from eventindex.auth import require
from eventindex.config import MAX_EVENT_NUMBER, MAX_RUN_NUMBER
from eventindex.deps import DatabaseDep, ReadConnection
from eventindex.problems import Problem, problem_responses
from eventindex.schemas import (
    ASCII_DIGITS,
    ConsistencyReport,
    DatasetPage,
    DatasetSummary,
    FileInfo,
    FilePage,
    OltBit,
    Overlap,
    RunDetail,
    RunPage,
    SelectionCount,
)
from eventindex.streaming import CursorStream

router = APIRouter(prefix="/v1", tags=["catalogue"], dependencies=[Depends(require("read"))])

NDJSON = "application/x-ndjson"
_NIL_UUID = UUID(int=0)
_ERRORS = problem_responses(401, 403, 404, 422, 503)
_NDJSON_DOC: dict[int | str, dict[str, Any]] = {
    200: {"content": {NDJSON: {"schema": {"type": "string"}}}, "description": "NDJSON lines"},
    **_ERRORS,
}


def _op(path: str, method: str = "get") -> str:
    """An OpenAPI link's ``operationRef`` to the operation at ``path``."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _links(**links: tuple[str, dict[str, str]]) -> dict[str, Any]:
    """OpenAPI links of a 200 answer: name -> (target path, parameters from the answer)."""
    return {
        "links": {
            name: {"operationRef": _op(path), "parameters": parameters}
            for name, (path, parameters) in links.items()
        }
    }


def _with_links(
    responses: dict[int | str, dict[str, Any]], **links: tuple[str, dict[str, str]]
) -> dict[int | str, Any]:
    return {200: _links(**links), **responses}


_DATASET = "/v1/datasets/{dataset}"
_FILE = "/v1/files/{fuid}"
_RUN = "/v1/runs/{run}"
_EVENT = "/v1/events/{run_number}/{event_number}"

Run = Annotated[int, Path(ge=0, le=MAX_RUN_NUMBER), ASCII_DIGITS]
DatasetId = Annotated[int, Path(ge=0, le=MAX_RUN_NUMBER), ASCII_DIGITS]
Limit = Annotated[int, Query(ge=1, le=1000), ASCII_DIGITS]
RunMin = Annotated[int | None, Query(ge=0, le=MAX_RUN_NUMBER), ASCII_DIGITS]
DatasetFilter = Annotated[int | None, Query(ge=0, le=MAX_RUN_NUMBER), ASCII_DIGITS]
Bits = Annotated[str | None, Query(max_length=1000, description="decision names, comma-separated")]


@router.get(
    "/datasets",
    response_model=DatasetPage,
    responses=_with_links(
        _ERRORS,
        GetDataset=(_DATASET, {"dataset": "$response.body#/items/0/id"}),
        ListDatasetFiles=(_DATASET + "/files", {"dataset": "$response.body#/items/0/id"}),
        CheckDataset=(_DATASET + "/consistency", {"dataset": "$response.body#/items/0/id"}),
    ),
)
async def list_datasets(
    conn: ReadConnection,
    after: Annotated[int, Query(ge=-1, le=MAX_RUN_NUMBER), ASCII_DIGITS] = -1,
    limit: Limit = 100,
) -> Any:
    """Datasets with event and file counts, run range and load times, by id."""
    items = await catalogue.dataset_page(conn, None, after, limit)
    return {"items": items, "next_after": items[-1]["id"] if len(items) == limit else None}


@router.get("/datasets/{dataset}", response_model=DatasetSummary, responses=_ERRORS)
async def get_dataset(dataset: DatasetId, conn: ReadConnection) -> Any:
    items = await catalogue.dataset_page(conn, dataset, -1, 1)
    if not items:
        raise Problem(404, "dataset-not-found", "Dataset not found", f"No dataset {dataset}.")
    return items[0]


@router.get(
    "/datasets/{dataset}/files",
    response_model=FilePage,
    responses=_with_links(
        _ERRORS,
        GetFile=(_FILE, {"fuid": "$response.body#/items/0/fuid_raw"}),
        ListFileEvents=(_FILE + "/events", {"fuid": "$response.body#/items/0/fuid_raw"}),
    ),
)
async def list_dataset_files(
    dataset: DatasetId,
    conn: ReadConnection,
    after_run: Annotated[int, Query(ge=-1, le=MAX_RUN_NUMBER), ASCII_DIGITS] = -1,
    after_fuid: UUID = _NIL_UUID,
    limit: Limit = 100,
) -> Any:
    """The dataset's files by run, then UUID; pass ``next`` back for the following page."""
    items = await catalogue.dataset_files_page(conn, dataset, after_run, after_fuid, limit)
    last = items[-1] if len(items) == limit else None
    following = {"after_run": last["run_number"], "after_fuid": last["fuid_raw"]} if last else None
    return {"items": items, "next": following}


@router.get("/datasets/{dataset}/consistency", response_model=ConsistencyReport, responses=_ERRORS)
async def dataset_consistency(
    dataset: DatasetId,
    conn: ReadConnection,
    gaps: bool = False,
    limit: Limit = 100,
) -> Any:
    """Files whose recorded event count differs from the events found, conflicting
    duplicates the loader skipped, loads that met duplicates, and (``gaps=true``) gaps in
    event numbering per run. Scans the dataset's events."""
    return await catalogue.consistency(conn, dataset, gaps, limit)


@router.get(
    "/files/{fuid}",
    response_model=FileInfo,
    responses=_with_links(
        _ERRORS,
        ListFileEvents=(_FILE + "/events", {"fuid": "$response.body#/fuid_raw"}),
        GetRun=(_RUN, {"run": "$response.body#/run_number"}),
        GetDataset=(_DATASET, {"dataset": "$response.body#/dsid_raw"}),
        GetFirstEvent=(
            _EVENT,
            {
                "run_number": "$response.body#/run_number",
                "event_number": "$response.body#/first_event",
            },
        ),
    ),
)
async def get_file(fuid: UUID, conn: ReadConnection) -> Any:
    return await catalogue.file_info(conn, fuid)


@router.get("/files/{fuid}/events", response_class=StreamingResponse, responses=_NDJSON_DOC)
async def file_events(fuid: UUID, conn: ReadConnection, db: DatabaseDep) -> CursorStream:
    """The file's events (run, event, decisions) as NDJSON, in event order."""
    return catalogue.file_events(db.reads, await catalogue.file_info(conn, fuid))


@router.get(
    "/runs",
    response_model=RunPage,
    responses=_with_links(_ERRORS, GetRun=(_RUN, {"run": "$response.body#/items/0/run_number"})),
)
async def list_runs(
    conn: ReadConnection,
    after: Annotated[int, Query(ge=-1, le=MAX_RUN_NUMBER), ASCII_DIGITS] = -1,
    dataset: DatasetFilter = None,
    limit: Limit = 100,
) -> Any:
    """Runs with their event and file counts and datasets, by run number."""
    items = await catalogue.run_page(conn, after, dataset, limit)
    return {"items": items, "next_after": items[-1]["run_number"] if len(items) == limit else None}


@router.get(
    "/runs/{run}",
    response_model=RunDetail,
    responses=_with_links(
        _ERRORS, GetDataset=(_DATASET, {"dataset": "$response.body#/datasets/0"})
    ),
)
async def get_run(run: Run, conn: ReadConnection) -> Any:
    """A run's counts, and how many of its events each Online Filter decision selected."""
    return await catalogue.run_detail(conn, run)


@dataclass(frozen=True)
class SelectionQuery:
    """The scope and bit expression of a selection, from the query string."""

    run_min: int | None
    run_max: int | None
    dataset: int | None
    all: str | None
    any: str | None
    none: str | None

    async def resolve(self, conn: Any) -> tuple[catalogue.Scope, catalogue.BitExpression]:
        names = await catalogue.bit_names(conn)
        bits = catalogue.BitExpression(
            catalogue.parse_bits(names, self.all, "all"),
            catalogue.parse_bits(names, self.any, "any"),
            catalogue.parse_bits(names, self.none, "none"),
        )
        scope = await catalogue.make_scope(conn, self.run_min, self.run_max, self.dataset)
        return scope, bits


async def selection_query(
    run_min: RunMin = None,
    run_max: RunMin = None,
    dataset: DatasetFilter = None,
    all: Bits = None,
    any: Bits = None,
    none: Bits = None,
) -> SelectionQuery:
    # A coroutine: a class given to Depends() is built in the thread pool.
    return SelectionQuery(run_min, run_max, dataset, all, any, none)


SelectionDep = Annotated[SelectionQuery, Depends(selection_query)]


@router.get("/selection/count", response_model=SelectionCount, responses=_ERRORS)
async def selection_count(
    selection: SelectionDep,
    conn: ReadConnection,
    group_by: Literal["none", "run", "dataset"] = "none",
) -> Any:
    """How many events of a run range and/or dataset passed every decision of ``all``, at
    least one of ``any`` and none of ``none``; optionally per run or dataset. From the
    summaries: no scan of events."""
    scope, bits = await selection.resolve(conn)
    return await catalogue.selection_count(conn, scope, bits, group_by)


@router.get("/selection/events", response_class=StreamingResponse, responses=_NDJSON_DOC)
async def selection_events(
    selection: SelectionDep,
    conn: ReadConnection,
    db: DatabaseDep,
    after_run: Annotated[int, Query(ge=-1, le=MAX_RUN_NUMBER), ASCII_DIGITS] = -1,
    after_event: Annotated[int, Query(ge=-1, le=MAX_EVENT_NUMBER), ASCII_DIGITS] = -1,
) -> CursorStream:
    """The selected events as NDJSON in (run, event) order; to resume, pass the last
    delivered run and event as ``after_run``/``after_event``. Scans the run range."""
    scope, bits = await selection.resolve(conn)
    return catalogue.selection_events(db.reads, scope, bits, after_run, after_event)


@router.get("/online-filter/overlap", response_model=Overlap, responses=_ERRORS)
async def decision_overlap(
    conn: ReadConnection,
    run_min: RunMin = None,
    run_max: RunMin = None,
    dataset: DatasetFilter = None,
) -> Any:
    """How many events passed each pair of Online Filter decisions (the diagonal: each
    decision alone). From the summaries."""
    scope = await catalogue.make_scope(conn, run_min, run_max, dataset)
    return await catalogue.overlap(conn, scope)


@router.get(
    "/online-filter/bits",
    response_model=list[OltBit],
    summary="The Online Filter decisions: the bits of olt_result",
    responses=problem_responses(401, 403, 503),
)
async def list_olt_bits(conn: ReadConnection) -> Any:
    return await catalogue.olt_bits(conn)
