"""Files to upload, made independently of the service: events of one run, as CSV, NDJSON
or gzip, and what the catalogue must then hold."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import uuid
from collections.abc import Sequence

import asyncpg

Event = tuple[int, int, int]  # run_number, event_number, olt_result


def events_of(run: int, first: int, n: int, olt: int = 3) -> list[Event]:
    return [(run, e, (e * olt) % 512) for e in range(first, first + n)]


def as_csv(events: Sequence[Event], header: str = "run_number,event_number,olt_result") -> bytes:
    lines = [header] + [f"{r},{e},{o}" for r, e, o in events]
    return ("\n".join(lines) + "\n").encode()


def as_ndjson(events: Sequence[Event]) -> bytes:
    return "".join(
        json.dumps({"run_number": r, "event_number": e, "olt_result": o}) + "\n"
        for r, e, o in events
    ).encode()


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


def content_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def new_fuid() -> str:
    return str(uuid.uuid4())


CSV = {"Content-Type": "text/csv"}
NDJSON = {"Content-Type": "application/x-ndjson"}


async def file_events(url: str, fuid: str) -> set[tuple[int, int, int, int]]:
    """(run, event, olt, dataset) of every event the catalogue holds for the file."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT run_number, event_number, olt_result, dsid_raw FROM events WHERE fuid_raw = $1",
            uuid.UUID(fuid),
        )
    finally:
        await conn.close()
    return {(r[0], r[1], r[2], r[3]) for r in rows}


async def recount(url: str) -> tuple[int, int, bool]:
    """(events, files, whether the summaries equal a recount from ``events``)."""
    conn = await asyncpg.connect(url)
    try:
        n_events = await conn.fetchval("SELECT count(*) FROM events")
        n_files = await conn.fetchval("SELECT count(DISTINCT fuid_raw) FROM events")
        files_ok = await conn.fetchval(
            """
            SELECT NOT EXISTS (
                (SELECT fuid_raw, dsid_raw, run_number, count(*) FROM events
                 GROUP BY fuid_raw, dsid_raw, run_number)
                EXCEPT ALL
                (SELECT fuid_raw, dsid_raw, run_number, n_events FROM files)
            ) AND (SELECT count(*) FROM files) = $1
            AND NOT EXISTS (
                (SELECT run_number, dsid_raw, olt_result, count(*) FROM events
                 GROUP BY 1, 2, 3)
                EXCEPT ALL
                (SELECT run_number, dsid_raw, olt_result, n_events FROM run_olt_counts)
            )
            """,
            n_files,
        )
    finally:
        await conn.close()
    return int(n_events), int(n_files), bool(files_ok)
