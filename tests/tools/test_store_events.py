"""The COPY loader on a real PostgreSQL: round trip, atomicity, duplicates, inputs, errors."""

from __future__ import annotations

import csv
import gzip
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.support.loading import csv_events, generate, load, one_line_error, snapshot


async def db_events(url: str) -> set[tuple[int, int, int, int, str]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT run_number, event_number, olt_result, dsid_raw, fuid_raw::text FROM events"
        )
    finally:
        await conn.close()
    return {tuple(r.values()) for r in rows}


async def test_round_trip_and_idempotent_reload(catalogue: str, tmp_path: Path) -> None:
    generate(tmp_path, "--events", "30000", "--runs", "4", "--datasets", "2", "--parts", "2")
    first = load(catalogue, str(tmp_path))
    assert first.returncode == 0, first.stderr
    expected = csv_events(tmp_path / "events-001.csv") | csv_events(tmp_path / "events-002.csv")
    assert await db_events(catalogue) == expected
    assert "2 new datasets" in first.stdout
    assert "15,000 new" in first.stdout
    before = await snapshot(catalogue)

    again = load(catalogue, str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "0 new datasets" in again.stdout
    assert again.stdout.count("nothing changed (already loaded as load") == 2
    after = await snapshot(catalogue)
    assert after[:3] == before[:3]  # events and datasets unchanged; only the load log grew


async def test_gzip_and_stdin(catalogue: str, tmp_path: Path) -> None:
    generate(tmp_path, "--events", "8000", "--runs", "2", "--datasets", "1", "--gzip")
    assert load(catalogue, str(tmp_path / "datasets.csv")).returncode == 0
    events = tmp_path / "events.csv.gz"
    piped = load(catalogue, "-", stdin=gzip.decompress(events.read_bytes()))
    assert piped.returncode == 0, piped.stderr
    assert await db_events(catalogue) == csv_events(events)
    # The same events, gzip on stdin this time: all identical duplicates.
    result = subprocess.run(
        [sys.executable, "-m", "tools.store_events", "-", "--database-url", catalogue],
        input=events.read_bytes(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"8,000 identical duplicates skipped" in result.stdout


async def test_generator_piped_into_loader(catalogue: str, tmp_path: Path) -> None:
    datasets = tmp_path / "d.csv"
    py = sys.executable
    command = (
        f"{py} -m tools.gen_data --out - --events 12000 --runs 3 --datasets-out {datasets}"
        f" | {py} -m tools.store_events - --datasets {datasets} --database-url '{catalogue}'"
    )
    result = subprocess.run(
        command, shell=True, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "12,000 new" in result.stdout
    assert len(await db_events(catalogue)) == 12000


async def test_malformed_line_leaves_database_unchanged(catalogue: str, tmp_path: Path) -> None:
    generate(tmp_path / "ok", "--events", "5000", "--runs", "2", "--datasets", "1")
    assert load(catalogue, str(tmp_path / "ok")).returncode == 0
    before = await snapshot(catalogue)
    bad = tmp_path / "bad"
    generate(
        bad,
        "--events",
        "5000",
        "--runs",
        "2",
        "--datasets",
        "1",
        "--first-run",
        "9000",
        "--malformed",
        "1",
    )
    (bad / "datasets.csv").write_text("id,name\n7,spd.other\n")
    (bad / "events.csv").write_text((bad / "events.csv").read_text().replace(",1,", ",7,"))
    lines = (bad / "events.csv").read_text().splitlines()
    bad_line = next(i + 1 for i, line in enumerate(lines) if "not-a-number" in line)
    error = one_line_error(load(catalogue, str(bad)))
    assert f"line {bad_line}" in error
    assert "column event_number" in error
    assert "'not-a-number'" in error
    assert "nothing was loaded" in error
    # The new dataset of the same invocation is rolled back too.
    assert await snapshot(catalogue) == before


async def test_unknown_dataset_names_line_and_value(catalogue: str, tmp_path: Path) -> None:
    generate(
        tmp_path, "--events", "5000", "--runs", "2", "--datasets", "1", "--unknown-dataset", "1"
    )
    before = await snapshot(catalogue)
    lines = (tmp_path / "events.csv").read_text().splitlines()
    bad_line = next(i + 1 for i, line in enumerate(lines) if line.split(",")[3] == "1001")
    error = one_line_error(load(catalogue, str(tmp_path)))
    assert f"line {bad_line}, column dsid_raw, value '1001'" in error
    assert "dataset 1001 does not exist" in error
    assert await snapshot(catalogue) == before


async def test_conflicts_stop_the_load_or_are_skipped_and_reported(
    catalogue: str, tmp_path: Path
) -> None:
    generate(tmp_path, "--events", "20000", "--runs", "3", "--conflicts", "3", "--duplicates", "4")
    before = await snapshot(catalogue)
    error = one_line_error(load(catalogue, str(tmp_path)))
    assert "conflicting duplicate" in error
    assert "3 conflicting rows" in error
    assert await snapshot(catalogue) == before

    report = tmp_path / "conflicts.csv"
    skipped = load(
        catalogue, str(tmp_path), "--on-conflict", "skip", "--conflicts-report", str(report)
    )
    assert skipped.returncode == 0, skipped.stderr
    assert "20,000 new, 4 identical duplicates skipped, 3 conflicts skipped" in skipped.stdout
    with report.open() as f:
        reported = list(csv.DictReader(f))
    assert len(reported) == 3
    # The first occurrence is kept; each reported line is a later, different one.
    events = {(r, e): u for r, e, _o, _d, u in await db_events(catalogue)}
    for row in reported:
        key = (int(row["run_number"]), int(row["event_number"]))
        assert events[key] == row["kept_fuid_raw"] != row["fuid_raw"]
    conn = await asyncpg.connect(catalogue)
    try:
        assert await conn.fetchval("SELECT count(*) FROM load_conflicts") == 3
    finally:
        await conn.close()


async def test_conflict_with_the_catalogue(catalogue: str, tmp_path: Path) -> None:
    generate(tmp_path, "--events", "3000", "--runs", "1", "--datasets", "1")
    assert load(catalogue, str(tmp_path)).returncode == 0
    path = tmp_path / "events.csv"
    lines = path.read_text().splitlines()
    run, event, olt, dsid, _ = lines[10].split(",")
    other = tmp_path / "other.csv"
    other.write_text(
        f"{lines[0]}\n{run},{event},{olt},{dsid},00000000-0000-4000-8000-000000000000\n"
    )
    error = one_line_error(load(catalogue, str(other)))
    assert f"line 2: conflicting duplicate: run {run} event {event}" in error


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("", "line 1: the file is empty"),
        ("run_number,event_number,olt_result,dsid_raw,fuid\n", "unknown column 'fuid'"),
        ("run_number,event_number,olt_result,dsid_raw\n", "missing column 'fuid_raw'"),
        (
            "run_number,event_number,olt_result,dsid_raw,fuid_raw\n1,2,3,1,not-a-uuid\n",
            "line 2, column fuid_raw, value 'not-a-uuid'",
        ),
        (
            "run_number,event_number,olt_result,dsid_raw,fuid_raw\n"
            "-1,2,3,1,00000000-0000-4000-8000-000000000000\n",
            "line 2",
        ),
        (
            "run_number,event_number,olt_result,dsid_raw,fuid_raw\n1,2,3\n",
            "line 2",
        ),
    ],
)
async def test_bad_files_are_one_line_errors(
    catalogue: str, tmp_path: Path, content: str, needle: str
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(content)
    before = await snapshot(catalogue)
    error = one_line_error(load(catalogue, str(path)))
    assert needle in error
    assert await snapshot(catalogue) == before


def test_cli_errors(tmp_path: Path) -> None:
    missing = load("postgresql://x@127.0.0.1:1/x", str(tmp_path / "nope"))
    assert "no such file or directory" in one_line_error(missing)
    (tmp_path / "events.csv").write_text("run_number,event_number,olt_result,dsid_raw,fuid_raw\n")
    unreachable = load("postgresql://x@127.0.0.1:1/x", str(tmp_path / "events.csv"))
    assert "cannot connect to the database" in one_line_error(unreachable)
    usage = load("postgresql://x@127.0.0.1:1/x", str(tmp_path), "--conflicts-report", "r.csv")
    assert usage.returncode == 2
    assert "--conflicts-report goes with --on-conflict skip" in usage.stderr


async def test_unmigrated_database(scratch_database: str, tmp_path: Path) -> None:
    generate(tmp_path, "--events", "1000", "--runs", "1", "--datasets", "1")
    error = one_line_error(load(scratch_database, str(tmp_path)))
    assert "eventindex migrate" in error


async def test_eventindex_load_and_generate_commands(catalogue: str, tmp_path: Path) -> None:
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventindex",
            "generate",
            "--out",
            str(tmp_path),
            "--events",
            "2000",
            "--runs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert gen.returncode == 0, gen.stderr
    loaded = subprocess.run(
        [sys.executable, "-m", "eventindex", "load", str(tmp_path), "--database-url", catalogue],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert "2,000 new" in loaded.stdout
