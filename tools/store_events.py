"""Load datasets and events into the EventIndex catalogue with PostgreSQL COPY.

    python -m tools.store_events PATH [PATH ...] [--database-url URL]
                                 [--on-conflict fail|skip] [--conflicts-report FILE]
                                 [--datasets FILE]

PATH is a generator output directory (its datasets.csv first, then every
events*.csv[.gz] in name order), a datasets CSV (header starting ``id,name``),
an events CSV (plain or gzip), or ``-`` for events CSV on standard input.

Guarantees:

- One invocation is one transaction: if anything fails, the database is left
  exactly as it was, and the error names the file, line, column and value.
- Every event's dataset exists (checked in bulk over each file, not per row).
- Duplicates: a row whose run and event are already in the catalogue (or
  earlier in the file) with the same file, dataset and decisions is skipped and
  counted, so loading the same file twice changes nothing and says so. A
  conflicting duplicate (same run and event, anything else different) stops the
  load, naming it; with ``--on-conflict skip`` it is skipped instead, recorded
  in the ``load_conflicts`` table and, with ``--conflicts-report``, in a CSV.

Each events file is first copied straight into ``events`` (the fast path, at
the speed of COPY into the indexed table); only when that meets a duplicate or
an unknown dataset is it rolled back to a savepoint and loaded again through a
staging table that classifies every row.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import hashlib
import os
import re
import sys
import tempfile
import time
import uuid
import zlib
from array import array
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BufferedIOBase
from pathlib import Path
from typing import IO, Any

import asyncpg

from eventindex import queries, sharding
from eventindex.db import (
    CONNECT_ERRORS,
    UNAVAILABLE_ERRORS,
    connect,
    copy_unless_lost,
    describe_connect_error,
)

READ_SIZE = 1 << 20
_URL_VARIABLE = "EVENTINDEX_DATABASE_URL"
GZIP_MAGIC = b"\x1f\x8b"
_COPY_CONTEXT = re.compile(r"COPY \w+, line (\d+)(?:, column (\w+)(?:: \"(.*)\")?)?", re.S)


class LoadError(Exception):
    """A load that cannot go on; the message is one line for the user."""


# --- sources ---------------------------------------------------------------------------


class Source:
    """An input file (or stdin) that can be read twice: once fast, once carefully."""

    def __init__(self, name: str, path: Path | None, line_map: array[int] | None = None) -> None:
        self.name = name
        self.path = path
        # For a shard's part of a file: the original line of each of its data rows.
        self.line_map = line_map
        self._tee: IO[bytes] | None = None
        self._stdin_done = False
        self._decompressor: Any = None

    def line(self, line: int) -> int:
        """The line of the original file that line ``line`` of this one is."""
        if self.line_map is None or line < 2:
            return line
        return int(self.line_map[line - 2])

    @property
    def size(self) -> int | None:
        return self.path.stat().st_size if self.path is not None else None

    def _open(self) -> tuple[BufferedIOBase, BufferedIOBase]:
        """(the raw file, for progress; the decompressed data)."""
        assert self.path is not None
        raw = self.path.open("rb")
        if raw.read(2) == GZIP_MAGIC:
            raw.seek(0)
            return raw, gzip.GzipFile(fileobj=raw, mode="rb")
        raw.seek(0)
        return raw, raw

    def chunks(self, progress: Progress | None = None) -> Iterator[bytes]:
        if self.path is None:
            yield from self._stdin_chunks(progress)
            return
        raw, data = self._open()
        with raw, data:
            while chunk := data.read(READ_SIZE):
                if progress:
                    progress.update(raw.tell(), chunk.count(b"\n"))
                yield chunk

    def _stdin_chunks(self, progress: Progress | None) -> Iterator[bytes]:
        # Standard input can be read once: what has been read is kept in a temporary
        # file, and every pass replays that before it reads on.
        if self._tee is None:
            self._tee = tempfile.TemporaryFile(prefix="eventindex-load-")  # noqa: SIM115
        tee = self._tee
        tee.seek(0)
        while chunk := tee.read(READ_SIZE):
            if progress:
                progress.update(None, chunk.count(b"\n"))
            yield chunk
        stream = sys.stdin.buffer
        while not self._stdin_done:
            raw = stream.read(READ_SIZE)
            if self._decompressor is None and raw[:2] == GZIP_MAGIC and tee.tell() == 0:
                self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            if not raw:
                self._stdin_done = True
                data = self._decompressor.flush() if self._decompressor else b""
            else:
                data = self._decompressor.decompress(raw) if self._decompressor else raw
            tee.seek(0, os.SEEK_END)
            tee.write(data)
            if progress:
                progress.update(None, data.count(b"\n"))
            if data:
                yield data

    def close(self) -> None:
        if self._tee is not None:
            self._tee.close()


def header_columns(
    source: Source, expected: tuple[str, ...], required: tuple[str, ...]
) -> list[str]:
    """The file's columns, from its first line, checked against the table's."""
    first = b""
    for chunk in source.chunks():
        first += chunk
        if b"\n" in first or len(first) > 4096:
            break
    line = first.split(b"\n", 1)[0].decode("utf-8", "replace").strip().lstrip("\ufeff")
    if not line:
        raise LoadError(f"{source.name}: line 1: the file is empty (expected a header)")
    columns = [c.strip() for c in line.split(",")]
    unknown = [c for c in columns if c not in expected]
    if unknown:
        raise LoadError(
            f"{source.name}: line 1: unknown column {unknown[0]!r} "
            f"(expected a header of {','.join(expected)})"
        )
    missing = [c for c in required if c not in columns]
    if missing:
        raise LoadError(f"{source.name}: line 1: missing column {missing[0]!r}")
    if len(set(columns)) != len(columns):
        raise LoadError(f"{source.name}: line 1: a column is named twice")
    return columns


# --- progress --------------------------------------------------------------------------


class Progress:
    """Rows, rows/s and ETA: a live line on a terminal, a log line now and then otherwise."""

    def __init__(
        self, name: str, total_bytes: int | None, stream: IO[str], interval: float
    ) -> None:
        self.name = name
        self.total = total_bytes
        self.stream = stream
        self.tty = stream.isatty()
        self.interval = 0.2 if self.tty else interval
        self.rows = 0
        self.position = 0
        self.started = time.monotonic()
        self.last = self.started
        self.shown = False

    def update(self, position: int | None, rows: int) -> None:
        self.rows += rows
        if position is not None:
            self.position = position
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._show(now)

    def _show(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.rows / elapsed
        text = f"{self.name}: {self.rows:,} rows, {rate:,.0f} rows/s"
        if self.total and self.position:
            fraction = min(self.position / self.total, 1.0)
            eta = elapsed * (1 - fraction) / max(fraction, 1e-9)
            text += f", {fraction:.0%}, ETA {eta:,.0f} s"
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        if self.tty and self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


# --- loading ---------------------------------------------------------------------------


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


def distinct_runs(source: Source, columns: list[str]) -> set[int]:
    """Every run number in an events file (values that are not numbers are left to COPY)."""
    index = columns.index("run_number")
    field = re.compile(rb"^(?:[^,\n]*,){%d}[ \t]*(\d{1,10})[ \t]*(?:,|\r?$)" % index, re.M)
    runs: set[int] = set()
    rest = b""
    first = True
    for chunk in source.chunks():
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        data, rest = data[:cut], data[cut:]
        if first and data:
            data = data[data.find(b"\n") + 1 :]  # the header
            first = False
        runs.update(int(r) for r in set(field.findall(data)))
    runs.update(int(r) for r in set(field.findall(rest)))
    return {r for r in runs if r <= 2**31 - 1}


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
        columns = header_columns(source, queries.DATASET_COLUMNS, ("id", "name"))
        async with self.conn.transaction():
            await self.conn.execute(queries.CREATE_DATASET_STAGE)
            try:
                await self._copy("dataset_stage", source, columns)
            except asyncpg.DataError as exc:
                raise _copy_error(source, exc) from None
            bad = await self.conn.fetchrow(queries.DATASET_BAD_ROW)
            if bad is not None:
                raise LoadError(
                    f"{source.name}: line {bad['line'] + 1}: a dataset needs an id >= 0 and a name"
                )
            clash = await self.conn.fetchrow(queries.DATASET_CONFLICT)
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
            inserted = _count(await self.conn.execute(queries.INSERT_DATASETS))
            await self.conn.execute("DROP TABLE dataset_stage")
        return inserted

    async def load_events(self, source: Source, *, retry_partitions: bool = False) -> FileResult:
        columns = header_columns(source, queries.EVENT_COLUMNS, queries.EVENT_COLUMNS)
        started = time.monotonic()
        started_at = datetime.now(UTC)
        digest = hashlib.sha256()
        await self.conn.execute(queries.LOAD_WORK_MEM, self.work_mem)
        try:
            async with self.conn.transaction():
                rows = await self._copy("events", source, columns, digest) - 1
                if self.record:
                    await self.conn.fetchval(
                        queries.RECORD_LOAD,
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
                await self.conn.fetchval(
                    queries.ADD_PARTITIONS, sorted(distinct_runs(source, columns))
                )
                return await self.load_events(source, retry_partitions=True)
            # Run numbers the quick scan could not read (quoted, say): the careful path
            # makes partitions from what COPY parsed.
        return await self._load_carefully(source, columns, started, started_at)

    async def _load_carefully(
        self, source: Source, columns: list[str], started: float, started_at: datetime
    ) -> FileResult:
        digest = hashlib.sha256()
        conn = self.conn
        stage = queries.private_stage if self.private_stage else (lambda sql: sql)
        async with conn.transaction():
            if self.private_stage:
                await self._open_private_stage()
            await conn.execute(stage(queries.CREATE_EVENT_STAGE))
            try:
                rows = await self._copy("event_stage", source, columns, digest) - 1
            except asyncpg.DataError as exc:
                raise _copy_error(source, exc) from None
            rows = await conn.fetchval("SELECT count(*) FROM event_stage")
            bad = await conn.fetchrow(queries.EVENT_BAD_ROW)
            if bad is not None:
                raise LoadError(
                    f"{source.name}: line {source.line(bad['line'] + 1)}: "
                    "a value is missing or negative "
                    f"({', '.join(f'{k}={bad[k]}' for k in queries.EVENT_COLUMNS)})"
                )
            unknown = await conn.fetchrow(queries.EVENT_UNKNOWN_DATASET)
            if unknown is not None:
                raise LoadError(
                    f"{source.name}: line {source.line(unknown['line'] + 1)}, "
                    "column dsid_raw, value "
                    f"'{unknown['dsid_raw']}': dataset {unknown['dsid_raw']} does not exist "
                    "(load its datasets.csv first)"
                )
            await conn.execute(stage(queries.CREATE_EVENT_DUPLICATES))
            counts = await conn.fetchrow(queries.DUPLICATE_COUNTS)
            assert counts is not None
            identical, conflicts = int(counts["identical"]), int(counts["conflicting"])
            duplicate_datasets: list[int] = await conn.fetchval(queries.DUPLICATE_DATASETS)
            if conflicts and self.on_conflict == "fail":
                first = await conn.fetch(queries.FIRST_CONFLICTS, 1)
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
            await conn.fetchval(queries.ADD_PARTITIONS_FOR_STAGE)
            inserted = _count(await conn.execute(queries.INSERT_STAGED_EVENTS))
            load_id = previous = None
            conflict_rows: list[tuple[Any, ...]] = []
            if self.record:
                load_id = await conn.fetchval(
                    queries.RECORD_LOAD,
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
                    await conn.execute(queries.RECORD_CONFLICTS, load_id)
                    if self.report is not None:
                        await self._write_report(source)
                previous = await conn.fetchval(queries.PREVIOUS_LOAD, digest.hexdigest())
            elif conflicts:
                conflict_rows = [
                    (source.line(r["line"] + 1), *list(r.values())[1:])
                    for r in await conn.fetch(queries.ALL_CONFLICTS)
                ]
            await conn.execute("DROP TABLE event_duplicates; DROP TABLE event_stage")
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
        self._search_path = await self.conn.fetchval(queries.SEARCH_PATH)
        await self.conn.execute(
            queries.CREATE_STAGE_SCHEMA.format(schema=queries.ident(self._stage_schema))
        )
        await self.conn.execute(queries.OPEN_PRIVATE_STAGE, self._stage_schema)

    async def _close_private_stage(self) -> None:
        await self.conn.execute(
            queries.CLOSE_PRIVATE_STAGE.format(schema=queries.ident(self._stage_schema))
        )
        await self.conn.execute(queries.RESTORE_SEARCH_PATH, self._search_path)

    async def _write_report(self, source: Source) -> None:
        assert self.report is not None
        rows = [
            (source.line(r["line"] + 1), *list(r.values())[1:])
            async for r in self.conn.cursor(queries.ALL_CONFLICTS)
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


# --- command line ----------------------------------------------------------------------


def is_datasets_file(path: Path) -> bool:
    opener = gzip.open if path.read_bytes()[:2] == GZIP_MAGIC else open
    with opener(path, "rb") as f:
        head = f.readline(4096).lstrip(b"\xef\xbb\xbf")
    return head.startswith(b"id,name")


def plan(paths: list[str], datasets: str | None) -> tuple[list[Source], list[Source]]:
    """(datasets files, events files) to load, in order."""
    dataset_sources: list[Source] = []
    event_sources: list[Source] = []
    if datasets:
        path = Path(datasets)
        dataset_sources.append(Source(str(path), path))
    for arg in paths:
        if arg == "-":
            event_sources.append(Source("<stdin>", None))
            continue
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if re.fullmatch(r"events.*\.csv(\.gz)?", p.name)
            )
            ds = path / "datasets.csv"
            if ds.is_file():
                dataset_sources.append(Source(str(ds), ds))
            if not found and not ds.is_file():
                raise LoadError(f"{arg}: no datasets.csv or events*.csv in this directory")
            event_sources += [Source(str(p), p) for p in found]
        elif path.is_file():
            target = dataset_sources if is_datasets_file(path) else event_sources
            target.append(Source(str(path), path))
        else:
            raise LoadError(f"{arg}: no such file or directory")
    return dataset_sources, event_sources


async def run(args: argparse.Namespace) -> int:
    dataset_sources, event_sources = plan(args.paths, args.datasets)
    # With "gen_data --out - --datasets-out F | store_events - --datasets F" the datasets
    # file is complete once the events start to flow: wait for them before reading it.
    for source in event_sources:
        if source.path is None:
            header_columns(source, queries.EVENT_COLUMNS, queries.EVENT_COLUMNS)
    for source in dataset_sources:
        if source.path is not None and not source.path.is_file():
            raise LoadError(f"{source.name}: no such file")
    url = args.database_url or os.environ.get(_URL_VARIABLE)
    if not url:
        raise LoadError("no database: set EVENTINDEX_DATABASE_URL or pass --database-url")
    try:
        conn = await connect(url, timeout=10)
    except CONNECT_ERRORS as exc:
        why = describe_connect_error(exc, url)
        raise LoadError(f"cannot connect to the database: {why}") from None
    report = Path(args.conflicts_report) if args.conflicts_report else None
    loader = Loader(
        conn,
        on_conflict=args.on_conflict,
        report=report,
        progress_interval=args.progress_interval,
    )
    results: list[FileResult] = []
    try:
        if await sharding.is_coordinator(conn):
            results = await load_sharded(loader, dataset_sources, event_sources)
            return _print_results(results)
        async with conn.transaction():
            for source in dataset_sources:
                n = await loader.load_datasets(source)
                print(f"{source.name}: {n} new datasets")
            for source in event_sources:
                results.append(await loader.load_events(source))
    except asyncpg.UndefinedTableError:
        raise LoadError("the database is not migrated: run 'eventindex migrate'") from None
    except asyncpg.PostgresError as exc:
        raise LoadError(f"the database refused: {str(exc).splitlines()[0]}") from None
    except sharding.PartialCommit:
        raise
    except sharding.ShardingError as exc:
        raise LoadError(str(exc)) from None
    finally:
        for source in [*dataset_sources, *event_sources]:
            source.close()
        await conn.close()
    return _print_results(results)


def _print_results(results: list[FileResult]) -> int:
    for result in results:
        print(result.summary())
    return 0


# --- sharded catalogues ------------------------------------------------------------------


class ShardParts:
    """An events file split by shard: a CSV file per shard holding that shard's rows,
    and for each of its rows the line it had in the original file."""

    def __init__(self, source: Source, columns: list[str], shard_map: sharding.ShardMap) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.rows = 0
        self._index = columns.index("run_number")
        self._map = shard_map
        self._shard_of_run: dict[bytes, str] = {}
        self._header = b""
        self.files: dict[str, IO[bytes]] = {}
        self.lines: dict[str, array[int]] = {}

    def _shard(self, line: bytes) -> str:
        fields = line.split(b",", self._index + 1)
        # COPY accepts a quoted number too: route it by its value.
        key = fields[self._index].strip().strip(b'"').strip() if len(fields) > self._index else b""
        name = self._shard_of_run.get(key)
        if name is None:
            try:
                name = self._map.shard_of(int(key)).name
            except ValueError:
                # Not a run number: any shard's COPY will name the line and value.
                name = self._map.slots[0]
            self._shard_of_run[key] = name
        return name

    def split(self) -> None:
        rest = b""
        number = 0
        for chunk in self.source.chunks():
            self.digest.update(chunk)
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            for line in data[:cut].split(b"\n")[:-1]:
                number += 1
                self._add(number, line + b"\n")
        if rest:
            self._add(number + 1, rest + b"\n")

    def _add(self, number: int, line: bytes) -> None:
        if number == 1:
            self._header = line
            return
        if not line.strip():
            return
        self.rows += 1
        name = self._shard(line)
        out = self.files.get(name)
        if out is None:
            out = self.files[name] = tempfile.TemporaryFile(prefix="eventindex-shard-")  # noqa: SIM115
            out.write(self._header)
            self.lines[name] = array("q")
        out.write(line)
        self.lines[name].append(number)

    def sources(self) -> dict[str, Source]:
        parts: dict[str, Source] = {}
        for name, out in self.files.items():
            out.flush()
            out.seek(0)
            path = Path(f"/dev/fd/{out.fileno()}")
            parts[name] = Source(self.source.name, path, self.lines[name])
        return parts

    def close(self) -> None:
        for out in self.files.values():
            out.close()


async def load_sharded(
    loader: Loader, dataset_sources: list[Source], event_sources: list[Source]
) -> list[FileResult]:
    """Datasets to the coordinator (and copies to every shard); each events file split by
    the shard map, every shard loading its part with the usual checks; the loads recorded
    on the coordinator; all of it one two-phase commit over every server."""
    coordinator = loader.conn
    results: list[FileResult] = []
    commit = sharding.TwoPhase()
    await commit.begin("the coordinator", coordinator, decides=True)
    try:
        # The map cannot change under the load (a slot move waits for it to end).
        await coordinator.execute(queries.LOCK_SHARD_MAP_SHARED)
        shard_map = await sharding.ShardMap.load(coordinator)
        async with sharding.shard_connections(shard_map) as conns:
            for name, conn in conns.items():
                await commit.begin(f"shard {name}", conn)
                # Loads wait for each other's locks on several servers, where no deadlock
                # detector sees them all: a wait this long fails the load instead.
                await conn.execute(queries.SHARD_LOAD_LOCK_TIMEOUT)
            for source in dataset_sources:
                n = await loader.load_datasets(source)
                print(f"{source.name}: {n} new datasets")
            for conn in conns.values():
                await sharding.sync_datasets(coordinator, conn)
            for source in event_sources:
                results.append(await _load_sharded_file(loader, source, conns, shard_map))
            await commit.commit()
    except BaseException:
        await commit.rollback()  # (nothing left to roll back once commit() has run)
        raise
    return results


async def _load_sharded_file(
    loader: Loader,
    source: Source,
    conns: dict[str, asyncpg.Connection],
    shard_map: sharding.ShardMap,
) -> FileResult:
    started, started_at = time.monotonic(), datetime.now(UTC)
    columns = header_columns(source, queries.EVENT_COLUMNS, queries.EVENT_COLUMNS)
    parts = ShardParts(source, columns, shard_map)
    try:
        parts.split()
        total = FileResult(source.name, parts.rows, 0, 0, 0, 0.0)
        for name, part in sorted(parts.sources().items()):
            shard_loader = Loader(
                conns[name],
                on_conflict=loader.on_conflict,
                progress_stream=loader.progress_stream,
                progress_interval=loader.progress_interval,
                record=False,
                private_stage=True,
            )
            try:
                result = await shard_loader.load_events(part)
            except asyncpg.PostgresError as exc:
                first = str(exc).splitlines()[0]
                raise LoadError(f"{source.name}: shard {name}: {first}") from None
            total.inserted += result.inserted
            total.identical += result.identical
            total.conflicts += result.conflicts
            total.conflict_rows += result.conflict_rows
            total.duplicate_datasets |= result.duplicate_datasets
    finally:
        parts.close()
    coordinator = loader.conn
    digest = parts.digest.hexdigest()
    load_id = await coordinator.fetchval(
        queries.RECORD_LOAD,
        source.name,
        digest,
        total.rows,
        total.inserted,
        total.identical,
        total.conflicts,
        started_at,
        sorted(total.duplicate_datasets),
    )
    total.conflict_rows.sort(key=lambda row: row[0])
    if total.conflict_rows:
        await coordinator.executemany(
            queries.RECORD_CONFLICT_ROW,
            # Recorded as the single-server loader does: the number of the data row.
            [(load_id, row[0] - 1, *row[1:]) for row in total.conflict_rows],
        )
        if loader.report is not None:
            write_report(loader.report, source.name, total.conflict_rows)
    previous = await coordinator.fetchval(queries.PREVIOUS_LOAD, digest)
    total.previous_load = previous if previous != load_id else None
    total.seconds = time.monotonic() - started
    return total


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.store_events",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="directory, CSV file, or - (stdin)")
    p.add_argument("--database-url", help="PostgreSQL URL (default: EVENTINDEX_DATABASE_URL)")
    p.add_argument("--datasets", metavar="FILE", help="a datasets CSV to load first")
    p.add_argument(
        "--on-conflict",
        choices=("fail", "skip"),
        default="fail",
        help="a conflicting duplicate stops the load (fail, default) or is skipped (skip)",
    )
    p.add_argument("--conflicts-report", metavar="FILE", help="with skip: append conflicts here")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="seconds between progress lines when not on a terminal (default 10)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.conflicts_report and args.on_conflict != "skip":
        parser.exit(2, "store_events: error: --conflicts-report goes with --on-conflict skip\n")
    started = time.monotonic()
    try:
        code = asyncio.run(run(args))
    except LoadError as exc:
        print(f"store_events: error: {exc}; nothing was loaded", file=sys.stderr)
        return 1
    except sharding.PartialCommit as exc:
        print(f"store_events: error: the load is decided but {exc}", file=sys.stderr)
        return 1
    except (*UNAVAILABLE_ERRORS,) as exc:
        why = describe_connect_error(exc, args.database_url or os.environ.get(_URL_VARIABLE, ""))
        print(f"store_events: error: lost the database: {why}; nothing was loaded", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("store_events: interrupted; nothing was loaded", file=sys.stderr)
        return 130
    print(f"store_events: done in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
