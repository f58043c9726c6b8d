"""The pseudo-event generator: deterministic, realistically shaped, with faults on demand."""

from __future__ import annotations

import csv
import gzip
import io
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import asyncpg
import pytest

from eventindex import migrate
from eventindex.ingest import generator as gen_data


def generate(tmp: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tools.gen_data", "--out", str(tmp), *args],
        capture_output=True,
        timeout=120,
        check=False,
    )


def rows(path: Path) -> list[list[str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.reader(f))


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        assert (
            generate(tmp_path / name, "--events", "30000", "--runs", "6", "--seed", seed).returncode
            == 0
        )
    a, b, c = ((tmp_path / n / "events.csv").read_bytes() for n in "abc")
    assert a == b
    assert a != c
    assert (tmp_path / "a" / "datasets.csv").read_bytes() == (
        tmp_path / "b" / "datasets.csv"
    ).read_bytes()


def test_shape(tmp_path: Path) -> None:
    assert generate(tmp_path, "--events", "60000", "--runs", "5", "--datasets", "2").returncode == 0
    table = rows(tmp_path / "events.csv")
    assert table[0] == ["run_number", "event_number", "olt_result", "dsid_raw", "fuid_raw"]
    events = [(int(r), int(e), int(o), int(d), f) for r, e, o, d, f in table[1:]]
    assert len(events) == 60000

    runs = [e[0] for e in events]
    assert runs == sorted(runs)
    assert len(set(runs)) == 5
    known_bits = sum(1 << b for b in gen_data.OLT_BITS)
    files: dict[str, list[tuple[int, int, int, int, str]]] = defaultdict(list)
    previous: tuple[int, int] | None = None
    for i, ev in enumerate(events):
        run, event, olt, _dsid, fuid = ev
        if previous is not None and previous[0] == run:
            assert event > previous[1], f"event numbers must increase within a run (row {i})"
        previous = (run, event)
        assert olt != 0
        assert olt & ~known_bits == 0
        files[fuid].append(ev)
    positions: dict[str, list[int]] = defaultdict(list)
    for i, ev in enumerate(events):
        positions[ev[4]].append(i)
    for fuid, members in files.items():
        idx = positions[fuid]
        assert idx == list(range(idx[0], idx[0] + len(idx))), "a file is one contiguous block"
        assert len({m[0] for m in members}) == 1, "a file holds one run"
        assert len({m[3] for m in members}) == 1, "a file belongs to one dataset"
        assert gen_data.MIN_FILE <= len(members) <= gen_data.MAX_FILE
    datasets = rows(tmp_path / "datasets.csv")
    assert datasets[0] == ["id", "name", "data_type", "description"]
    assert {int(d[0]) for d in datasets[1:]} == {e[3] for e in events}
    assert len({d[1] for d in datasets[1:]}) == len(datasets) - 1
    # Frequencies are roughly those documented.
    dimuon = sum(1 for e in events if e[2] & (1 << 3)) / len(events)
    assert 0.01 < dimuon < 0.03


def test_parts_and_gzip_hold_the_same_events(tmp_path: Path) -> None:
    common = ["--events", "20000", "--runs", "3", "--seed", "4"]
    assert generate(tmp_path / "one", *common).returncode == 0
    assert generate(tmp_path / "parts", *common, "--parts", "3", "--gzip").returncode == 0
    whole = rows(tmp_path / "one" / "events.csv")
    parts = sorted((tmp_path / "parts").glob("events-*.csv.gz"))
    assert [p.name for p in parts] == [
        "events-001.csv.gz",
        "events-002.csv.gz",
        "events-003.csv.gz",
    ]
    joined = [whole[0]]
    for p in parts:
        part = rows(p)
        assert part[0] == whole[0]
        joined += part[1:]
    assert joined == whole


def test_stdout_with_datasets_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.gen_data",
            "--out",
            "-",
            "--events",
            "5000",
            "--runs",
            "2",
            "--datasets-out",
            str(tmp_path / "d.csv"),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.decode().splitlines()
    assert lines[0] == gen_data.HEADER.decode().strip()
    assert len(lines) == 5001
    assert (tmp_path / "d.csv").read_text().startswith("id,name")


def test_faults(tmp_path: Path) -> None:
    assert generate(tmp_path / "clean", "--events", "10000", "--runs", "2").returncode == 0
    assert (
        generate(
            tmp_path / "bad",
            "--events",
            "10000",
            "--runs",
            "2",
            "--duplicates",
            "3",
            "--conflicts",
            "2",
            "--malformed",
            "1",
            "--unknown-dataset",
            "1",
        ).returncode
        == 0
    )
    clean = rows(tmp_path / "clean" / "events.csv")[1:]
    bad = rows(tmp_path / "bad" / "events.csv")[1:]
    assert len(bad) == len(clean) + 7
    extra = list(bad)
    for row in clean:
        extra.remove(row)
    by_kind: dict[str, int] = defaultdict(int)
    keys = {(r[0], r[1]): r for r in clean}
    for row in extra:
        if len(row) != 5 or not row[1].isdigit():
            by_kind["malformed"] += 1
        elif (row[0], row[1]) in keys and row == keys[(row[0], row[1])]:
            by_kind["duplicate"] += 1
        elif (row[0], row[1]) in keys:
            by_kind["conflict"] += 1
        else:
            by_kind["unknown dataset"] += 1
            assert int(row[3]) not in {int(r[3]) for r in clean}
    assert by_kind == {"duplicate": 3, "conflict": 2, "malformed": 1, "unknown dataset": 1}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--events", "0"], "--events must be at least 1"),
        (["--runs", "10", "--events", "5"], "--events >= --runs"),
        (["--datasets", "5", "--runs", "2"], "--datasets must not exceed --runs"),
        (["--duplicates", "-1"], "--duplicates must not be negative"),
        (["--events", "many"], "invalid int value"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], needle: str) -> None:
    result = generate(tmp_path, *args)
    assert result.returncode == 2
    err = result.stderr.decode().strip().splitlines()
    assert needle in err[-1]
    assert "Traceback" not in result.stderr.decode()


async def test_bit_names_match_the_database(scratch_database: str) -> None:
    conn = await asyncpg.connect(scratch_database)
    try:
        await migrate.apply(conn)
        stored = {r["bit"]: r["name"] for r in await conn.fetch("SELECT bit, name FROM olt_bits")}
    finally:
        await conn.close()
    assert stored == {bit: name for bit, (name, _) in gen_data.OLT_BITS.items()}


def test_format_rows_matches_python_formatting() -> None:
    import numpy as np

    run = np.array([0, 7, 2147483647])
    event = np.array([10, 0, 9223372036854775807])
    olt = np.array([1, 511, 3])
    dsid = np.array([1, 22, 333])
    fuid = np.frombuffer(b"x" * 36 * 3, dtype=np.uint8).reshape(3, 36)
    text = gen_data.format_rows(run, event, olt, dsid, fuid)
    expected = io.StringIO()
    for r, e, o, d in zip(run.tolist(), event.tolist(), olt.tolist(), dsid.tolist(), strict=True):
        expected.write(f"{r},{e},{o},{d},{'x' * 36}\n")
    assert text.decode() == expected.getvalue()
