"""Catalogue queries beyond picking: datasets, files, runs, Online Filter counts, overlaps,
selections and the consistency report. SQL in ``queries``; summaries in ``files`` and
``run_olt_counts``, kept by the database as events are written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eventindex import queries
from eventindex.config import MAX_RUN_NUMBER
from eventindex.db import Connection
from eventindex.problems import Problem


@dataclass(frozen=True)
class BitExpression:
    """``all`` bits set, at least one of ``any`` (if given), none of ``none``."""

    all: int = 0
    any: int = 0
    none: int = 0


async def bit_names(conn: Connection) -> dict[str, int]:
    return {r["name"]: r["bit"] for r in await conn.fetch(queries.LIST_OLT_BITS)}


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
    if dataset is not None and await conn.fetchval(queries.DATASET_EXISTS, dataset) is None:
        raise Problem(404, "dataset-not-found", "Dataset not found", f"No dataset {dataset}.")
    lo, hi = run_min or 0, MAX_RUN_NUMBER if run_max is None else run_max
    if dataset is not None and run_min is None and run_max is None:
        # The dataset's runs bound the range that a scan of events has to cover.
        row = await conn.fetchrow(queries.DATASET_RUN_RANGE, dataset)
        if row is not None and row[0] is not None:
            lo, hi = row[0], row[1]
    if lo > hi:
        raise Problem(
            422, "invalid-range", "Invalid run range", f"run_min {lo} exceeds run_max {hi}."
        )
    return Scope(lo, hi, dataset)


async def dataset_page(conn: Connection, dataset: int | None, after: int, limit: int) -> list[Any]:
    return [dict(r) for r in await conn.fetch(queries.DATASET_PAGE, dataset, after, limit)]


async def selection_count(
    conn: Connection, scope: Scope, bits: BitExpression, group_by: str
) -> dict[str, Any]:
    rows = await conn.fetch(
        queries.SELECTION_COUNT, *scope.args(), bits.all, bits.any, bits.none, group_by
    )
    total = sum(r["n_events"] for r in rows)
    out: dict[str, Any] = {"n_events": total}
    if group_by != "none":
        key = "run_number" if group_by == "run" else "dsid_raw"
        out["groups"] = [{key: r["key"], "n_events": r["n_events"]} for r in rows]
    return out


async def overlap(conn: Connection, scope: Scope) -> dict[str, Any]:
    bits = await conn.fetch(queries.LIST_OLT_BITS)
    index = {r["bit"]: i for i, r in enumerate(bits)}
    matrix = [[0] * len(bits) for _ in bits]
    for r in await conn.fetch(queries.OVERLAP, *scope.args()):
        matrix[index[r["bit_a"]]][index[r["bit_b"]]] = r["n_events"]
    total = await conn.fetchval(queries.SCOPE_TOTAL, *scope.args())
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
    name = await conn.fetchval(queries.DATASET_EXISTS, dataset)
    if name is None:
        raise Problem(404, "dataset-not-found", "Dataset not found", f"No dataset {dataset}.")
    n_mismatched, mismatched = _counted(
        await conn.fetch(queries.FILE_COUNT_MISMATCHES, dataset, limit)
    )
    n_conflicts, conflicts = _counted(await conn.fetch(queries.DATASET_CONFLICTS, dataset, limit))
    loads = [dict(r) for r in await conn.fetch(queries.LOADS_WITH_DUPLICATES, dataset)]
    report: dict[str, Any] = {
        "dataset": {"id": dataset, "name": name},
        "files_with_wrong_counts": mismatched,
        "n_files_with_wrong_counts": n_mismatched,
        "conflicting_duplicates": {"total": n_conflicts, "first": conflicts},
        "loads_with_duplicates": loads,
    }
    if gaps:
        rows = await conn.fetch(queries.EVENT_GAPS, dataset, limit)
        n_gaps, found = _counted(rows, "missing_total")
        report["gaps"] = found
        report["n_gaps"] = n_gaps
        report["missing_events"] = int(rows[0]["missing_total"]) if rows else 0
    problems = n_mismatched + n_conflicts
    report["problems"] = problems
    report["status"] = "ok" if problems == 0 else "problems"
    return report
