"""A dataset's life: registered by the production, filled (open), closed when production
ends, validated when the consistency check finds it clean."""

from __future__ import annotations

from typing import Any

import orjson

from eventindex import catalogue
from eventindex.config import MAX_RUN_NUMBER
from eventindex.db import Connection
from eventindex.problems import Problem

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

DATASET_BY_ID = "SELECT id, name, state FROM datasets WHERE id = $1"

DATASET_BY_NAME = "SELECT id, name, state FROM datasets WHERE name = $1"

DATASET_STATUS = """
SELECT d.id, d.name, d.data_type, d.description, d.created_at, d.state, d.files_expected,
       d.closed_at, d.validated_at, d.close_report,
       coalesce(f.n_files, 0) AS n_files, coalesce(f.n_events, 0) AS n_events,
       f.first_run, f.last_run, f.first_loaded_at, f.last_loaded_at
FROM datasets AS d
LEFT JOIN LATERAL (
    SELECT count(*) AS n_files, sum(n_events)::bigint AS n_events,
           min(run_number) AS first_run, max(run_number) AS last_run,
           min(first_loaded_at) AS first_loaded_at, max(last_loaded_at) AS last_loaded_at
    FROM files WHERE files.dsid_raw = d.id
) AS f ON true
WHERE d.id = $1
"""

# Registrations are rare: one at a time, so that a new id is the next free one (the first
# free id after a taken one: a registration that took the largest id blocks nobody).
LOCK_REGISTRATIONS = "SELECT pg_advisory_xact_lock(hashtext('eventindex.datasets'))"

REGISTER = """
INSERT INTO datasets (id, name, data_type, description, files_expected)
VALUES (coalesce($1, (SELECT coalesce(min(d.id) + 1, 1) FROM datasets AS d
                        WHERE d.id < 2147483647
                          AND NOT EXISTS (SELECT 1 FROM datasets AS n WHERE n.id = d.id + 1))),
        $2, $3, $4, $5)
ON CONFLICT DO NOTHING
RETURNING id
"""

REGISTERED = """
SELECT id, name, data_type, description, files_expected FROM datasets
WHERE name = $1 OR id = $2
ORDER BY name = $1 DESC
LIMIT 1
"""

LOCK_FOR_CLOSE = """
SELECT id, name, state, files_expected FROM datasets WHERE id = $1 FOR UPDATE
"""

SET_CLOSED = """
UPDATE datasets
SET state = $2, closed_at = coalesce(closed_at, now()),
    validated_at = CASE WHEN $2 = 'validated' THEN now() END,
    close_report = $3::jsonb
WHERE id = $1
"""

FILES_LOADED = "SELECT count(*) FROM files WHERE dsid_raw = $1"


def not_found(ref: str) -> Problem:
    return Problem(404, "dataset-not-found", "Dataset not found", f"No dataset {ref!r}.")


async def resolve(conn: Connection, ref: str) -> dict[str, Any]:
    """A dataset by its id (digits) or name: id, name and state."""
    ref = ref.strip()
    row = None
    if ref.isascii() and ref.isdigit() and int(ref) <= MAX_RUN_NUMBER:
        row = await conn.fetchrow(DATASET_BY_ID, int(ref))
    if row is None:
        row = await conn.fetchrow(DATASET_BY_NAME, ref)
    if row is None:
        raise not_found(ref)
    return dict(row)


async def status(conn: Connection, dataset: int) -> dict[str, Any]:
    row = await conn.fetchrow(DATASET_STATUS, dataset)
    if row is None:
        raise not_found(str(dataset))
    out = dict(row)
    report = out.pop("close_report")
    out["close_report"] = orjson.loads(report) if isinstance(report, str) else report
    return out


async def register(conn: Connection, request: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(the dataset, whether it is new). The same registration again is not an error;
    another with the same name or id is."""
    fields = ("name", "data_type", "description", "files_expected")
    async with conn.transaction():
        await conn.execute(LOCK_REGISTRATIONS)
        new_id = await conn.fetchval(
            REGISTER,
            request.get("id"),
            request["name"],
            request["data_type"],
            request["description"],
            request.get("files_expected"),
        )
        if new_id is not None:
            return await status(conn, new_id), True
        existing = await conn.fetchrow(REGISTERED, request["name"], request.get("id"))
    assert existing is not None
    if existing["name"] != request["name"]:
        raise Problem(
            409,
            "dataset-exists",
            "Dataset id taken",
            f"Dataset id {existing['id']} is already dataset {existing['name']!r}.",
        )
    differ = [f for f in fields if request.get(f) != existing[f]]
    if request.get("id") is not None and request["id"] != existing["id"]:
        differ.insert(0, "id")
    if differ:
        shown = ", ".join(f"{f} {existing[f]!r}" for f in differ)
        raise Problem(
            409,
            "dataset-exists",
            "Dataset registered differently",
            f"Dataset {request['name']!r} is already registered with {shown}.",
            fields=differ,
        )
    return await status(conn, existing["id"]), False


async def close(conn: Connection, dataset: int) -> dict[str, Any]:
    """Refuse new files, run the consistency check, and validate when it is clean. A
    closed dataset is checked again; a validated one is left as it is."""
    async with conn.transaction():
        # Waits for the loads in flight into the dataset (they hold its row FOR SHARE).
        row = await conn.fetchrow(LOCK_FOR_CLOSE, dataset)
        if row is None:
            raise not_found(str(dataset))
        if row["state"] == "validated":
            return await status(conn, dataset)
        report = await catalogue.consistency(conn, dataset, gaps=False, limit=20)
        expected = row["files_expected"]
        loaded = int(await conn.fetchval(FILES_LOADED, dataset))
        problems: list[str] = []
        if report["n_files_with_wrong_counts"]:
            problems.append(
                f"{report['n_files_with_wrong_counts']} files hold another number of events "
                "than recorded"
            )
        if report["conflicting_duplicates"]["total"]:
            problems.append(
                f"{report['conflicting_duplicates']['total']} conflicting duplicate events"
            )
        if expected is not None and loaded != expected:
            problems.append(f"{loaded} files loaded, {expected} expected")
        state = "closed" if problems else "validated"
        summary = {"problems": problems, "files_loaded": loaded, "files_expected": expected}
        await conn.execute(
            SET_CLOSED,
            dataset,
            state,
            orjson.dumps({**summary, "consistency": report}).decode(),
        )
        return await status(conn, dataset)
