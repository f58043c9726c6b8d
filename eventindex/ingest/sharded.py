"""Loading into a sharded catalogue: a file split by shard, each part loaded on its shard
in a prepared transaction, the whole recorded on the coordinator (two-phase commit)."""

from __future__ import annotations

import hashlib
import tempfile
import time
from array import array
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import asyncpg

from eventindex import sharding
from eventindex.ingest.loader import FileResult, Loader, write_report
from eventindex.ingest.source import LoadError, Source, header_columns
from eventindex.ingest.statements import (
    EVENT_COLUMNS,
    PREVIOUS_LOAD,
    RECORD_CONFLICT_ROW,
    RECORD_LOAD,
    SHARD_LOAD_LOCK_TIMEOUT,
)
from eventindex.sharding import LOCK_SHARD_MAP_SHARED

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
        await coordinator.execute(LOCK_SHARD_MAP_SHARED)
        shard_map = await sharding.ShardMap.load(coordinator)
        async with sharding.shard_connections(shard_map) as conns:
            for name, conn in conns.items():
                await commit.begin(f"shard {name}", conn)
                # Loads wait for each other's locks on several servers, where no deadlock
                # detector sees them all: a wait this long fails the load instead.
                await conn.execute(SHARD_LOAD_LOCK_TIMEOUT)
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
    columns = header_columns(source, EVENT_COLUMNS, EVENT_COLUMNS)
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
        RECORD_LOAD,
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
            RECORD_CONFLICT_ROW,
            # Recorded as the single-server loader does: the number of the data row.
            [(load_id, row[0] - 1, *row[1:]) for row in total.conflict_rows],
        )
        if loader.report is not None:
            write_report(loader.report, source.name, total.conflict_rows)
    previous = await coordinator.fetchval(PREVIOUS_LOAD, digest)
    total.previous_load = previous if previous != load_id else None
    total.seconds = time.monotonic() - started
    return total
