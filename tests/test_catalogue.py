"""Catalogue queries on generated data, checked against answers computed from the CSV."""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from eventindex import migrate
from eventindex.config import Settings
from eventindex.ingest import generator as gen_data
from tests.support.catalogue import create_database, drop_database
from tests.support.servers import app_client

Row = tuple[int, int, int, int, str]
BITS = {name: bit for bit, (name, _) in gen_data.OLT_BITS.items()}


class Generated:
    def __init__(self, url: str, rows: list[Row], out: Path) -> None:
        self.url = url
        self.rows = rows
        self.out = out


@pytest.fixture(scope="module")
async def generated(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Generated]:
    out = tmp_path_factory.mktemp("catalogue")
    gen_data.main(
        ["--out", str(out), "--events", "60000", "--runs", "6", "--datasets", "2", "--seed", "11"]
    )
    name = "eventindex_catalogue_test"
    url = await create_database(server_url, name)
    conn = await asyncpg.connect(url)
    await migrate.apply(conn)
    await conn.close()
    loaded = subprocess.run(
        [sys.executable, "-m", "tools.store_events", str(out), "--database-url", url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert loaded.returncode == 0, loaded.stderr
    with (out / "events.csv").open() as f:
        reader = csv.reader(f)
        next(reader)
        rows = [(int(r), int(e), int(o), int(d), u) for r, e, o, d, u in reader]
    yield Generated(url, rows, out)
    await drop_database(server_url, name)


@pytest.fixture
async def api(generated: Generated) -> AsyncIterator[httpx.AsyncClient]:
    async for client in app_client(Settings(database_url=generated.url)):
        yield client


async def ndjson(client: httpx.AsyncClient, url: str, **params: Any) -> list[dict[str, Any]]:
    response = await client.get(url, params=params)
    assert response.status_code == 200, response.text
    return [orjson.loads(line) for line in response.content.splitlines()]


async def test_datasets(api: httpx.AsyncClient, generated: Generated) -> None:
    page = (await api.get("/v1/datasets")).json()
    assert page["next_after"] is None
    for d in page["items"]:
        mine = [r for r in generated.rows if r[3] == d["id"]]
        assert d["n_events"] == len(mine)
        assert d["n_files"] == len({r[4] for r in mine})
        assert (d["first_run"], d["last_run"]) == (min(r[0] for r in mine), max(r[0] for r in mine))
        assert d["last_loaded_at"] is not None
    one = (await api.get("/v1/datasets", params={"limit": 1})).json()
    assert one["next_after"] == 1
    rest = (await api.get("/v1/datasets", params={"after": 1})).json()
    assert [d["id"] for d in rest["items"]] == [2]
    assert (await api.get("/v1/datasets/999")).status_code == 404


async def test_files_and_their_events(api: httpx.AsyncClient, generated: Generated) -> None:
    by_file: dict[str, list[Row]] = defaultdict(list)
    for r in generated.rows:
        by_file[r[4]].append(r)
    fuid, mine = next(iter(by_file.items()))
    info = (await api.get(f"/v1/files/{fuid}")).json()
    assert info["n_events"] == len(mine)
    assert info["run_number"] == mine[0][0]
    assert (info["first_event"], info["last_event"]) == (mine[0][1], mine[-1][1])
    assert info["dataset"].startswith("spd.raw.runs_")
    events = await ndjson(api, f"/v1/files/{fuid}/events")
    assert [(e["run_number"], e["event_number"], e["olt_result"]) for e in events] == [
        (r[0], r[1], r[2]) for r in mine
    ]
    assert (await api.get("/v1/files/00000000-0000-4000-8000-000000000000")).status_code == 404
    with (generated.out / "datasets.csv").open() as f:
        names = {int(d["id"]): d["name"] for d in csv.DictReader(f)}
    pages: list[str] = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = (await api.get("/v1/datasets/1/files", params=params)).json()
        assert {f["dataset"] for f in page["items"]} <= {names[1]}  # its name, not null
        pages += [f["fuid_raw"] for f in page["items"]]
        if page["next"] is None:
            break
        params = {"limit": 3, **page["next"]}
    assert sorted(pages) == sorted({r[4] for r in generated.rows if r[3] == 1})


async def test_runs(api: httpx.AsyncClient, generated: Generated) -> None:
    runs: list[dict[str, Any]] = []
    after = -1
    while after is not None:
        page = (await api.get("/v1/runs", params={"after": after, "limit": 4})).json()
        runs += page["items"]
        after = page["next_after"]
    per_run = Counter(r[0] for r in generated.rows)
    assert {r["run_number"]: r["n_events"] for r in runs} == dict(per_run)
    run = runs[0]["run_number"]
    detail = (await api.get(f"/v1/runs/{run}")).json()
    assert detail["n_files"] == len({r[4] for r in generated.rows if r[0] == run})
    for d in detail["decisions"]:
        expected = sum(1 for r in generated.rows if r[0] == run and r[2] & (1 << d["bit"]))
        assert d["n_events"] == expected, d
    assert (await api.get("/v1/runs/5")).status_code == 404


def matches(olt: int, all_of: int, any_of: int, none_of: int) -> bool:
    return olt & all_of == all_of and (any_of == 0 or olt & any_of != 0) and olt & none_of == 0


async def test_selection_counts_and_events(api: httpx.AsyncClient, generated: Generated) -> None:
    any_of = (1 << BITS["dimuon"]) | (1 << BITS["jpsi_candidate"])
    none_of = 1 << BITS["calibration"]
    params = {"any": "dimuon,jpsi_candidate", "none": "calibration"}
    picked = [r for r in generated.rows if matches(r[2], 0, any_of, none_of)]
    count = (await api.get("/v1/selection/count", params=params)).json()
    assert count["n_events"] == len(picked)
    by_run = (await api.get("/v1/selection/count", params={**params, "group_by": "run"})).json()
    assert {g["run_number"]: g["n_events"] for g in by_run["groups"]} == dict(
        Counter(r[0] for r in picked)
    )
    by_ds = (await api.get("/v1/selection/count", params={**params, "group_by": "dataset"})).json()
    assert {g["dsid_raw"]: g["n_events"] for g in by_ds["groups"]} == dict(
        Counter(r[3] for r in picked)
    )
    runs = sorted({r[0] for r in generated.rows})
    scope = {"run_min": runs[1], "run_max": runs[2], "all": "minimum_bias,high_pt_hadron"}
    all_of = (1 << BITS["minimum_bias"]) | (1 << BITS["high_pt_hadron"])
    expected = [
        r for r in generated.rows if runs[1] <= r[0] <= runs[2] and matches(r[2], all_of, 0, 0)
    ]
    events = await ndjson(api, "/v1/selection/events", **scope)
    assert [(e["run_number"], e["event_number"], e["fuid_raw"]) for e in events] == [
        (r[0], r[1], r[4]) for r in expected
    ]
    # Resuming after the tenth event gives the rest.
    rest = await ndjson(
        api,
        "/v1/selection/events",
        **scope,
        after_run=events[9]["run_number"],
        after_event=events[9]["event_number"],
    )
    assert rest == events[10:]
    ds = await ndjson(api, "/v1/selection/events", dataset=2, all="random_trigger")
    assert len(ds) == sum(
        1 for r in generated.rows if r[3] == 2 and r[2] & (1 << BITS["random_trigger"])
    )


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"all": "dimuon,higgs"}, 422, "'higgs' is not an Online Filter decision"),
        ({"run_min": 9, "run_max": 3}, 422, "exceeds"),
        ({"dataset": 77}, 404, "No dataset 77"),
        ({"group_by": "week"}, 422, "group_by"),
    ],
)
async def test_selection_errors(
    api: httpx.AsyncClient, params: dict[str, Any], status: int, needle: str
) -> None:
    response = await api.get("/v1/selection/count", params=params)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    assert needle in response.text


async def test_overlap(api: httpx.AsyncClient, generated: Generated) -> None:
    overlap = (await api.get("/v1/online-filter/overlap", params={"dataset": 1})).json()
    mine = [r for r in generated.rows if r[3] == 1]
    assert overlap["n_events"] == len(mine)
    for i, a in enumerate(overlap["decisions"]):
        for j, b in enumerate(overlap["decisions"]):
            both = (1 << BITS[a]) | (1 << BITS[b])
            assert overlap["matrix"][i][j] == sum(1 for r in mine if r[2] & both == both)


async def test_consistency_report_and_check_command(
    api: httpx.AsyncClient, generated: Generated
) -> None:
    clean = (await api.get("/v1/datasets/1/consistency")).json()
    assert clean["status"] == "ok"
    assert clean["problems"] == 0
    gaps = (
        await api.get("/v1/datasets/1/consistency", params={"gaps": "true", "limit": 1000})
    ).json()
    expected_gaps = [
        (a[0], a[1], b[1] - a[1] - 1)
        for a, b in zip(generated.rows, generated.rows[1:], strict=False)
        if a[3] == 1 and a[0] == b[0] and b[1] > a[1] + 1
    ]
    assert [
        (g["run_number"], g["after_event"], g["missing"]) for g in gaps["gaps"]
    ] == expected_gaps
    assert expected_gaps, "the generator leaves gaps"

    check = subprocess.run(
        [sys.executable, "-m", "eventindex", "check", "--database-url", generated.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    assert "dataset 1" in check.stdout

    # A drifted count and a skipped conflicting duplicate are problems.
    fuid = generated.rows[0][4]
    conn = await asyncpg.connect(generated.url)
    try:
        await conn.execute("UPDATE files SET n_events = n_events + 1 WHERE fuid_raw = $1", fuid)
    finally:
        await conn.close()
    conflict = generated.out / "conflict.csv"
    r = generated.rows[5]
    conflict.write_text(
        "run_number,event_number,olt_result,dsid_raw,fuid_raw\n"
        f"{r[0]},{r[1]},{r[2]},{r[3]},00000000-0000-4000-8000-00000000abcd\n"
    )
    skipped = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.store_events",
            str(conflict),
            "--on-conflict",
            "skip",
            "--database-url",
            generated.url,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert skipped.returncode == 0, skipped.stderr
    report = (await api.get("/v1/datasets/1/consistency")).json()
    assert report["status"] == "problems"
    assert [f["fuid_raw"] for f in report["files_with_wrong_counts"]] == [fuid]
    assert report["conflicting_duplicates"]["total"] == 1
    assert report["loads_with_duplicates"][0]["conflicts_skipped"] == 1
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "eventindex",
            "check",
            "--dataset",
            "1",
            "--database-url",
            generated.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 4
    assert "1 files with wrong counts, 1 conflicting duplicates" in check.stdout


# --- scopes of a dataset (issue 16, findings 5 and 6), on a catalogue made for them -----------

MIXED_RUN = 7102


def _fuid(dataset: int, k: int) -> str:
    return f"00000000-0000-4000-8000-{dataset:06d}{k:06d}"


def _mixed_rows() -> list[Row]:
    """Run 7102: three files of dataset 41 (events 0-29), three of dataset 42 (events
    100-129, with event 115 missing: one gap of one event); run 7103: one file of 42."""
    rows: list[Row] = []
    for k in range(3):
        rows += [(MIXED_RUN, 10 * k + i, 1, 41, _fuid(41, k)) for i in range(10)]
    for k in range(3):
        rows += [
            (MIXED_RUN, 100 + 10 * k + i, 2, 42, _fuid(42, k))
            for i in range(10)
            if 100 + 10 * k + i != 115
        ]
    rows += [(MIXED_RUN + 1, i, 2, 42, _fuid(42, 9)) for i in range(0, 20, 2)]  # 9 gaps
    return rows


def _write(path: Path, rows: list[Row]) -> None:
    lines = ["run_number,event_number,olt_result,dsid_raw,fuid_raw"]
    lines += [",".join(map(str, r)) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _load(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.store_events", *args, "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
async def mixed(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    out = tmp_path_factory.mktemp("mixed")
    (out / "datasets.csv").write_text(
        "id,name,data_type,description\n41,spd.mixed.a,raw,a\n42,spd.mixed.b,raw,b\n"
    )
    _write(out / "events.csv", _mixed_rows())
    name = "eventindex_mixed_test"
    url = await create_database(server_url, name)
    conn = await asyncpg.connect(url)
    await migrate.apply(conn)
    await conn.close()
    assert (loaded := _load(url, str(out))).returncode == 0, loaded.stderr
    # A second load meets an identical duplicate of dataset 41 only.
    _write(out / "again.csv", [_mixed_rows()[0]])
    assert (again := _load(url, str(out / "again.csv"))).returncode == 0, again.stderr
    yield url
    await drop_database(server_url, name)


async def test_runs_of_a_dataset_count_only_its_files(mixed: str) -> None:
    rows = _mixed_rows()
    async for api in app_client(Settings(database_url=mixed)):
        for dataset in (None, 41, 42):
            params = {} if dataset is None else {"dataset": dataset}
            items = (await api.get("/v1/runs", params=params)).json()["items"]
            got = {i["run_number"]: (i["n_events"], i["n_files"]) for i in items}
            mine = [r for r in rows if dataset is None or r[3] == dataset]
            expected = {
                run: (
                    sum(1 for r in mine if r[0] == run),
                    len({r[4] for r in mine if r[0] == run}),
                )
                for run in {r[0] for r in mine}
            }
            assert got == expected, dataset
        # The example: 3 files of each dataset in the run, not 6 for each.
        assert expected[MIXED_RUN] == (29, 3)


async def test_consistency_report_is_the_datasets_own(mixed: str) -> None:
    async for api in app_client(Settings(database_url=mixed)):
        a = (await api.get("/v1/datasets/41/consistency")).json()
        b = (await api.get("/v1/datasets/42/consistency", params={"gaps": "true"})).json()
    assert [x["duplicates_skipped"] for x in a["loads_with_duplicates"]] == [1]
    assert b["loads_with_duplicates"] == []  # the duplicate was dataset 41's
    # Gaps: one of one event in run 7102, nine of one event in run 7103: listed, exact
    # counts, and not problems.
    assert (b["n_gaps"], b["missing_events"], b["problems"], b["status"]) == (10, 10, 0, "ok")


def test_check_lists_gaps_with_exact_counts_and_exits_0(mixed: str) -> None:
    command = ["check", "--database-url", mixed, "--dataset", "42", "--gaps", "--limit", "3"]
    result = subprocess.run(
        [sys.executable, "-m", "eventindex", *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr  # gaps are not problems
    lines = result.stdout.splitlines()
    assert lines[0] == "dataset 42 spd.mixed.b: ok"
    assert "10 gaps in event numbering, 10 event numbers missing" in lines[1]
    gap_lines = [x for x in lines if x.startswith("  gap: ")]
    assert gap_lines == [
        f"  gap: run {MIXED_RUN}, 1 missing after event 114",
        f"  gap: run {MIXED_RUN + 1}, 1 missing after event 0",
        f"  gap: run {MIXED_RUN + 1}, 1 missing after event 2",
    ]
    assert lines[-1] == "  ... 7 more gaps (--limit 3 lists the first 3)"
