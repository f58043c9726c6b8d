"""The loading engine: COPY straight into ``events`` (the fast path), or through a staging
table that classifies every row (the careful path), and the conflict report."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import asyncpg

from eventindex import queries
from eventindex.db import (
    copy_unless_lost,
)
from eventindex.ingest.source import LoadError, Progress, Source, distinct_runs, header_columns
from eventindex.ingest.statements import (
    ADD_PARTITIONS,
    ADD_PARTITIONS_FOR_STAGE,
    ALL_CONFLICTS,
    CLOSE_PRIVATE_STAGE,
    COUNT_EVENT_STAGE,
    CREATE_DATASET_STAGE,
    CREATE_EVENT_DUPLICATES,
    CREATE_EVENT_STAGE,
    CREATE_STAGE_SCHEMA,
    DATASET_BAD_ROW,
    DATASET_COLUMNS,
    DATASET_CONFLICT,
    DROP_DATASET_STAGE,
    DROP_EVENT_STAGE,
    DUPLICATE_COUNTS,
    DUPLICATE_DATASETS,
    EVENT_BAD_ROW,
    EVENT_COLUMNS,
    EVENT_UNKNOWN_DATASET,
    FIRST_CONFLICTS,
    INSERT_DATASETS,
    INSERT_STAGED_EVENTS,
    LOAD_WORK_MEM,
    OPEN_PRIVATE_STAGE,
    PREVIOUS_LOAD,
    RECORD_CONFLICTS,
    RECORD_LOAD,
    RESTORE_SEARCH_PATH,
    SEARCH_PATH,
    private_stage,
)

_COPY_CONTEXT = re.compile(r"COPY \w+, line (\d+)(?:, column (\w+)(?:: \"(.*)\")?)?", re.S)


@dataclass
class FileResult:
    name: str
    rows: int
    inserted: int
    identical: int
    conflicts: int
    seconds: float
    previous_load: int | None = None
    careful: bool = False
    # Loads on a shard are recorded by the coordinator: they hand their conflicts over.
    conflict_rows: list[tuple[Any, ...]] = field(default_factory=list)
    duplicate_datasets: set[int] = field(default_factory=set)

    def summary(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        text = (
            f"{self.name}: {self.rows:,} rows, {self.inserted:,} new, "
            f"{self.identical:,} identical duplicates skipped, "
            f"{self.conflicts:,} conflicts skipped "
            f"({self.seconds:.1f} s, {rate:,.0f} rows/s)"
        )
        if self.inserted == 0 and self.conflicts == 0:
            text += ": nothing changed"
            if self.previous_load is not None:
                text += f" (already loaded as load {self.previous_load})"
        return text


def _copy_error(source: Source, exc: asyncpg.PostgresError) -> LoadError:
    """One line naming the line, column and value PostgreSQL objected to."""
    context = getattr(exc, "context", None) or ""
    match = _COPY_CONTEXT.search(context)
    where = f"{source.name}: "
    if match:
        where += f"line {source.line(int(match.group(1)))}"
        if match.group(2):
            where += f", column {match.group(2)}"
        if match.group(3) is not None:
            where += f", value {match.group(3)!r}"
        where += ": "
    message = str(exc).split("\n")[0]
    if isinstance(exc, asyncpg.CheckViolationError):
        message = f"a number is negative ({exc.constraint_name})"
    return LoadError(where + message)


def _needs_partition(exc: Exception) -> bool:
    """A row of a run that no partition of ``events`` holds yet (not a CHECK constraint)."""
    return (
        isinstance(exc, asyncpg.CheckViolationError)
        and getattr(exc, "constraint_name", None) is None
        and getattr(exc, "table_name", None) == "events"
    )


def _count(status: str) -> int:
    return int(status.split()[-1])


@dataclass
class Loader:
    conn: asyncpg.Connection
    on_conflict: str = "fail"
    report: Path | None = None
    progress_stream: IO[str] = sys.stderr
    progress_interval: float = 10.0
    work_mem: str = "1GB"
    # False on a shard: the coordinator records the load (and its conflicts) instead.
    record: bool = True
    # True on a shard: no temporary tables, which two-phase commit forbids.
    private_stage: bool = False
    _stage_schema: str = ""
    _search_path: str = ""

    def _progress(self, source: Source) -> Progress:
        return Progress(source.name, source.size, self.progress_stream, self.progress_interval)

    async def _copy(
        self, table: str, source: Source, columns: list[str], digest: Any = None
    ) -> int:
        progress = self._progress(source)

        async def data() -> AsyncIterator[bytes]:
            for chunk in source.chunks(progress):
                if digest is not None:
                    digest.update(chunk)
                # asyncpg's COPY loop does not yield while the socket takes the data, so
                # a lost connection would go unnoticed (and every later write be logged)
                # until the whole file was read: let the event loop see it now.
                await asyncio.sleep(0)
                if self.conn.is_closed():
                    raise asyncpg.ConnectionDoesNotExistError(
                        "the connection to the database was lost during COPY"
                    )
                yield chunk

        try:
            await copy_unless_lost(
                self.conn,
                self.conn.copy_to_table(
                    table, source=data(), columns=columns, format="csv", header=True
                ),
            )
        finally:
            progress.done()
        return progress.rows

    async def load_datasets(self, source: Source) -> int:
        columns = header_columns(source, DATASET_COLUMNS, ("id", "name"))
        async with self.conn.transaction():
            await self.conn.execute(CREATE_DATASET_STAGE)
            try:
                await self._copy("dataset_stage", source, columns)
            except asyncpg.DataError as exc:
                raise _copy_error(source, exc) from None
            bad = await self.conn.fetchrow(DATASET_BAD_ROW)
            if bad is not None:
                raise LoadError(
                    f"{source.name}: line {bad['line'] + 1}: a dataset needs an id >= 0 and a name"
                )
            clash = await self.conn.fetchrow(DATASET_CONFLICT)
            if clash is not None:
                theirs = (
                    f"line {clash['other_line'] + 1}"
                    if clash["other_line"] is not None
                    else "the catalogue"
                )
                raise LoadError(
                    f"{source.name}: line {clash['line'] + 1}: dataset {clash['id']} "
                    f"{clash['name']!r} conflicts with dataset {clash['other_id']} "
                    f"{clash['other_name']!r} in {theirs}"
                )
            inserted = _count(await self.conn.execute(INSERT_DATASETS))
            await self.conn.execute(DROP_DATASET_STAGE)
        return inserted

    async def load_events(self, source: Source, *, retry_partitions: bool = False) -> FileResult:
        columns = header_columns(source, EVENT_COLUMNS, EVENT_COLUMNS)
        started = time.monotonic()
        started_at = datetime.now(UTC)
        digest = hashlib.sha256()
        await self.conn.execute(LOAD_WORK_MEM, self.work_mem)
        try:
            async with self.conn.transaction():
                rows = await self._copy("events", source, columns, digest) - 1
                if self.record:
                    await self.conn.fetchval(
                        RECORD_LOAD,
                        source.name,
                        digest.hexdigest(),
                        rows,
                        rows,
                        0,
                        0,
                        started_at,
                        [],
                    )
            return FileResult(source.name, rows, rows, 0, 0, time.monotonic() - started)
        except (asyncpg.UniqueViolationError, asyncpg.ForeignKeyViolationError):
            pass  # rolled back to the savepoint: classify every row
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            if not _needs_partition(exc):
                raise _copy_error(source, exc) from None
            if not retry_partitions:
                # New runs: make their partitions (all of the file's at once), then again.
                await self.conn.fetchval(ADD_PARTITIONS, sorted(distinct_runs(source, columns)))
                return await self.load_events(source, retry_partitions=True)
            # Run numbers the quick scan could not read (quoted, say): the careful path
            # makes partitions from what COPY parsed.
        return await self._load_carefully(source, columns, started, started_at)

    async def _load_carefully(
        self, source: Source, columns: list[str], started: float, started_at: datetime
    ) -> FileResult:
        digest = hashlib.sha256()
        conn = self.conn
        stage = private_stage if self.private_stage else (lambda sql: sql)
        async with conn.transaction():
            if self.private_stage:
                await self._open_private_stage()
            await conn.execute(stage(CREATE_EVENT_STAGE))
            try:
                rows = await self._copy("event_stage", source, columns, digest) - 1
            except asyncpg.DataError as exc:
                raise _copy_error(source, exc) from None
            rows = await conn.fetchval(COUNT_EVENT_STAGE)
            bad = await conn.fetchrow(EVENT_BAD_ROW)
            if bad is not None:
                raise LoadError(
                    f"{source.name}: line {source.line(bad['line'] + 1)}: "
                    "a value is missing or negative "
                    f"({', '.join(f'{k}={bad[k]}' for k in EVENT_COLUMNS)})"
                )
            unknown = await conn.fetchrow(EVENT_UNKNOWN_DATASET)
            if unknown is not None:
                raise LoadError(
                    f"{source.name}: line {source.line(unknown['line'] + 1)}, "
                    "column dsid_raw, value "
                    f"'{unknown['dsid_raw']}': dataset {unknown['dsid_raw']} does not exist "
                    "(load its datasets.csv first)"
                )
            await conn.execute(stage(CREATE_EVENT_DUPLICATES))
            counts = await conn.fetchrow(DUPLICATE_COUNTS)
            assert counts is not None
            identical, conflicts = int(counts["identical"]), int(counts["conflicting"])
            duplicate_datasets: list[int] = await conn.fetchval(DUPLICATE_DATASETS)
            if conflicts and self.on_conflict == "fail":
                first = await conn.fetch(FIRST_CONFLICTS, 1)
                c = first[0]
                raise LoadError(
                    f"{source.name}: line {source.line(c['line'] + 1)}: conflicting duplicate: run "
                    f"{c['run_number']} event {c['event_number']} is in file "
                    f"{c['kept_fuid_raw']} (dataset {c['kept_dsid_raw']}, "
                    f"olt {c['kept_olt_result']})"
                    f", this line says file {c['fuid_raw']} (dataset {c['dsid_raw']}, olt "
                    f"{c['olt_result']}); {conflicts:,} conflicting rows in all "
                    "(--on-conflict skip skips and reports them)"
                )
            await conn.fetchval(ADD_PARTITIONS_FOR_STAGE)
            inserted = _count(await conn.execute(INSERT_STAGED_EVENTS))
            load_id = previous = None
            conflict_rows: list[tuple[Any, ...]] = []
            if self.record:
                load_id = await conn.fetchval(
                    RECORD_LOAD,
                    source.name,
                    digest.hexdigest(),
                    rows,
                    inserted,
                    identical,
                    conflicts,
                    started_at,
                    duplicate_datasets,
                )
                if conflicts:
                    await conn.execute(RECORD_CONFLICTS, load_id)
                    if self.report is not None:
                        await self._write_report(source)
                previous = await conn.fetchval(PREVIOUS_LOAD, digest.hexdigest())
            elif conflicts:
                conflict_rows = [
                    (source.line(r["line"] + 1), *list(r.values())[1:])
                    for r in await conn.fetch(ALL_CONFLICTS)
                ]
            await conn.execute(DROP_EVENT_STAGE)
            if self.private_stage:
                await self._close_private_stage()
        return FileResult(
            source.name,
            rows,
            inserted,
            identical,
            conflicts,
            time.monotonic() - started,
            previous_load=previous if previous != load_id else None,
            careful=True,
            conflict_rows=conflict_rows,
            duplicate_datasets=set(duplicate_datasets),
        )

    async def _open_private_stage(self) -> None:
        self._stage_schema = f"eventindex_load_{uuid.uuid4().hex}"
        self._search_path = await self.conn.fetchval(SEARCH_PATH)
        await self.conn.execute(
            CREATE_STAGE_SCHEMA.format(schema=queries.ident(self._stage_schema))
        )
        await self.conn.execute(OPEN_PRIVATE_STAGE, self._stage_schema)

    async def _close_private_stage(self) -> None:
        await self.conn.execute(
            CLOSE_PRIVATE_STAGE.format(schema=queries.ident(self._stage_schema))
        )
        await self.conn.execute(RESTORE_SEARCH_PATH, self._search_path)

    async def _write_report(self, source: Source) -> None:
        assert self.report is not None
        rows = [
            (source.line(r["line"] + 1), *list(r.values())[1:])
            async for r in self.conn.cursor(ALL_CONFLICTS)
        ]
        write_report(self.report, source.name, rows)


REPORT_COLUMNS = (
    "source",
    "line",
    "run_number",
    "event_number",
    "olt_result",
    "dsid_raw",
    "fuid_raw",
    "kept_olt_result",
    "kept_dsid_raw",
    "kept_fuid_raw",
)


def write_report(path: Path, name: str, rows: list[tuple[Any, ...]]) -> None:
    """Append conflicting duplicates (line first) to the CSV report."""
    new_file = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f)
        if new_file:
            writer.writerow(REPORT_COLUMNS)
        writer.writerows([name, *row] for row in rows)
