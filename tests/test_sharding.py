"""A sharded catalogue on three real PostgreSQL servers: a coordinator with PL/Proxy and
postgres_fdw, events loaded through the loader, every answer checked against the same
events on a single server, a shard that goes down, and a fourth shard added."""

from __future__ import annotations

import asyncio
import contextlib
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest

from eventindex.config import Settings
from eventindex.sharding import slot_of
from tests.support.loading import generate, load
from tests.support.pgcluster import LocalServer, Root, require
from tests.support.servers import app_client

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

NDJSON = "application/x-ndjson"
FIRST_RUN, N_RUNS, N_EVENTS = 2000, 60, 30_000


@dataclass
class Layout:
    servers: list[LocalServer]
    root: Root
    coordinator: str
    reference: str
    shards: dict[str, str]
    data: Path


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    require(plproxy=True)
    root = Root()
    servers = [LocalServer(root, f"pg{i}").init().start() for i in range(3)]
    try:
        for i, server in enumerate(servers):
            server.psql(f"CREATE DATABASE shard_{'abc'[i]}")
        servers[0].psql("CREATE DATABASE coordinator")
        servers[0].psql("CREATE DATABASE reference")
        shards = {name: servers[i].url(f"shard_{name}") for i, name in enumerate("abc")}
        coordinator = servers[0].url("coordinator")
        reference = servers[0].url("reference")
        cli = [sys.executable, "-m", "eventindex"]
        subprocess.run([*cli, "migrate", "--database-url", reference], check=True, timeout=60)
        init = subprocess.run(
            [*cli, "shards", "--database-url", coordinator, "init"]
            + [f"--shard={n}={u}" for n, u in shards.items()],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert init.returncode == 0, init.stderr
        data = tmp_path_factory.mktemp("sharded")
        generate(
            data / "gen",
            *("--events", str(N_EVENTS), "--runs", str(N_RUNS), "--first-run", str(FIRST_RUN)),
            *("--parts", "2", "--duplicates", "50"),
        )
        for url in (coordinator, reference):
            done = load(url, str(data / "gen"))
            assert done.returncode == 0, done.stderr
        yield Layout(servers, root, coordinator, reference, shards, data)
    finally:
        for server in servers:
            server.stop("immediate")
        root.remove()


@pytest.fixture
async def clients(layout: Layout) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """(the sharded service, the single-server service)."""
    async for sharded in app_client(
        Settings(database_url=layout.coordinator, lookup_batch_size=700)
    ):
        async for single in app_client(
            Settings(database_url=layout.reference, lookup_batch_size=700)
        ):
            yield sharded, single


def some_pairs(n: int, seed: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    pairs = [
        (FIRST_RUN + rng.randrange(N_RUNS + 5), rng.randrange(N_EVENTS // N_RUNS + 50))
        for _ in range(n)
    ]
    return pairs + pairs[:50]  # repeated pairs too


async def test_lookups_match_the_single_server(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    sharded, single = clients
    pairs = some_pairs(4000, 1)
    answers = []
    for client in (sharded, single):
        response = await client.post("/v1/lookup", json={"pairs": pairs})
        assert response.status_code == 200, response.text
        answers.append(response.content)
    assert answers[0] == answers[1]
    found = [r["found"] for r in orjson.loads(answers[0])["results"]]
    assert 0 < sum(found) < len(found)  # found and missing pairs both

    text = "".join(f"{r} {e}\n" for r, e in some_pairs(6000, 2)).encode()
    streams = []
    for client in (sharded, single):
        response = await client.post(
            "/v1/lookup", content=text, headers={"content-type": "text/plain", "accept": NDJSON}
        )
        assert response.status_code == 200
        streams.append(response.content)
    assert streams[0] == streams[1]

    for run, event in pairs[:20]:
        one, other = [(await c.get(f"/v1/events/{run}/{event}")) for c in clients]
        assert (one.status_code, one.content) == (other.status_code, other.content)

    # Concurrent GETs go to the database together (singles.py): on the coordinator each
    # pair of such a query is routed to its own shard.
    some = pairs[:60] + pairs[:10]
    alone = [await single.get(f"/v1/events/{r}/{e}") for r, e in some]
    together = await asyncio.gather(*(sharded.get(f"/v1/events/{r}/{e}") for r, e in some))
    assert [(a.status_code, a.content) for a in alone] == [
        (t.status_code, t.content) for t in together
    ]
    assert {a.status_code for a in alone} == {200, 404}


async def test_catalogue_queries_fan_out(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    sharded, single = clients
    for path in (
        "/v1/runs?limit=1000",
        f"/v1/runs/{FIRST_RUN + 3}",
        "/v1/datasets/1/files?limit=1000",
        "/v1/selection/count?all_bits=1&by=run",
        "/v1/online-filter/overlap",
        f"/v1/selection/events?all_bits=3&run_min={FIRST_RUN}&run_max={FIRST_RUN + 9}",
    ):
        one, other = await sharded.get(path), await single.get(path)
        assert one.status_code == 200, (path, one.text)
        assert one.content.strip(), path
        assert without_times(one.content) == without_times(other.content), path


def without_times(body: bytes) -> object:
    """The answer without load times (the two catalogues were loaded moments apart)."""

    def strip(value: object) -> object:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if not k.endswith("_at")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(orjson.loads(line)) for line in body.splitlines() if line.strip()]


def test_consistency_check_matches_the_single_server(layout: Layout) -> None:
    reports = []
    for url in (layout.coordinator, layout.reference):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "eventindex",
                "check",
                "--gaps",
                "--json",
                "--database-url",
                url,
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert result.returncode in (0, 4), result.stderr
        reports.append((result.returncode, without_times(result.stdout)))
    assert reports[0] == reports[1]


async def test_each_shard_holds_only_its_runs(layout: Layout) -> None:
    conn = await asyncpg.connect(layout.coordinator)
    slots = {
        r["slot"]: r["shard"] for r in await conn.fetch("SELECT * FROM eventindex_shard_slots")
    }
    await conn.close()
    total = 0
    for name, url in layout.shards.items():
        shard = await asyncpg.connect(url)
        runs = await shard.fetch(
            "SELECT run_number, sum(n_events) AS n FROM run_olt_counts GROUP BY 1"
        )
        await shard.close()
        assert runs, name
        for r in runs:
            assert slots[slot_of(r["run_number"], len(slots))] == name
            total += r["n"]
    assert total == N_EVENTS


async def test_failed_load_changes_no_server(layout: Layout, tmp_path: Path) -> None:
    """A conflicting duplicate on one shard stops the load everywhere."""

    async def state() -> list[object]:
        counts: list[object] = []
        for url in [layout.coordinator, *layout.shards.values()]:
            conn = await asyncpg.connect(url)
            counts.append(
                await conn.fetchval(
                    "SELECT (SELECT count(*) FROM events) || '/' || (SELECT count(*) FROM loads)"
                    " || '/' || (SELECT count(*) FROM pg_prepared_xacts)"
                )
            )
            await conn.close()
        return counts

    before = await state()
    conn = await asyncpg.connect(layout.reference)
    existing = await conn.fetchrow(
        "SELECT run_number, event_number FROM events WHERE run_number = $1 LIMIT 1", FIRST_RUN + 1
    )
    assert existing is not None
    run, event = existing["run_number"], existing["event_number"]
    await conn.close()
    bad = tmp_path / "events.csv"
    lines = [
        "run_number,event_number,olt_result,dsid_raw,fuid_raw",
        *(
            f"{FIRST_RUN + N_RUNS + 7 + i},{i},1,1,00000000-0000-0000-0000-00000000000{i}"
            for i in range(5)
        ),
        f"{run},{event},1,1,00000000-0000-0000-0000-0000000000ff",  # conflicts
    ]
    bad.write_text("\n".join(lines) + "\n")
    failed = load(layout.coordinator, str(bad))
    assert failed.returncode == 1
    assert f"{bad}: line 7: conflicting duplicate: run {run} event {event}" in failed.stderr
    assert await state() == before

    skipped = load(layout.coordinator, str(bad), "--on-conflict", "skip")
    assert skipped.returncode == 0, skipped.stderr
    assert "5 new" in skipped.stdout
    assert "1 conflicts skipped" in skipped.stdout
    conn = await asyncpg.connect(layout.coordinator)
    row = await conn.fetchrow("SELECT line, run_number FROM load_conflicts ORDER BY load_id DESC")
    assert row is not None
    assert (row["line"], row["run_number"]) == (6, FIRST_RUN + 1)
    await conn.close()
    for url in (layout.reference,):
        assert load(url, str(bad), "--on-conflict", "skip").returncode == 0


async def test_careful_load_of_new_runs_on_shards(
    layout: Layout, clients: tuple[httpx.AsyncClient, httpx.AsyncClient], tmp_path: Path
) -> None:
    """A duplicate sends a shard's part down the careful path, which must make the
    partitions of new runs where `events` is (not in its private staging schema); quoted
    run numbers are routed by their value."""
    sharded, single = clients
    conn = await asyncpg.connect(layout.reference)
    known = await conn.fetchrow(
        "SELECT run_number, event_number, olt_result, dsid_raw, fuid_raw::text FROM events"
        " ORDER BY run_number, event_number LIMIT 1"
    )
    await conn.close()
    assert known is not None
    new_runs = range(900_000, 900_040, 4)  # far above every partition so far
    lines = [
        "run_number,event_number,olt_result,dsid_raw,fuid_raw",
        ",".join(str(v) for v in known.values()),
        *(
            f'"{run}",{e},2,1,00000000-0000-0000-0000-{run:012d}'
            for run in new_runs
            for e in range(3)
        ),
    ]
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    for url in (layout.coordinator, layout.reference):
        done = load(url, str(path))
        assert done.returncode == 0, done.stderr
        assert "30 new, 1 identical duplicates skipped" in done.stdout
    pairs = [[run, e] for run in new_runs for e in range(4)]
    one = await sharded.post("/v1/lookup", json={"pairs": pairs})
    other = await single.post("/v1/lookup", json={"pairs": pairs})
    assert one.status_code == 200
    assert one.json()["summary"]["found"] == 30
    assert one.content == other.content


async def test_uploads_take_the_sharded_loaders_path(
    layout: Layout, clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    """PUT /v1/files on a coordinator: the file lands on its run's shard by two-phase
    commit; the same file again changes nothing; a file colliding with it changes no
    server."""
    sharded, single = clients
    run = 950_000
    fuid = "00000000-0000-0000-0000-000000950000"
    body = "run_number,event_number,olt_result\n" + "".join(f"{run},{e},3\n" for e in range(1, 101))
    r = await sharded.put(
        f"/v1/files/{fuid}",
        params={"dataset": "1"},
        content=body,
        headers={"Content-Type": "text/csv"},
    )
    assert r.status_code == 201, r.text
    found = await sharded.post("/v1/lookup", json={"pairs": [[run, e] for e in range(1, 102)]})
    results = found.json()["results"]
    assert found.json()["summary"]["found"] == 100
    assert {x["fuid_raw"] for x in results if x["found"]} == {fuid}

    async def counts() -> list[int]:
        out = []
        for url in [layout.coordinator, *layout.shards.values()]:
            conn = await asyncpg.connect(url)
            out.append(int(await conn.fetchval("SELECT count(*) FROM events")))
            out.append(int(await conn.fetchval("SELECT count(*) FROM pg_prepared_xacts")))
            await conn.close()
        return out

    before = await counts()
    again = await sharded.put(
        f"/v1/files/{fuid}",
        params={"dataset": "1"},
        content=body,
        headers={"Content-Type": "text/csv"},
    )
    assert again.status_code == 200, again.text
    assert again.json()["result"] == "identical"
    clash = await sharded.put(
        "/v1/files/00000000-0000-0000-0000-000000950001",
        params={"dataset": "1"},
        content=body,
        headers={"Content-Type": "text/csv"},
    )
    assert clash.status_code == 409, clash.text
    assert f"run {run} event 1" in clash.json()["detail"]
    assert await counts() == before
    # The reference server holds the same, for the tests that compare the two.
    same = await single.put(
        f"/v1/files/{fuid}",
        params={"dataset": "1"},
        content=body,
        headers={"Content-Type": "text/csv"},
    )
    assert same.status_code == 201, same.text


async def test_shard_down_is_a_503_naming_it(
    layout: Layout, clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    sharded, single = clients
    down = layout.servers[2]
    conn = await asyncpg.connect(layout.coordinator)
    slots = [
        r["shard"]
        for r in await conn.fetch("SELECT shard FROM eventindex_shard_slots ORDER BY slot")
    ]
    await conn.close()
    run_on_a = next(r for r in range(FIRST_RUN, FIRST_RUN + N_RUNS) if slots[slot_of(r, 16)] == "a")
    down.stop()
    try:
        response = await sharded.post("/v1/lookup", json={"pairs": some_pairs(500, 3)})
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["title"] == "Shard unavailable"
        assert f"shard_c at 127.0.0.1:{down.port}" in problem["detail"]
        # Runs of the shards that are up are still answered.
        ok = await sharded.get(f"/v1/events/{run_on_a}/1")
        assert ok.status_code == 200
        assert ok.content == (await single.get(f"/v1/events/{run_on_a}/1")).content
    finally:
        down.start()
    again = await sharded.post("/v1/lookup", json={"pairs": some_pairs(500, 3)})
    assert again.status_code == 200
    assert (
        again.content
        == (await single.post("/v1/lookup", json={"pairs": some_pairs(500, 3)})).content
    )


async def test_adding_a_shard_moves_runs_and_keeps_answers(
    layout: Layout, clients: tuple[httpx.AsyncClient, httpx.AsyncClient]
) -> None:
    sharded, single = clients
    fourth = LocalServer(layout.root, "pg3").init().start()
    layout.servers.append(fourth)
    fourth.psql("CREATE DATABASE shard_d")
    pairs = some_pairs(2000, 5)
    expected = (await single.post("/v1/lookup", json={"pairs": pairs})).content
    adding = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "eventindex", "shards", "--database-url", layout.coordinator,
        "add", "d", fourth.url("shard_d"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    # Lookups go on while the slots move, and always find every event.
    answered = 0
    while adding.returncode is None:
        during = await sharded.post("/v1/lookup", json={"pairs": pairs})
        assert during.status_code == 200, during.text
        assert during.content == expected
        answered += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(adding.wait(), 0.01)
    out, err = await adding.communicate()
    assert adding.returncode == 0, err.decode()
    assert "shard d added: 4 slots" in out.decode()
    assert answered > 0
    conn = await asyncpg.connect(layout.coordinator)
    slots = [
        r["shard"]
        for r in await conn.fetch("SELECT shard FROM eventindex_shard_slots ORDER BY slot")
    ]
    await conn.close()
    assert sorted(slots.count(n) for n in "abcd") == [4, 4, 4, 4]
    shard_d = await asyncpg.connect(fourth.url("shard_d"))
    runs_d = {r[0] for r in await shard_d.fetch("SELECT DISTINCT run_number FROM events")}
    await shard_d.close()
    assert runs_d
    assert all(slots[slot_of(r, 16)] == "d" for r in runs_d)
    for name, url in layout.shards.items():
        shard = await asyncpg.connect(url)
        left = await shard.fetchval(
            "SELECT count(*) FROM events WHERE run_number = ANY($1)", list(runs_d)
        )
        await shard.close()
        assert left == 0, name
    pairs = some_pairs(5000, 4)
    one = await sharded.post("/v1/lookup", json={"pairs": pairs})
    other = await single.post("/v1/lookup", json={"pairs": pairs})
    assert one.status_code == 200
    assert one.content == other.content
    runs = await sharded.get("/v1/runs?limit=1000")
    assert without_times(runs.content) == without_times(
        (await single.get("/v1/runs?limit=1000")).content
    )
