"""Group commit of uploaded files: the uploads that arrive together are written by one
transaction (one COPY when they are all good), and each request is answered when its
group has committed.

Every file stays all or nothing: when the group's COPY fails, each file is written again
under a savepoint of its own, and a file that fails there (an event another file holds,
an event twice in the file) is refused while the others of its group go on.

A file already in the catalogue is compared, not written: the same events are an
"already loaded" answer and different ones a conflict naming the first difference.
Replacing a file (admin) deletes its events and writes the new ones in one transaction.

On a sharded coordinator each file takes the sharded loader's path instead (one
two-phase commit per file, no grouping): the coordinator holds no events to write into.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast
from uuid import UUID

import asyncpg

from eventindex import sharding
from eventindex.config import Settings
from eventindex.db import Connection, Database, copy_unless_lost
from eventindex.ingest.filebody import COPY_COLUMNS, BodyError, FileBody, MemoryBudget
from eventindex.ingest.loader import Loader
from eventindex.ingest.sharded import load_sharded
from eventindex.ingest.source import LoadError, Source
from eventindex.middleware.interactive import bulk_turn

log = logging.getLogger("eventindex.collector")

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

LOCK_DATASETS = """
SELECT id, name, state FROM datasets WHERE id = ANY($1::integer[]) ORDER BY id FOR SHARE
"""

DATASET_STATES = "SELECT id, name, state FROM datasets WHERE id = ANY($1::integer[])"

FILES_PRESENT = """
SELECT fuid_raw, dsid_raw, run_number, n_events, first_event, last_event
FROM files WHERE fuid_raw = ANY($1::uuid[])
"""

ADD_PARTITIONS = "SELECT events_add_partitions($1::integer[])"

NO_STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = 0"

# Partitions neither detached nor attached under the transaction (a concurrent DETACH
# waits for it): the same lock an INSERT into ``events`` takes.
HOLD_PARTITIONS = "LOCK TABLE events IN ROW EXCLUSIVE MODE"

PARTITIONS_OF = """
SELECT r AS run, p.schema_name, p.table_name
FROM unnest($1::integer[]) AS r
LEFT JOIN LATERAL events_partition_of(r) AS p ON true
"""

EVENT_AT = """
SELECT fuid_raw, dsid_raw, olt_result FROM events WHERE run_number = $1 AND event_number = $2
"""

RECORD_UPLOADS = """
INSERT INTO loads (source, content_sha256, rows_read, events_inserted, duplicates_skipped,
                   conflicts_skipped, started_at, duplicate_datasets, principal, fuid_raw)
SELECT 'upload ' || f::text, d, n, n, 0, 0, s, '{}', p, f
FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[], $5::text[])
     AS u (f, d, n, s, p)
"""

# A file already loaded, compared with its upload: the upload's rows are staged with their
# line numbers and each is probed in ``events`` by its key.
CREATE_COMPARE_STAGE = """
CREATE TEMP TABLE upload_stage (
    line bigint GENERATED ALWAYS AS IDENTITY,
    run_number integer, event_number bigint, olt_result integer, dsid_raw integer,
    fuid_raw uuid
) ON COMMIT DROP
"""

PROBE_PLAN = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"

COMPARE_STAGE = """
SELECT count(*) AS n,
       count(DISTINCT (s.run_number, s.event_number)) AS distinct_n,
       count(*) FILTER (WHERE e.fuid_raw = s.fuid_raw AND e.olt_result = s.olt_result
                              AND e.dsid_raw = s.dsid_raw) AS same
FROM upload_stage AS s
LEFT JOIN events AS e ON e.run_number = s.run_number AND e.event_number = s.event_number
"""

FIRST_DIFFERENCE = """
SELECT s.line, s.run_number, s.event_number, s.olt_result, e.olt_result AS their_olt,
       e.fuid_raw::text AS their_fuid, e.dsid_raw AS their_dsid
FROM upload_stage AS s
LEFT JOIN events AS e ON e.run_number = s.run_number AND e.event_number = s.event_number
WHERE e.fuid_raw IS DISTINCT FROM s.fuid_raw OR e.olt_result IS DISTINCT FROM s.olt_result
   OR e.dsid_raw IS DISTINCT FROM s.dsid_raw
ORDER BY s.line
LIMIT 1
"""

# One writer per file at a time, whatever the path (group, stream, comparison, replace):
# the locks are taken in one order, so two groups sharing files cannot deadlock on them.
LOCK_FILES = """
SELECT pg_advisory_xact_lock(k)
FROM (SELECT DISTINCT hashtext('eventindex.file.' || f::text) AS k
      FROM unnest($1::uuid[]) AS f) AS keys
ORDER BY k
"""

DELETE_FILE_EVENTS = """
DELETE FROM events
WHERE run_number = $1 AND event_number BETWEEN $2 AND $3 AND fuid_raw = $4
"""

FILE_LEFT = "SELECT n_events FROM files WHERE fuid_raw = $1"

_KEY = re.compile(r"\((\d+), (\d+)\)")
_COPY_LINE = re.compile(r"COPY \w+, line (\d+)")
_RETRY_GROUP = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


@dataclass
class Dataset:
    id: int
    name: str


@dataclass
class Outcome:
    """What became of an upload: ``loaded`` (201), ``identical`` (already loaded, 200) or
    ``replaced`` (200)."""

    result: Literal["loaded", "identical", "replaced"]
    fuid: UUID
    dataset: Dataset
    events: int
    load_id: int | None = None
    group_size: int = 1


@dataclass(eq=False)  # compared by identity
class Upload:
    body: FileBody
    dataset: Dataset
    principal: str | None
    replace: bool = False
    # A write-only credential learns that an event is held elsewhere, not where.
    may_read: bool = True
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    future: asyncio.Future[Outcome] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def fuid(self) -> UUID:
        return self.body.fuid

    # A refusal is decided inside a transaction that may yet be retried: it is told only
    # when the transaction is over (settle).
    refusal: BodyError | None = None

    def refuse(self, status: int, kind: str, title: str, detail: str, **extra: Any) -> None:
        self.refusal = BodyError(status, kind, title, detail, **extra)

    def settle(self) -> None:
        if self.refusal is not None and not self.future.done():
            self.future.set_exception(self.refusal)

    def answer(self, outcome: Outcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


class Collector:
    """Takes uploads and commits them in groups; owned by the application's lifespan."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.budget = MemoryBudget(settings.upload_memory_bytes)
        self._pending: deque[Upload] = deque()
        self._wakeup = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []
        self._sharded: bool | None = None
        self._stream_slots = asyncio.Semaphore(settings.upload_committers)
        self._closing = False
        self.groups = 0
        self.grouped_files = 0
        self.retried_groups = 0  # rolled back by a deadlock or serialization failure

    @classmethod
    @asynccontextmanager
    async def open(cls, db: Database, settings: Settings) -> AsyncIterator[Collector]:
        collector = cls(db, settings)
        collector._workers = [
            asyncio.create_task(collector._work(), name=f"eventindex-collector-{i}")
            for i in range(settings.upload_committers)
        ]
        try:
            yield collector
        finally:
            collector._closing = True
            for task in collector._workers:
                task.cancel()
            await asyncio.gather(*collector._workers, return_exceptions=True)
            while collector._pending:
                upload = collector._pending.popleft()
                upload.refuse(
                    503,
                    "shutting-down",
                    "Service stopping",
                    "The service is stopping; the file was not loaded. Send it again.",
                    headers={"Retry-After": "5"},
                )
                upload.settle()

    async def submit(self, upload: Upload) -> Outcome:
        """Queue the upload and wait until its group has committed (or refused it)."""
        if self._closing:
            raise BodyError(
                503,
                "shutting-down",
                "Service stopping",
                "The service is stopping; send the file again.",
                headers={"Retry-After": "5"},
            )
        self._pending.append(upload)
        self._wakeup.set()
        try:
            # Shielded: a client that goes away does not stop the group its file is in.
            return await asyncio.shield(upload.future)
        except asyncio.CancelledError:
            if upload in self._pending:
                self._pending.remove(upload)
            else:
                # A committer is reading the upload's rows, which the caller owns and
                # would free on the way out: wait until the committer is done with them.
                await asyncio.wait([upload.future])
            raise

    # --- large files, written while they arrive ---

    async def streamable(self) -> bool:
        """Whether a large upload may be written as it arrives (a slot is free)."""
        if self._closing or self._stream_slots.locked():
            return False
        if self._sharded is None:
            async with self.db.primary.acquire() as conn:
                self._sharded = await sharding.is_coordinator(cast(asyncpg.Connection, conn))
        return not self._sharded

    async def stream(
        self, upload: Upload, rest: AsyncIterator[bytes], digest: bytes | None
    ) -> Outcome:
        """Write a large file while its body arrives: one COPY fed by the request, in one
        transaction, committed when the body has ended whole and correct (its check or
        digest failing part-way aborts the COPY: nothing stays). The overlap of receiving
        and writing is what makes a large upload about as fast as a plain COPY. A slow
        client holds its connection and transaction meanwhile, so at most
        ``upload_committers`` uploads stream at once; a file already loaded (or to be
        replaced) is read whole and goes the usual way."""
        async with self._stream_slots, self.db.primary.acquire() as conn:
            try:
                # The run's partition is made (if new) and committed first: the lock that
                # making one takes would otherwise stop every other new run's upload for
                # as long as this client takes to send.
                async with conn.transaction():
                    await self._leaf(conn, upload)
                async with conn.transaction():
                    # The COPY lasts as long as the client sends (within upload_timeout).
                    await conn.execute(NO_STATEMENT_TIMEOUT)
                    if not await self._take_alone(conn, upload):
                        raise _Usual
                    table = await self._leaf(conn, upload)  # held now; made above
                    await copy_unless_lost(
                        conn,
                        conn.copy_to_table(
                            table[1],
                            schema_name=table[0],
                            source=_drained(upload.body, rest, digest),
                            columns=COPY_COLUMNS,
                            format="text",
                            delimiter=",",
                        ),
                    )
                    await self._record(conn, [upload])
            except _Usual:
                pass
            except asyncpg.UniqueViolationError as exc:
                if await self._refuse_duplicate(conn, upload, exc):
                    upload.refuse(*_busy(upload), headers={"Retry-After": "1"})
                assert upload.refusal is not None
                raise upload.refusal from None
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                raise BodyError(
                    422,
                    "invalid-value",
                    "Invalid value",
                    f"{_where(upload, exc)}{str(exc).splitlines()[0]}; nothing was loaded.",
                ) from None
            else:
                return Outcome("loaded", upload.fuid, upload.dataset, upload.body.count)
        async for chunk in rest:
            for _ in upload.body.steps(chunk):
                await bulk_turn()
        upload.body.finish()
        upload.body.check_digest(digest)
        return await self.submit(upload)

    async def _take_alone(self, conn: Connection, upload: Upload) -> bool:
        """Lock the dataset (refusing a closed one); False when the file is loaded
        already or is to be replaced."""
        rows = await conn.fetch(LOCK_DATASETS, [upload.dataset.id])
        if not rows:
            raise BodyError(
                404, "dataset-not-found", "Dataset not found", f"No dataset {upload.dataset.id}."
            )
        if rows[0]["state"] != "open":
            raise BodyError(*_closed(rows[0]))
        await conn.execute(LOCK_FILES, [upload.fuid])
        return not upload.replace and not await conn.fetch(FILES_PRESENT, [upload.fuid])

    async def _leaf(self, conn: Connection, upload: Upload) -> tuple[str, str]:
        run = upload.body.run or 0
        return (await self._leaves(conn, [run]))[run]

    async def _leaves(self, conn: Connection, runs: list[int]) -> dict[int, tuple[str, str]]:
        """The partition of each run (made where missing), held for the transaction."""
        await conn.execute(HOLD_PARTITIONS)
        rows = await conn.fetch(PARTITIONS_OF, runs)
        if any(r["table_name"] is None for r in rows):
            await conn.fetchval(ADD_PARTITIONS, runs)
            rows = await conn.fetch(PARTITIONS_OF, runs)
        return {r["run"]: (r["schema_name"], r["table_name"]) for r in rows}

    # --- grouping ---

    def _next_group(self) -> list[Upload]:
        """What arrived together, up to the group's limit of rows: one file per UUID (a
        second upload of a file waits for the first, then finds it loaded)."""
        group: list[Upload] = []
        seen: set[UUID] = set()
        rows = 0
        held: list[Upload] = []
        limit = self.settings.upload_group_rows
        while self._pending:
            upload = self._pending.popleft()
            if upload.future.done():
                continue
            solo = upload.replace or upload.body.rows.spilled or upload.body.count > limit
            if upload.fuid in seen or (group and (solo or rows + upload.body.count > limit)):
                held.append(upload)
                if len(held) > 1000:
                    break
                continue
            group.append(upload)
            seen.add(upload.fuid)
            rows += upload.body.count
            if solo:
                break
        self._pending.extendleft(reversed(held))
        return group

    async def _work(self) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group = self._next_group()
            if not group:
                continue
            if self._pending:
                self._wakeup.set()  # another worker may take the next group meanwhile
            try:
                await self._commit(group)
            except asyncio.CancelledError:
                for upload in group:
                    upload.refuse(
                        503,
                        "shutting-down",
                        "Service stopping",
                        "The service stopped before the file was committed; nothing was "
                        "loaded. Send it again.",
                        headers={"Retry-After": "5"},
                    )
                    upload.settle()
                raise
            except BaseException as exc:
                for upload in group:
                    if not upload.future.done():
                        upload.future.set_exception(exc)
            else:
                for upload in group:
                    upload.settle()
                    if not upload.future.done():  # every path answers or refuses
                        upload.future.set_exception(RuntimeError("the upload got no answer"))

    # --- committing ---

    async def _commit(self, group: list[Upload]) -> None:
        async with self.db.primary.acquire() as conn:
            if self._sharded is None:
                self._sharded = await sharding.is_coordinator(cast(asyncpg.Connection, conn))
            if self._sharded:
                for upload in group:
                    await self._load_sharded(conn, upload)
                return
            present = await self._write_group(conn, group)
            for upload, file_row in present:
                if upload.replace:
                    await self._replace(conn, upload)
                else:
                    await self._compare(conn, upload, file_row)

    async def _write_group(
        self, conn: Connection, group: list[Upload]
    ) -> list[tuple[Upload, asyncpg.Record | None]]:
        """Write the group's new files in one transaction; the uploads of files already
        present (or to be replaced) are returned for their own transactions."""
        later: list[tuple[Upload, asyncpg.Record | None]] = []
        for attempt in range(3):
            written: list[Upload] = []
            later = []
            for upload in group:
                upload.refusal = None
            try:
                async with conn.transaction():
                    todo = await self._open_datasets(conn, group)
                    await conn.execute(LOCK_FILES, [u.fuid for u in todo])
                    present = {
                        r["fuid_raw"]: r
                        for r in await conn.fetch(FILES_PRESENT, [u.fuid for u in todo])
                    }
                    fresh = []
                    for upload in todo:
                        if upload.replace or upload.fuid in present:
                            later.append((upload, present.get(upload.fuid)))
                        else:
                            fresh.append(upload)
                    if fresh:
                        written, moved = await self._copy_files(conn, fresh)
                        later += moved
                    if written:
                        await self._record(conn, written)
            except _RETRY_GROUP:
                self.retried_groups += 1
                if attempt == 2:
                    raise
                continue
            break
        self.groups += 1
        self.grouped_files += len(written)
        for upload in group:
            upload.settle()
        for upload in written:
            upload.answer(
                Outcome(
                    "loaded",
                    upload.fuid,
                    upload.dataset,
                    upload.body.count,
                    group_size=len(written),
                )
            )
        return later

    async def _open_datasets(self, conn: Connection, group: list[Upload]) -> list[Upload]:
        """The uploads whose datasets take files (their rows locked until commit, so a
        close waits for this group); the others are refused."""
        rows = {
            r["id"]: r
            for r in await conn.fetch(LOCK_DATASETS, sorted({u.dataset.id for u in group}))
        }
        todo = []
        for upload in group:
            row = rows.get(upload.dataset.id)
            if row is None:
                upload.refuse(
                    404,
                    "dataset-not-found",
                    "Dataset not found",
                    f"Dataset {upload.dataset.id} no longer exists; nothing was loaded.",
                )
            elif row["state"] != "open":
                upload.refuse(*_closed(row))
            else:
                todo.append(upload)
        return todo

    async def _copy_files(
        self, conn: Connection, uploads: list[Upload]
    ) -> tuple[list[Upload], list[tuple[Upload, asyncpg.Record | None]]]:
        """Write the files: all in one COPY when that works, else one by one under
        savepoints. Returns (written, found loaded meanwhile).

        Files go in run order, so concurrent groups lock the runs' summary rows in one
        order (the other order deadlocks two groups that share two runs)."""
        uploads = sorted(uploads, key=lambda u: u.body.run or 0)  # stable: first come wins
        try:
            async with conn.transaction():
                await self._copy(conn, uploads)
            return uploads, []
        except (asyncpg.UniqueViolationError, asyncpg.DataError):
            pass  # rolled back to the savepoint: file by file
        written: list[Upload] = []
        moved: list[tuple[Upload, asyncpg.Record | None]] = []
        for upload in uploads:
            try:
                async with conn.transaction():
                    await self._copy(conn, [upload])
                written.append(upload)
            except asyncpg.UniqueViolationError as exc:
                if await self._refuse_duplicate(conn, upload, exc):
                    present = await conn.fetch(FILES_PRESENT, [upload.fuid])
                    moved.append((upload, present[0] if present else None))
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                upload.refuse(
                    422,
                    "invalid-value",
                    "Invalid value",
                    f"{_where(upload, exc)}{str(exc).splitlines()[0]}; nothing was loaded.",
                )
        return written, moved

    async def _copy(self, conn: Connection, uploads: list[Upload]) -> None:
        """COPY the files straight into their runs' partitions: a COPY through the
        partitioned ``events`` (whose summary trigger reads a transition table) inserts
        row by row, into a partition it inserts many rows at a time."""
        leaves = await self._leaves(conn, sorted({u.body.run or 0 for u in uploads}))
        by_leaf: dict[tuple[str, str], list[Upload]] = {}
        for upload in uploads:
            by_leaf.setdefault(leaves[upload.body.run or 0], []).append(upload)
        for (schema, table), part in by_leaf.items():
            await copy_unless_lost(
                conn,
                conn.copy_to_table(
                    table,
                    schema_name=schema,
                    source=_aiter(_rows_of(part)),
                    columns=COPY_COLUMNS,
                    format="text",
                    delimiter=",",
                ),
            )

    async def _refuse_duplicate(
        self, conn: Connection, upload: Upload, exc: asyncpg.UniqueViolationError
    ) -> bool:
        """Say which event the file cannot have; True when the file itself turned out to
        be loaded meanwhile (by a concurrent upload of the same file)."""
        key = _KEY.search(getattr(exc, "detail", "") or "")
        where = _where(upload, exc)
        if key is None:
            upload.refuse(
                409, "duplicate-event", "Duplicate event", f"{where}{exc}; nothing was loaded."
            )
            return False
        run, event = int(key[1]), int(key[2])
        holder = await conn.fetchrow(EVENT_AT, run, event)
        if holder is None:
            upload.refuse(
                422,
                "duplicate-in-file",
                "Event twice in the file",
                f"{where}run {run} event {event} appears more than once in this file; "
                "nothing was loaded.",
            )
            return False
        if holder["fuid_raw"] == upload.fuid:
            return True
        if not upload.may_read:
            upload.refuse(
                409,
                "event-in-another-file",
                "Event held by another file",
                f"{where}run {run} event {event} is already in another file; nothing was loaded.",
                run_number=run,
                event_number=event,
            )
            return False
        upload.refuse(
            409,
            "event-in-another-file",
            "Event held by another file",
            f"{where}run {run} event {event} is already in file {holder['fuid_raw']} "
            f"(dataset {holder['dsid_raw']}); nothing was loaded.",
            other_file=str(holder["fuid_raw"]),
            run_number=run,
            event_number=event,
        )
        return False

    async def _record(self, conn: Connection, uploads: list[Upload]) -> None:
        await conn.execute(
            RECORD_UPLOADS,
            [u.fuid for u in uploads],
            [u.body.digest().hex() for u in uploads],
            [u.body.count for u in uploads],
            [u.started_at for u in uploads],
            [u.principal for u in uploads],
        )

    async def _compare(
        self, conn: Connection, upload: Upload, file_row: asyncpg.Record | None
    ) -> None:
        """An upload of a file the catalogue holds: the same events, or a conflict."""
        assert file_row is not None
        async with conn.transaction():
            await conn.execute(LOCK_FILES, [upload.fuid])
            await conn.execute(CREATE_COMPARE_STAGE)
            await conn.execute(PROBE_PLAN)
            await copy_unless_lost(
                conn,
                conn.copy_to_table(
                    "upload_stage",
                    source=_aiter(upload.body.rows.chunks()),
                    columns=COPY_COLUMNS,
                    format="text",
                    delimiter=",",
                ),
            )
            counts = await conn.fetchrow(COMPARE_STAGE)
            assert counts is not None
            held = int(file_row["n_events"])
            if counts["same"] == counts["n"] == counts["distinct_n"] == held:
                upload.answer(Outcome("identical", upload.fuid, upload.dataset, held))
                return
            diff = await conn.fetchrow(FIRST_DIFFERENCE)
        detail = (
            f"File {upload.fuid} is already loaded with {held} events in dataset "
            f"{file_row['dsid_raw']}; this upload has {upload.body.count}"
        )
        if diff is not None and upload.may_read:
            line = int(diff["line"]) + upload.body.first_line - 1
            detail += f"; line {line} (run {diff['run_number']} event {diff['event_number']}) "
            if diff["their_fuid"] is None:
                detail += "is not in the loaded file"
            elif diff["their_fuid"] != str(upload.fuid):
                detail += f"is in file {diff['their_fuid']}"
            elif diff["their_dsid"] != upload.dataset.id:
                detail += f"is in dataset {diff['their_dsid']}, not {upload.dataset.id}"
            else:
                detail += (
                    f"has olt_result {diff['olt_result']} here, {diff['their_olt']} in the "
                    "catalogue"
                )
        elif diff is None:
            detail += f"; the loaded file has {held - int(counts['same'])} events it lacks"
        detail += ". Replacing a file needs the admin scope and ?replace=true."
        upload.refuse(409, "file-differs", "File already loaded with other events", detail)

    async def _replace(self, conn: Connection, upload: Upload) -> None:
        """Delete the file's events and write the new ones, in one transaction."""
        with contextlib.suppress(_Undo):
            await self._replace_in_transaction(conn, upload)

    async def _replace_in_transaction(self, conn: Connection, upload: Upload) -> None:
        async with conn.transaction():
            await conn.execute(LOCK_FILES, [upload.fuid])
            old = await conn.fetch(FILES_PRESENT, [upload.fuid])
            row = old[0] if old else None
            # Both the dataset the file leaves and the one it goes to must be open: a
            # closed dataset loses no file either (their rows locked until commit).
            touched = {upload.dataset.id} | ({row["dsid_raw"]} if row is not None else set())
            for dataset in await conn.fetch(LOCK_DATASETS, sorted(touched)):
                if dataset["state"] != "open":
                    upload.refuse(*_closed(dataset))
                    raise _Undo
            if row is not None:
                await conn.execute(
                    DELETE_FILE_EVENTS,
                    row["run_number"],
                    row["first_event"],
                    row["last_event"],
                    upload.fuid,
                )
                if await conn.fetchval(FILE_LEFT, upload.fuid) is not None:
                    upload.refuse(
                        409,
                        "file-spans-runs",
                        "File cannot be replaced",
                        f"File {upload.fuid} holds events of several runs (loaded by "
                        "the command line); replace it with 'eventindex load' instead.",
                    )
                    raise _Undo
            try:
                async with conn.transaction():
                    await self._copy(conn, [upload])
            except asyncpg.UniqueViolationError as exc:
                if await self._refuse_duplicate(conn, upload, exc):
                    upload.refuse(*_busy(upload), headers={"Retry-After": "1"})
                raise _Undo from None
            await self._record(conn, [upload])
        upload.answer(
            Outcome(
                "replaced" if row is not None else "loaded",
                upload.fuid,
                upload.dataset,
                upload.body.count,
            )
        )

    async def _load_sharded(self, conn: Connection, upload: Upload) -> None:
        """The sharded loader's path: split by shard, two-phase commit."""
        row = await conn.fetch(DATASET_STATES, [upload.dataset.id])
        if not row or row[0]["state"] != "open":
            if row:
                upload.refuse(*_closed(row[0]))
            else:
                upload.refuse(
                    404,
                    "dataset-not-found",
                    "Dataset not found",
                    f"Dataset {upload.dataset.id} no longer exists.",
                )
            return
        with tempfile.TemporaryFile(prefix="eventindex-upload-") as spill:
            spill.write(b"run_number,event_number,olt_result,dsid_raw,fuid_raw\n")
            for piece in upload.body.rows.chunks():
                spill.write(piece)
            spill.flush()
            spill.seek(0)
            source = Source(f"upload {upload.fuid}", Path(f"/dev/fd/{spill.fileno()}"))
            # (The loader is written for a plain connection; a pool's proxy behaves as one.)
            loader = Loader(
                cast(asyncpg.Connection, conn), on_conflict="fail", progress_interval=1e9
            )
            try:
                (result,) = await load_sharded(loader, [], [source])
            except LoadError as exc:
                upload.refuse(409, "event-conflict", "Conflicting events", f"{exc}")
                return
        upload.answer(
            Outcome(
                "identical" if result.inserted == 0 else "loaded",
                upload.fuid,
                upload.dataset,
                result.rows,
            )
        )


class _Usual(Exception):
    """The file cannot be written as it arrives: read it whole, then the usual way."""


async def _drained(
    body: FileBody, rest: AsyncIterator[bytes], digest: bytes | None
) -> AsyncIterator[bytes]:
    """The rows of a body as it arrives, each handed over once. Its end is checked before
    the last rows go: an error raised here aborts the COPY."""
    for piece in body.rows.take():
        yield piece
    async for chunk in rest:
        for _ in body.steps(chunk):
            for piece in body.rows.take():
                yield piece
    body.finish()
    body.check_digest(digest)
    for piece in body.rows.take():
        yield piece


class _Undo(Exception):
    """Roll the transaction back; the upload has been answered."""


def _where(upload: Upload, exc: Exception) -> str:
    match = _COPY_LINE.search(getattr(exc, "context", "") or "")
    if match is None:
        return ""
    return f"line {int(match[1]) + upload.body.first_line - 1}: "


def _rows_of(uploads: list[Upload]) -> Iterator[bytes]:
    for upload in uploads:
        yield from upload.body.rows.chunks()


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    for piece in chunks:
        yield piece


def _busy(upload: Upload) -> tuple[int, str, str, str]:
    return (
        503,
        "file-busy",
        "File being loaded",
        f"File {upload.fuid} was written by another request meanwhile; send it again to "
        "have it compared.",
    )


def _closed(row: asyncpg.Record) -> tuple[int, str, str, str]:
    return (
        409,
        "dataset-closed",
        "Dataset closed",
        f"Dataset {row['id']} ({row['name']}) is {row['state']}: it takes no new files; "
        "nothing was loaded.",
    )


__all__ = ["Collector", "Dataset", "Outcome", "Upload"]
