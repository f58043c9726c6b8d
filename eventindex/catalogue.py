"""Catalogue queries beyond picking: datasets, files, runs, Online Filter counts, overlaps,
selections and the consistency report. SQL in ``queries``; summaries in ``files`` and
``run_olt_counts``, kept by the database as events are written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from eventindex.config import MAX_RUN_NUMBER
from eventindex.db import Connection, Lane
from eventindex.problems import Problem
from eventindex.streaming import CursorStream

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

LIST_OLT_BITS = "SELECT bit, name, description FROM olt_bits ORDER BY bit"

DATASET_PAGE = """
SELECT d.id, d.name, d.data_type, d.description, d.created_at, d.state, d.files_expected,
       coalesce(f.n_events, 0) AS n_events, coalesce(f.n_files, 0) AS n_files,
       f.first_run, f.last_run, f.first_loaded_at, f.last_loaded_at
FROM datasets AS d
LEFT JOIN LATERAL (
    SELECT sum(n_events)::bigint AS n_events, count(*) AS n_files,
           min(run_number) AS first_run, max(run_number) AS last_run,
           min(first_loaded_at) AS first_loaded_at, max(last_loaded_at) AS last_loaded_at
    FROM files WHERE files.dsid_raw = d.id
) AS f ON true
WHERE ($1::integer IS NULL OR d.id = $1) AND d.id > $2
ORDER BY d.id
LIMIT $3
"""

FILE_INFO = """
SELECT f.fuid_raw::text AS fuid_raw, f.dsid_raw, d.name AS dataset, f.run_number, f.n_events,
       f.first_event, f.last_event, f.first_loaded_at, f.last_loaded_at
FROM files AS f LEFT JOIN datasets AS d ON d.id = f.dsid_raw
WHERE f.fuid_raw = $1
"""

DATASET_FILES_PAGE = """
SELECT f.fuid_raw::text AS fuid_raw, f.dsid_raw, d.name AS dataset, f.run_number, f.n_events,
       f.first_event, f.last_event, f.first_loaded_at, f.last_loaded_at
FROM files AS f LEFT JOIN datasets AS d ON d.id = f.dsid_raw
WHERE f.dsid_raw = $1 AND (f.run_number, f.fuid_raw) > ($2, $3::uuid)
ORDER BY f.run_number, f.fuid_raw
LIMIT $4
"""

# A file's events lie in its run between its first and last event: a range of the key.
FILE_EVENTS = """
SELECT run_number, event_number, olt_result
FROM events
WHERE run_number = $1 AND event_number BETWEEN $2 AND $3 AND fuid_raw = $4
ORDER BY event_number
"""

RUN_PAGE = """
SELECT c.run_number, sum(c.n_events)::bigint AS n_events,
       array_agg(DISTINCT c.dsid_raw) AS datasets,
       (SELECT count(*) FROM files AS f
        WHERE f.run_number = c.run_number AND ($2::integer IS NULL OR f.dsid_raw = $2))
           AS n_files
FROM run_olt_counts AS c
WHERE c.run_number > $1 AND ($2::integer IS NULL OR c.dsid_raw = $2)
GROUP BY c.run_number
ORDER BY c.run_number
LIMIT $3
"""

RUN_DECISIONS = """
SELECT b.bit, b.name,
       coalesce(sum(c.n_events) FILTER (WHERE c.olt_result & (1 << b.bit) <> 0), 0)::bigint
           AS n_events
FROM olt_bits AS b CROSS JOIN run_olt_counts AS c
WHERE c.run_number = $1
GROUP BY b.bit, b.name
ORDER BY b.bit
"""

# The scope of a selection: $1..$2 run range, $3 dataset (or NULL), and a bit expression:
# every bit of $4, at least one bit of $5 (if any), no bit of $6.
_SELECTION_SCOPE = """
run_number BETWEEN $1 AND $2 AND ($3::integer IS NULL OR dsid_raw = $3)
AND (olt_result & $4) = $4 AND ($5 = 0 OR (olt_result & $5) <> 0) AND (olt_result & $6) = 0
"""

SELECTION_COUNT = f"""
SELECT CASE $7 WHEN 'run' THEN run_number WHEN 'dataset' THEN dsid_raw END AS key,
       sum(n_events)::bigint AS n_events
FROM run_olt_counts
WHERE {_SELECTION_SCOPE}
GROUP BY 1
ORDER BY 1
"""

# Rows after the (run, event) key $7/$8, in key order: a range scan of the primary key.
SELECTION_EVENTS = f"""
SELECT run_number, event_number, olt_result, dsid_raw, fuid_raw::text AS fuid_raw
FROM events
WHERE {_SELECTION_SCOPE} AND (run_number, event_number) > ($7, $8)
ORDER BY run_number, event_number
"""

DATASET_RUN_RANGE = "SELECT min(run_number), max(run_number) FROM files WHERE dsid_raw = $1"

OVERLAP = """
SELECT a.bit AS bit_a, b.bit AS bit_b, sum(c.n_events)::bigint AS n_events
FROM run_olt_counts AS c
JOIN olt_bits AS a ON (c.olt_result & (1 << a.bit)) <> 0
JOIN olt_bits AS b ON (c.olt_result & (1 << b.bit)) <> 0
WHERE c.run_number BETWEEN $1 AND $2 AND ($3::integer IS NULL OR c.dsid_raw = $3)
GROUP BY a.bit, b.bit
"""

SCOPE_TOTAL = """
SELECT coalesce(sum(n_events), 0)::bigint FROM run_olt_counts
WHERE run_number BETWEEN $1 AND $2 AND ($3::integer IS NULL OR dsid_raw = $3)
"""

DATASET_EXISTS = "SELECT name FROM datasets WHERE id = $1"

# Files whose recorded count differs from the events found in their key range.
FILE_COUNT_MISMATCHES = """
SELECT count(*) OVER () AS total,
       f.fuid_raw::text AS fuid_raw, f.run_number, f.n_events AS recorded, e.found
FROM files AS f
CROSS JOIN LATERAL (
    SELECT count(*) AS found FROM events AS x
    WHERE x.run_number = f.run_number AND x.event_number BETWEEN f.first_event AND f.last_event
      AND x.fuid_raw = f.fuid_raw
) AS e
WHERE f.dsid_raw = $1 AND e.found <> f.n_events
ORDER BY f.run_number, f.fuid_raw
LIMIT $2
"""

DATASET_CONFLICTS = """
SELECT count(*) OVER () AS total, c.line, l.source, c.run_number, c.event_number,
       c.fuid_raw::text AS fuid_raw, c.existing_fuid_raw::text AS existing_fuid_raw
FROM load_conflicts AS c JOIN loads AS l ON l.id = c.load_id
WHERE c.dsid_raw = $1 OR c.existing_dsid_raw = $1
ORDER BY c.load_id, c.line
LIMIT $2
"""

# Loads that met duplicates of dataset $1 (loads recorded before duplicate_datasets
# existed: those whose recorded conflicts involve it).
LOADS_WITH_DUPLICATES = """
SELECT l.id, l.source, l.finished_at, l.duplicates_skipped, l.conflicts_skipped FROM loads AS l
WHERE (l.duplicates_skipped > 0 OR l.conflicts_skipped > 0)
  AND ($1 = ANY (l.duplicate_datasets)
       OR (l.duplicate_datasets IS NULL AND EXISTS (
           SELECT 1 FROM load_conflicts AS c
           WHERE c.load_id = l.id AND (c.dsid_raw = $1 OR c.existing_dsid_raw = $1))))
ORDER BY l.id
"""

EVENT_GAPS = """
SELECT count(*) OVER () AS total, sum(next_event - event_number - 1) OVER () AS missing_total,
       run_number, event_number AS after_event, next_event - event_number - 1 AS missing
FROM (
    SELECT run_number, event_number,
           lead(event_number) OVER (PARTITION BY run_number ORDER BY event_number) AS next_event
    FROM events
    WHERE run_number IN (SELECT DISTINCT run_number FROM files WHERE dsid_raw = $1)
      AND dsid_raw = $1
) AS e
WHERE next_event > event_number + 1
ORDER BY run_number, event_number
LIMIT $2
"""


@dataclass(frozen=True)
class BitExpression:
    """``all`` bits set, at least one of ``any`` (if given), none of ``none``."""

    all: int = 0
    any: int = 0
    none: int = 0


async def bit_names(conn: Connection) -> dict[str, int]:
    return {r["name"]: r["bit"] for r in await conn.fetch(LIST_OLT_BITS)}


def parse_bits(names: dict[str, int], text: str | None, param: str) -> int:
    """A mask from comma-separated decision names (or bit numbers)."""
    mask = 0
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item.isascii() and item.isdigit() and int(item) in names.values():
            bit = int(item)
        elif item in names:
            bit = names[item]
        else:
            known = ", ".join(sorted(names))
            raise Problem(
                422,
                "unknown-decision",
                "Unknown Online Filter decision",
                f"{param}: {item!r} is not an Online Filter decision (known: {known}).",
            )
        mask |= 1 << bit
    return mask


@dataclass(frozen=True)
class Scope:
    run_min: int
    run_max: int
    dataset: int | None

    def args(self) -> tuple[int, int, int | None]:
        return self.run_min, self.run_max, self.dataset


async def make_scope(
    conn: Connection, run_min: int | None, run_max: int | None, dataset: int | None
) -> Scope:
    if dataset is not None and await conn.fetchval(DATASET_EXISTS, dataset) is None:
        raise Problem(404, "dataset-not-found", "Dataset not found", f"No dataset {dataset}.")
    lo, hi = run_min or 0, MAX_RUN_NUMBER if run_max is None else run_max
    if dataset is not None and run_min is None and run_max is None:
        # The dataset's runs bound the range that a scan of events has to cover.
        row = await conn.fetchrow(DATASET_RUN_RANGE, dataset)
        if row is not None and row[0] is not None:
            lo, hi = row[0], row[1]
    if lo > hi:
        raise Problem(
            422, "invalid-range", "Invalid run range", f"run_min {lo} exceeds run_max {hi}."
        )
    return Scope(lo, hi, dataset)


async def dataset_page(conn: Connection, dataset: int | None, after: int, limit: int) -> list[Any]:
    return [dict(r) for r in await conn.fetch(DATASET_PAGE, dataset, after, limit)]


async def selection_count(
    conn: Connection, scope: Scope, bits: BitExpression, group_by: str
) -> dict[str, Any]:
    rows = await conn.fetch(SELECTION_COUNT, *scope.args(), bits.all, bits.any, bits.none, group_by)
    total = sum(r["n_events"] for r in rows)
    out: dict[str, Any] = {"n_events": total}
    if group_by != "none":
        key = "run_number" if group_by == "run" else "dsid_raw"
        out["groups"] = [{key: r["key"], "n_events": r["n_events"]} for r in rows]
    return out


async def overlap(conn: Connection, scope: Scope) -> dict[str, Any]:
    bits = await conn.fetch(LIST_OLT_BITS)
    index = {r["bit"]: i for i, r in enumerate(bits)}
    matrix = [[0] * len(bits) for _ in bits]
    for r in await conn.fetch(OVERLAP, *scope.args()):
        matrix[index[r["bit_a"]]][index[r["bit_b"]]] = r["n_events"]
    total = await conn.fetchval(SCOPE_TOTAL, *scope.args())
    return {"decisions": [r["name"] for r in bits], "matrix": matrix, "n_events": total}


def _counted(rows: list[Any], *drop: str) -> tuple[int, list[dict[str, Any]]]:
    """The exact total a window count gave, and the listed rows without the totals."""
    total = int(rows[0]["total"]) if rows else 0
    return total, [{k: v for k, v in dict(r).items() if k not in ("total", *drop)} for r in rows]


async def consistency(conn: Connection, dataset: int, gaps: bool, limit: int) -> dict[str, Any]:
    """The dataset's consistency report. Lists hold at most ``limit`` items; the ``n_``
    counts beside them are exact. Problems are files whose recorded count differs from the
    events found and conflicting duplicates; gaps in event numbering are listed when asked
    for but are not problems (the Online Filter drops events)."""
    name = await conn.fetchval(DATASET_EXISTS, dataset)
    if name is None:
        raise Problem(404, "dataset-not-found", "Dataset not found", f"No dataset {dataset}.")
    n_mismatched, mismatched = _counted(await conn.fetch(FILE_COUNT_MISMATCHES, dataset, limit))
    n_conflicts, conflicts = _counted(await conn.fetch(DATASET_CONFLICTS, dataset, limit))
    loads = [dict(r) for r in await conn.fetch(LOADS_WITH_DUPLICATES, dataset)]
    report: dict[str, Any] = {
        "dataset": {"id": dataset, "name": name},
        "files_with_wrong_counts": mismatched,
        "n_files_with_wrong_counts": n_mismatched,
        "conflicting_duplicates": {"total": n_conflicts, "first": conflicts},
        "loads_with_duplicates": loads,
    }
    if gaps:
        rows = await conn.fetch(EVENT_GAPS, dataset, limit)
        n_gaps, found = _counted(rows, "missing_total")
        report["gaps"] = found
        report["n_gaps"] = n_gaps
        report["missing_events"] = int(rows[0]["missing_total"]) if rows else 0
    problems = n_mismatched + n_conflicts
    report["problems"] = problems
    report["status"] = "ok" if problems == 0 else "problems"
    return report


# --- what the catalogue routes ask -------------------------------------------------------


async def olt_bits(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(LIST_OLT_BITS)]


async def dataset_files_page(
    conn: Connection, dataset: int, after_run: int, after_fuid: UUID, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.fetch(DATASET_FILES_PAGE, dataset, after_run, after_fuid, limit)
    return [dict(r) for r in rows]


async def file_info(conn: Connection, fuid: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(FILE_INFO, fuid)
    if row is None:
        raise Problem(404, "file-not-found", "File not found", f"No file {fuid} in the catalogue.")
    return dict(row)


def file_events(lane: Lane, info: dict[str, Any]) -> CursorStream:
    """The file's events as NDJSON, from a stream that owns its connection."""
    return CursorStream(
        lane,
        FILE_EVENTS,
        info["run_number"],
        info["first_event"],
        info["last_event"],
        info["fuid_raw"],
    )


async def run_page(
    conn: Connection, after: int, dataset: int | None, limit: int
) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(RUN_PAGE, after, dataset, limit)]


async def run_detail(conn: Connection, run: int) -> dict[str, Any]:
    page = await conn.fetch(RUN_PAGE, run - 1, None, 1)
    if not page or page[0]["run_number"] != run:
        raise Problem(404, "run-not-found", "Run not found", f"No events of run {run}.")
    decisions = [dict(r) for r in await conn.fetch(RUN_DECISIONS, run)]
    return {**dict(page[0]), "decisions": decisions}


def selection_events(
    lane: Lane, scope: Scope, bits: BitExpression, after_run: int, after_event: int
) -> CursorStream:
    """The selected events as NDJSON, from a stream that owns its connection."""
    return CursorStream(
        lane,
        SELECTION_EVENTS,
        *scope.args(),
        bits.all,
        bits.any,
        bits.none,
        after_run,
        after_event,
    )
