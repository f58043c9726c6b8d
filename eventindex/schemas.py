"""Request and response models: they validate input and document the API."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from eventindex.config import MAX_EVENT_NUMBER, MAX_RUN_NUMBER
from eventindex.pairs import parse_json_body

RunNumber = Annotated[int, Field(ge=0, le=MAX_RUN_NUMBER, strict=True, examples=[1234])]
EventNumber = Annotated[int, Field(ge=0, le=MAX_EVENT_NUMBER, strict=True, examples=[56789])]


_ASCII_INTEGER = re.compile(r"-?[0-9]+")


def ascii_integer(value: Any) -> Any:
    """A number in a path or query is written with the digits 0-9 only (and a leading minus
    where negatives mean something): no superscript, Arabic-Indic or fullwidth digits, no
    ``1_000``, ``+1`` or spaces, which Python or pydantic would otherwise read as numbers."""
    if isinstance(value, str) and _ASCII_INTEGER.fullmatch(value) is None:
        raise ValueError("must be a whole number written with the digits 0-9")
    return value


# After the Path/Query in an Annotated parameter (placed before it, FastAPI documents
# the bounds under names JSON Schema does not know).
ASCII_DIGITS = BeforeValidator(ascii_integer)


def _integral(value: Any) -> Any:
    """JSON Schema's integer includes ``1234.0``: take an integral float as its int. Still
    no strings or booleans."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# The documented request model: numbers as JSON Schema's integer. The fast path
# (``PlainLookupRequest``) stays strict; a body it rejects is read again with this one.
_RunNumber = Annotated[RunNumber, BeforeValidator(_integral)]
_EventNumber = Annotated[EventNumber, BeforeValidator(_integral)]


class EventRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_number: _RunNumber
    event_number: _EventNumber


def _pair_kind(value: Any) -> str:
    return "object" if isinstance(value, dict | EventRef) else "pair"


PairItem = Annotated[
    Annotated[tuple[_RunNumber, _EventNumber], Tag("pair")] | Annotated[EventRef, Tag("object")],
    Discriminator(_pair_kind),
]


class LookupRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"pairs": [[1234, 56789], [1234, 56790]]},
                {"pairs": [{"run_number": 1234, "event_number": 56789}]},
            ]
        },
    )

    pairs: Annotated[list[PairItem], Field(min_length=1)]

    def columns(self) -> tuple[list[int], list[int]]:
        runs: list[int] = []
        events: list[int] = []
        for p in self.pairs:
            if isinstance(p, tuple):
                runs.append(p[0])
                events.append(p[1])
            else:
                runs.append(p.run_number)
                events.append(p.event_number)
        return runs, events


class PlainLookupRequest(BaseModel):
    """The common shape, ``[[run, event], ...]``, validated without per-item dispatch."""

    model_config = ConfigDict(extra="forbid")

    pairs: Annotated[list[tuple[RunNumber, EventNumber]], Field(min_length=1)]


def parse_lookup_request(body: bytes) -> tuple[list[int], list[int]]:
    """Runs and events of a JSON lookup request; ``JsonBodyError`` naming each bad pair."""
    try:
        plain = PlainLookupRequest.model_validate_json(body)
    except ValidationError:
        # Other item shapes, or an error: the pair parser accepts the one or words the other
        # as it words a bad line (run_number, event_number; the pair's index).
        return parse_json_body(body)
    return [p[0] for p in plain.pairs], [p[1] for p in plain.pairs]


class Event(BaseModel):
    run_number: int
    event_number: int
    fuid_raw: UUID = Field(description="UUID of the raw-data file holding the event")
    dsid_raw: int = Field(description="Dataset id")
    olt_result: int = Field(description="Bitmask of the Online Filter decisions that selected it")


class LookupResult(BaseModel):
    run_number: int
    event_number: int
    found: bool
    fuid_raw: UUID | None
    dsid_raw: int | None
    olt_result: int | None


class LookupSummary(BaseModel):
    requested: int
    found: int
    missing: int


class InvalidLine(BaseModel):
    line: int
    error: str


class LookupResponse(BaseModel):
    results: list[LookupResult] = Field(description="One result per requested pair, in input order")
    summary: LookupSummary
    invalid_lines: list[InvalidLine] | None = Field(
        default=None, description="With invalid=report: the lines skipped, and why"
    )


class Dataset(BaseModel):
    id: int
    name: str
    data_type: str
    description: str
    created_at: datetime


class OltBit(BaseModel):
    bit: int = Field(description="Bit position in olt_result")
    name: str
    description: str


class ProblemDetail(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    pending_migrations: list[str]


DatasetState = Literal["open", "closed", "validated"]


class DatasetSummary(Dataset):
    state: DatasetState = Field(
        default="open", description="open (taking files), closed, or validated (closed, clean)"
    )
    files_expected: int | None = Field(
        default=None, description="files the production said it would report; null: not said"
    )
    n_events: int
    n_files: int = Field(description="files loaded")
    first_run: int | None
    last_run: int | None
    first_loaded_at: datetime | None
    last_loaded_at: datetime | None


class DatasetPage(BaseModel):
    items: list[DatasetSummary]
    next_after: int | None = Field(description="Pass as ?after= for the next page; null at the end")


class FileInfo(BaseModel):
    fuid_raw: UUID
    dsid_raw: int
    run_number: int
    n_events: int
    first_event: int
    last_event: int
    first_loaded_at: datetime
    last_loaded_at: datetime
    dataset: str | None = None


class FileCursor(BaseModel):
    after_run: int
    after_fuid: UUID


class FilePage(BaseModel):
    items: list[FileInfo]
    next: FileCursor | None


class RunSummary(BaseModel):
    run_number: int
    n_events: int
    n_files: int
    datasets: list[int]


class RunPage(BaseModel):
    items: list[RunSummary]
    next_after: int | None


class DecisionCount(BaseModel):
    bit: int
    name: str
    n_events: int


class RunDetail(RunSummary):
    decisions: list[DecisionCount]


class SelectionCount(BaseModel):
    n_events: int
    groups: list[dict[str, int]] | None = None


class Overlap(BaseModel):
    decisions: list[str]
    matrix: list[list[int]] = Field(
        description="matrix[i][j]: events that passed both decision i and decision j"
    )
    n_events: int


class ConsistencyReport(BaseModel):
    model_config = ConfigDict(extra="allow")

    dataset: dict[str, Any]
    status: str
    problems: int


# No "/": a name is a path segment of the API (/v1/datasets/{name}/close).
DATASET_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:+@-]{0,199}$"


class DatasetRequest(BaseModel):
    """A dataset to register. The same request again is answered 200 with the dataset."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        pattern=DATASET_NAME_PATTERN,
        description="unique name (letters, digits, . _ : + @ -; not only digits)",
        examples=["spd-run2026-raw"],
    )
    data_type: str = Field(default="raw", min_length=1, max_length=100, examples=["raw"])
    description: str = Field(default="", max_length=10_000)
    files_expected: Annotated[int, Field(ge=0, le=2**31 - 1, strict=True)] | None = Field(
        default=None, description="files the production will report (checked at close)"
    )
    id: Annotated[int, Field(ge=0, le=MAX_RUN_NUMBER, strict=True)] | None = Field(
        default=None, description="the dataset's id (dsid_raw), if the production has one"
    )

    @field_validator("name")
    @classmethod
    def _not_digits(cls, value: str) -> str:
        if value.isdigit():
            raise ValueError("a dataset name cannot be only digits (it would read as an id)")
        return value


class DatasetStatus(DatasetSummary):
    closed_at: datetime | None = None
    validated_at: datetime | None = None
    close_report: dict[str, Any] | None = Field(
        default=None,
        description="what the last close found: problems, files loaded and expected, and "
        "the consistency report",
    )


class UploadDataset(BaseModel):
    id: int
    name: str


class UploadResult(BaseModel):
    fuid_raw: UUID
    dataset: UploadDataset
    events: int = Field(description="events in the file")
    result: Literal["loaded", "identical", "replaced"] = Field(
        description="loaded (201), identical: already loaded with these events (200), "
        "replaced (200)"
    )
