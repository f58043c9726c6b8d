"""The generator and the loader as a user runs them, and a snapshot of what a load left."""

from __future__ import annotations

import csv
import gzip
import subprocess
import sys
from pathlib import Path

import asyncpg


def generate(out: Path | str, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "tools.gen_data", "--out", str(out), *args],
        check=True,
        capture_output=True,
        timeout=120,
    )


def load(url: str, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.store_events", *args, "--database-url", url],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


async def snapshot(url: str) -> tuple[object, ...]:
    """Everything a load may change, summarised."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM events) AS events,
                   (SELECT coalesce(sum(hashtext(e::text)), 0) FROM events e) AS events_hash,
                   (SELECT count(*) FROM datasets) AS datasets,
                   (SELECT count(*) FROM loads) AS loads,
                   (SELECT count(*) FROM load_conflicts) AS conflicts
            """
        )
        assert row is not None
        return tuple(row.values())
    finally:
        await conn.close()


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def csv_events(path: Path) -> set[tuple[int, int, int, int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return {(int(r), int(e), int(o), int(d), u) for r, e, o, d, u in reader}
