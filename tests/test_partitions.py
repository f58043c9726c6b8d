"""`events` partitioned by run ranges (migration 0005): loads make partitions, lookups
prune to them, and an existing unpartitioned catalogue is upgraded in place."""

from __future__ import annotations

import itertools
import shutil
import uuid
from pathlib import Path

import asyncpg
import pytest

from eventindex import migrate
from eventindex.ingest.statements import ADD_PARTITIONS, EVENT_COLUMNS
from eventindex.migrate import migrations_dir
from tests.support.loading import generate, load


async def partitions(conn: asyncpg.Connection) -> list[tuple[str, int, int]]:
    rows = await conn.fetch("SELECT partition::text, lo, hi FROM events_partition_bounds()")
    return [(r["partition"], r["lo"], r["hi"]) for r in rows]


async def test_loader_makes_partitions_for_new_runs(catalogue: str, tmp_path: Path) -> None:
    # 250 runs from 1000: runs 1000..1249 and beyond, several 100-run partitions.
    generate(tmp_path / "a", "--events", "20000", "--runs", "250", "--first-run", "1000")
    done = load(catalogue, str(tmp_path / "a"))
    assert done.returncode == 0, done.stderr
    conn = await asyncpg.connect(catalogue)
    try:
        parts = await partitions(conn)
        assert len(parts) >= 3
        assert parts[0] == ("events_r0000001000", 1000, 1100)
        for (_, _, hi), (_, lo, _) in itertools.pairwise(parts):
            assert hi <= lo
        # Every event sits in the partition of its run and is found by a lookup.
        misplaced = await conn.fetchval(
            """
            SELECT count(*) FROM events AS e
            JOIN events_partition_bounds() AS b ON b.partition = e.tableoid::regclass
            WHERE e.run_number < b.lo OR e.run_number >= b.hi
            """
        )
        assert misplaced == 0
        total = await conn.fetchval("SELECT count(*) FROM events")
        assert total == 20000
        sample = await conn.fetch(
            "SELECT run_number, event_number, fuid_raw FROM events ORDER BY random() LIMIT 500"
        )
        found = await conn.fetch(
            "SELECT run_number, event_number, fuid_raw FROM eventindex_lookup($1, $2)",
            [r["run_number"] for r in sample],
            [r["event_number"] for r in sample],
        )
        assert {tuple(r.values()) for r in found} == {tuple(r.values()) for r in sample}
        # A probe of one event visits one partition's index.
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT * FROM events WHERE run_number = 1150 AND event_number = 7"
            )
        )
        assert "events_r0000001100_pkey" in plan, plan
        assert "events_r0000001000" not in plan, plan
    finally:
        await conn.close()


async def test_failed_load_leaves_no_partition_behind(catalogue: str, tmp_path: Path) -> None:
    generate(tmp_path / "a", "--events", "2000", "--runs", "2", "--first-run", "500")
    generate(tmp_path / "b", "--events", "2000", "--runs", "2", "--first-run", "900")
    bad = tmp_path / "b" / "events.csv"
    (tmp_path / "b" / "datasets.csv").unlink()  # its ids are the first file's
    bad.write_text(bad.read_text() + "901,1,0,99999,00000000-0000-0000-0000-000000000001\n")
    assert load(catalogue, str(tmp_path / "a")).returncode == 0
    failed = load(catalogue, str(tmp_path / "b"))
    assert failed.returncode == 1
    assert "dataset 99999 does not exist" in failed.stderr
    conn = await asyncpg.connect(catalogue)
    try:
        assert [p[0] for p in await partitions(conn)] == ["events_r0000000500"]
    finally:
        await conn.close()


async def test_partitions_fit_between_existing_ones(catalogue: str) -> None:
    conn = await asyncpg.connect(catalogue)
    try:
        await conn.execute("UPDATE events_partitioning SET runs_per_partition = 1000")
        await conn.execute(ADD_PARTITIONS, [5500])
        await conn.execute("UPDATE events_partitioning SET runs_per_partition = 300")
        # 300-wide ranges around 4950 and 6100 would overlap [5000, 6000): narrowed.
        made = await conn.fetchval(ADD_PARTITIONS, [4950, 6100, 5999, 6100])
        assert made == 2
        assert await partitions(conn) == [
            ("events_r0000004800", 4800, 5000),
            ("events_r0000005000", 5000, 6000),
            ("events_r0000006000", 6000, 6300),
        ]
        assert await conn.fetchval(ADD_PARTITIONS, [5000, 6299]) == 0
        # The last range ends past the largest run number.
        assert await conn.fetchval(ADD_PARTITIONS, [2**31 - 1]) == 1
        assert (await partitions(conn))[-1] == ("events_r2147483400", 2147483400, 2**31)
        await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'd')")
        await conn.execute("INSERT INTO events VALUES (2147483647, 1, 0, 1, gen_random_uuid())")
    finally:
        await conn.close()


async def test_upgrade_attaches_an_existing_table(scratch_database: str, tmp_path: Path) -> None:
    """A catalogue made before 0005 keeps its rows (attached, not copied) and takes loads."""
    before = tmp_path / "before"
    before.mkdir()
    for path in migrations_dir().glob("000[1-4]_*.sql"):
        shutil.copy(path, before)
    conn = await asyncpg.connect(scratch_database)
    try:
        await migrate.apply(conn, before)
        await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'old'), (2, 'new')")
        rows = [(run, ev, ev % 4, 1, uuid.uuid4()) for run in (7, 142) for ev in range(300)]
        await conn.copy_records_to_table("events", records=rows, columns=list(EVENT_COLUMNS))
        applied = await migrate.apply(conn)
        assert applied[0].version == 5  # and any later ones
        assert await partitions(conn) == [("events_legacy", 0, 200)]
        assert await conn.fetchval("SELECT count(*) FROM events") == 600
        # New runs above the old ones get partitions of their own; the summaries follow.
        await conn.execute(ADD_PARTITIONS, [150, 250])
        await conn.execute(
            "INSERT INTO events VALUES (150, 1, 0, 2, gen_random_uuid()),"
            " (250, 1, 0, 2, gen_random_uuid())"
        )
        assert [p[0] for p in await partitions(conn)] == ["events_legacy", "events_r0000000200"]
        counts = await conn.fetch(
            "SELECT run_number, sum(n_events) AS n FROM run_olt_counts GROUP BY 1 ORDER BY 1"
        )
        assert [(r["run_number"], r["n"]) for r in counts] == [
            (7, 300),
            (142, 300),
            (150, 1),
            (250, 1),
        ]
        found = await conn.fetch(
            "SELECT run_number, event_number FROM eventindex_lookup($1, $2)",
            [7, 142, 250, 251],
            [5, 299, 1, 1],
        )
        assert sorted(tuple(r.values()) for r in found) == [(7, 5), (142, 299), (250, 1)]
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await conn.execute("DELETE FROM datasets WHERE id = 2")
    finally:
        await conn.close()
