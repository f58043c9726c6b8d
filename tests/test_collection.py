"""Data collection over HTTP: datasets registered, files uploaded all or nothing and
idempotently, refused with the right answer, datasets closed and validated."""

from __future__ import annotations

import asyncio
import gzip
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from eventindex import tokens
from eventindex.config import Settings
from eventindex.db import Database
from eventindex.ingest.collector import Collector, Dataset, Upload
from eventindex.ingest.filebody import FileBody, RowBuffer
from tests.support.auth import api_tokens
from tests.support.loading import snapshot
from tests.support.servers import app_client
from tests.support.uploads import (
    CSV,
    NDJSON,
    as_csv,
    as_ndjson,
    content_digest,
    events_of,
    file_events,
    gzipped,
    new_fuid,
    recount,
)


@pytest.fixture
async def api(catalogue: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in app_client(Settings(database_url=catalogue, upload_max_bytes=1 << 20)):
        yield c


async def register(api: httpx.AsyncClient, name: str, **extra: object) -> int:
    r = await api.post("/v1/datasets", json={"name": name, **extra})
    assert r.status_code in (200, 201), r.text
    return int(r.json()["id"])


async def put(
    api: httpx.AsyncClient,
    fuid: str,
    body: bytes,
    dataset: str | int = "prod",
    headers: dict[str, str] | None = None,
    **params: str,
) -> httpx.Response:
    return await api.put(
        f"/v1/files/{fuid}",
        params={"dataset": str(dataset), **params},
        content=body,
        headers=headers or CSV,
    )


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert isinstance(body, dict)
    return body


# --- datasets ---


async def test_register_is_idempotent_and_refuses_a_different_registration(
    api: httpx.AsyncClient,
) -> None:
    r = await api.post("/v1/datasets", json={"name": "prod", "files_expected": 3})
    assert r.status_code == 201, r.text
    first = r.json()
    assert first["state"] == "open"
    assert first["files_expected"] == 3
    assert first["n_files"] == 0
    assert r.headers["location"] == f"/v1/datasets/{first['id']}"
    again = await api.post("/v1/datasets", json={"name": "prod", "files_expected": 3})
    assert again.status_code == 200
    assert again.json()["id"] == first["id"]
    other = problem(await api.post("/v1/datasets", json={"name": "prod", "files_expected": 4}), 409)
    assert "files_expected 3" in str(other["detail"])
    second = await api.post("/v1/datasets", json={"name": "prod2"})
    assert second.json()["id"] == first["id"] + 1
    taken = problem(await api.post("/v1/datasets", json={"name": "x", "id": first["id"]}), 409)
    assert "'prod'" in str(taken["detail"])


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"", "empty"),
        (b'{"name": "12345"}', "digits"),
        (b'{"name": "ok", "colour": 1}', "colour"),
        (b'{"name": "bad name"}', "name"),
        (b'{"name": "ok", "files_expected": -1}', "files_expected"),
    ],
)
async def test_bad_registrations_say_what_is_wrong(
    api: httpx.AsyncClient, body: bytes, where: str
) -> None:
    r = await api.post("/v1/datasets", content=body, headers={"Content-Type": "application/json"})
    assert where in str(problem(r, 422)["detail"])


# --- uploads that load ---


async def test_an_upload_loads_the_file_and_records_who_and_what(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    dsid = await register(api, "prod")
    fuid = new_fuid()
    events = events_of(7, 1, 500)
    r = await put(api, fuid, as_csv(events))
    assert r.status_code == 201, r.text
    assert r.json() == {
        "fuid_raw": fuid,
        "dataset": {"id": dsid, "name": "prod"},
        "events": 500,
        "result": "loaded",
    }
    assert r.headers["location"] == f"/v1/files/{fuid}"
    # Committed when answered: another connection sees it all.
    assert await file_events(catalogue, fuid) == {(r_, e, o, dsid) for r_, e, o in events}
    assert await recount(catalogue) == (500, 1, True)
    info = (await api.get(f"/v1/files/{fuid}")).json()
    assert (info["n_events"], info["first_event"], info["last_event"]) == (500, 1, 500)
    conn = await asyncpg.connect(catalogue)
    try:
        load = await conn.fetchrow("SELECT * FROM loads WHERE fuid_raw = $1", uuid.UUID(fuid))
    finally:
        await conn.close()
    assert load is not None
    assert (load["rows_read"], load["events_inserted"]) == (500, 500)
    assert load["principal"] is None  # an open service has no principals


async def test_ndjson_gzip_and_a_digest_load_the_same_events(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    dsid = await register(api, "prod")
    expected = events_of(8, 10, 300)
    bodies = {
        "ndjson": (as_ndjson(expected), NDJSON),
        "gzip csv": (gzipped(as_csv(expected)), {**CSV, "Content-Encoding": "gzip"}),
        "crlf csv, other column order": (
            as_csv(
                [(r, o, e) for r, e, o in expected], "run_number,olt_result,event_number"
            ).replace(b"\n", b"\r\n"),
            CSV,
        ),
    }
    for what, (body, headers) in bodies.items():
        fuid = new_fuid()
        shifted = [(r + len(what), e, o) for r, e, o in expected]
        if what == "crlf csv, other column order":
            body = as_csv([(r, o, e) for r, e, o in shifted], "run_number,olt_result,event_number")
            body = body.replace(b"\n", b"\r\n")
        elif what == "ndjson":
            body = as_ndjson(shifted)
        else:
            body = gzipped(as_csv(shifted))
        headers = {**headers, "Content-Digest": content_digest(body)}
        r = await put(api, fuid, body, headers=headers)
        assert r.status_code == 201, (what, r.text)
        assert await file_events(catalogue, fuid) == {(a, b, c, dsid) for a, b, c in shifted}


async def test_the_same_file_again_is_already_loaded_and_changes_nothing(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod")
    fuid = new_fuid()
    events = events_of(9, 1, 200)
    assert (await put(api, fuid, as_csv(events))).status_code == 201
    before = await snapshot(catalogue)
    # The same events in another form and order are the same file.
    for body, headers in [
        (as_csv(events), CSV),
        (as_ndjson(list(reversed(events))), NDJSON),
        (gzipped(as_csv(events)), {**CSV, "Content-Encoding": "gzip"}),
    ]:
        r = await put(api, fuid, body, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["result"] == "identical"
    assert await snapshot(catalogue) == before


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("olt", "has olt_result"),
        ("extra", "is not in the loaded file"),
        ("fewer", "events it lacks"),
    ],
)
async def test_other_events_for_a_loaded_file_are_a_conflict(
    api: httpx.AsyncClient, catalogue: str, change: str, said: str
) -> None:
    await register(api, "prod")
    fuid = new_fuid()
    events = events_of(10, 1, 100)
    assert (await put(api, fuid, as_csv(events))).status_code == 201
    before = await snapshot(catalogue)
    if change == "olt":
        other = [*events[:41], (10, 42, events[41][2] + 1), *events[42:]]
    elif change == "extra":
        other = [*events, (10, 5000, 1)]
    else:
        other = events[:-1]
    body = problem(await put(api, fuid, as_csv(other)), 409)
    assert said in str(body["detail"])
    assert "replace" in str(body["detail"])
    if change == "olt":
        assert "line 43" in str(body["detail"])  # the header is line 1
    assert await snapshot(catalogue) == before


async def test_an_event_of_another_file_refuses_the_whole_file(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod")
    first, second = new_fuid(), new_fuid()
    assert (await put(api, first, as_csv(events_of(11, 1, 100)))).status_code == 201
    before = await snapshot(catalogue)
    # Events 90-189: line 12 (event 100... no: event 90 is line 2) overlaps the first file.
    body = problem(await put(api, second, as_csv(events_of(11, 90, 100))), 409)
    assert f"line 2: run 11 event 90 is already in file {first}" in str(body["detail"])
    assert body["other_file"] == first
    assert await snapshot(catalogue) == before


async def test_an_event_twice_in_one_file_is_refused(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod")
    events = events_of(12, 1, 50)
    body = problem(await put(api, new_fuid(), as_csv([*events, events[9]])), 422)
    assert "line 52: run 12 event 10 appears more than once" in str(body["detail"])
    assert await recount(catalogue) == (0, 0, True)


async def test_bad_lines_are_numbered_and_nothing_is_loaded(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod")
    lines = [f"13,{e},1" for e in range(1, 30)]
    lines[4] = "13,x,1"  # line 6
    lines[9] = "13,-5,1"  # line 11
    lines[14] = "14,15,1"  # line 16: another run
    lines[19] = "13,20"  # line 21
    lines[24] = ""  # line 26
    body = ("run_number,event_number,olt_result\n" + "\n".join(lines) + "\n").encode()
    got = problem(await put(api, new_fuid(), body), 422)
    assert [e["line"] for e in got["errors"]] == [6, 11, 16, 21, 26]
    assert "event_number 'x' is not a whole number" in str(got["errors"])
    assert "event_number -5 is negative" in str(got["errors"])
    assert "one run" in str(got["errors"])
    bad_json = b'{"run_number": 1, "event_number": 2, "olt_result": 3}\n{"run_number": true}\n'
    got = problem(await put(api, new_fuid(), bad_json, headers=NDJSON), 422)
    assert got["errors"][0]["line"] == 2
    for body, where in [
        (b"", "empty"),
        (b"run_number,event_number,olt_result\n", "no events"),
        (b"run,event,olt\n1,2,3\n", "header"),
        (b"run_number,event_number,olt_result\n1,2,3000000000\n", "olt_result 3000000000"),
    ]:
        assert where in str(problem(await put(api, new_fuid(), body), 422)["detail"])
    assert await recount(catalogue) == (0, 0, True)


async def test_hostile_requests_get_the_right_answer_and_store_nothing(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod")
    good = as_csv(events_of(15, 1, 10))
    problem(await put(api, "not-a-uuid", good), 422)
    problem(await put(api, new_fuid(), good, dataset="nope"), 404)
    problem(await put(api, new_fuid(), good, headers={"Content-Type": "text/plain"}), 415)
    problem(await put(api, new_fuid(), good, headers={**CSV, "Content-Encoding": "br"}), 415)
    # A gzip bomb: 200 MB of lines in ~200 KB; the limit is 1 MiB decoded.
    bomb = gzip.compress(b"run_number,event_number,olt_result\n" + b"5,1,1\n" * (35 << 20), 1)
    problem(await put(api, new_fuid(), bomb, headers={**CSV, "Content-Encoding": "gzip"}), 413)
    problem(
        await put(
            api, new_fuid(), b"\x1f\x8b\x08garbage", headers={**CSV, "Content-Encoding": "gzip"}
        ),
        400,
    )
    # Larger than the limit as sent.
    problem(await put(api, new_fuid(), good + b"1,2,3\n" * 200_000), 413)
    wrong = {**CSV, "Content-Digest": content_digest(good + b"x")}
    problem(await put(api, new_fuid(), good, headers=wrong), 400)
    problem(await put(api, new_fuid(), good, headers={**CSV, "Content-Digest": "sha-256=abc"}), 400)
    assert await recount(catalogue) == (0, 0, True)


# --- datasets closing ---


async def test_close_validates_a_clean_dataset_and_refuses_new_files(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    dsid = await register(api, "prod", files_expected=2)
    for k in range(2):
        assert (
            await put(api, new_fuid(), as_csv(events_of(20, 1 + k * 100, 100)))
        ).status_code == 201
    r = await api.post("/v1/datasets/prod/close")
    assert r.status_code == 200, r.text
    closed = r.json()
    assert closed["state"] == "validated"
    assert closed["n_files"] == 2
    assert closed["close_report"]["problems"] == []
    body = problem(await put(api, new_fuid(), as_csv(events_of(20, 500, 5)), dataset=dsid), 409)
    assert "validated" in str(body["detail"])
    listed = (await api.get(f"/v1/datasets/{dsid}")).json()
    assert listed["state"] == "validated"
    assert listed["files_expected"] == 2


async def test_close_keeps_a_dataset_missing_files_closed_with_its_problem(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod", files_expected=3)
    assert (await put(api, new_fuid(), as_csv(events_of(21, 1, 10)))).status_code == 201
    closed = (await api.post("/v1/datasets/prod/close")).json()
    assert closed["state"] == "closed"
    assert closed["close_report"]["problems"] == ["1 files loaded, 3 expected"]
    assert problem(await put(api, new_fuid(), as_csv(events_of(21, 50, 5))), 409)
    status = (await api.get("/v1/datasets/prod/status")).json()
    assert status["state"] == "closed"
    assert status["n_files"] == 1
    problem(await api.post("/v1/datasets/nope/close"), 404)


async def test_the_command_line_loader_cannot_write_into_a_closed_dataset(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    dsid = await register(api, "prod")
    await api.post("/v1/datasets/prod/close")
    conn = await asyncpg.connect(catalogue)
    try:
        await conn.fetchval("SELECT events_add_partitions(ARRAY[30])")
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError, match="validated"):
            await conn.execute("INSERT INTO events VALUES (30, 1, 1, $1, gen_random_uuid())", dsid)
    finally:
        await conn.close()


# --- replacing ---


async def test_replace_swaps_the_files_events_in_one_step(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    dsid = await register(api, "prod")
    fuid = new_fuid()
    assert (await put(api, fuid, as_csv(events_of(22, 1, 100)))).status_code == 201
    new = events_of(22, 51, 80, olt=5)
    r = await put(api, fuid, as_csv(new), replace="true")
    assert r.status_code == 200, r.text
    assert r.json()["result"] == "replaced"
    assert await file_events(catalogue, fuid) == {(a, b, c, dsid) for a, b, c in new}
    assert await recount(catalogue) == (80, 1, True)
    # A replacement holding another file's event changes nothing.
    other = new_fuid()
    assert (await put(api, other, as_csv(events_of(22, 500, 10)))).status_code == 201
    before = await snapshot(catalogue)
    clash = problem(await put(api, fuid, as_csv(events_of(22, 505, 3)), replace="true"), 409)
    assert f"is already in file {other}" in clash["detail"]
    assert await snapshot(catalogue) == before


# --- groups ---


async def test_concurrent_uploads_all_land_once(api: httpx.AsyncClient, catalogue: str) -> None:
    await register(api, "prod")
    fuids = [new_fuid() for _ in range(50)]
    bodies = [as_csv(events_of(40 + k % 3, 1 + 1000 * k, 200)) for k in range(50)]
    answers = await asyncio.gather(*(put(api, f, b) for f, b in zip(fuids, bodies, strict=True)))
    assert [a.status_code for a in answers] == [201] * 50
    # And each again, concurrently with itself: exactly once.
    again = await asyncio.gather(*(put(api, f, b) for f, b in zip(fuids, bodies, strict=True)))
    assert {a.json()["result"] for a in again} == {"identical"}
    assert await recount(catalogue) == (50 * 200, 50, True)


async def test_groups_sharing_runs_never_deadlock(catalogue: str) -> None:
    """Four committers write groups that share runs, each group's files arriving in any
    run order: every file lands at the first try (the CI of an earlier session saw 500s
    from deadlocks between two groups that took two runs in opposite orders)."""
    settings = Settings(database_url=catalogue, upload_committers=4, upload_group_rows=3000)
    conn = await asyncpg.connect(catalogue)
    try:
        await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'prod')")
    finally:
        await conn.close()
    # Groups of six files whose runs come in a shuffled order: groups hold runs in
    # opposite orders.
    runs = [60 + k % 4 for k in range(160)]
    random.Random(7).shuffle(runs)
    plan = [events_of(run, 1 + 500 * k, 500) for k, run in enumerate(runs)]
    async with Database.open(settings, catalogue) as db, Collector.open(db, settings) as collector:
        buffers = [RowBuffer(collector.budget) for _ in plan]
        try:
            uploads = []
            for events, buffer in zip(plan, buffers, strict=True):
                body = FileBody(uuid.uuid4(), 1, "csv", buffer)
                body.feed(as_csv(events))
                body.finish()
                uploads.append(Upload(body, Dataset(1, "prod"), "tester"))
            outcomes = await asyncio.gather(*(collector.submit(u) for u in uploads))
        finally:
            for buffer in buffers:
                buffer.close()
        retried = collector.retried_groups
        grouped = collector.groups
    assert [o.result for o in outcomes] == ["loaded"] * len(plan)
    assert grouped < len(plan)  # files did share groups
    assert retried == 0
    assert await recount(catalogue) == (160 * 500, 160, True)


async def test_a_conflict_that_outlives_the_retries_is_503_and_loads_nothing(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    """The database refuses every try with a serialization failure (a trigger raises
    it): the client is told to send the file again, not given a 500."""
    await register(api, "prod")
    conn = await asyncpg.connect(catalogue)
    try:
        await conn.fetchval("SELECT events_add_partitions(ARRAY[70])")
        where = await conn.fetchrow("SELECT * FROM events_partition_of(70)")
        assert where is not None
        leaf = f'"{where["schema_name"]}"."{where["table_name"]}"'
        await conn.execute(
            "CREATE FUNCTION always_conflict() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN RAISE EXCEPTION 'made to conflict' USING ERRCODE = '40001'; END $$"
        )
        await conn.execute(
            f"CREATE TRIGGER always_conflict BEFORE INSERT ON {leaf}"
            " FOR EACH STATEMENT EXECUTE FUNCTION always_conflict()"
        )
    finally:
        await conn.close()
    before = await snapshot(catalogue)
    r = await put(api, new_fuid(), as_csv(events_of(70, 1, 10)))
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["retry-after"] == "1"
    assert r.json()["type"] == "urn:eventindex:problem:conflict-retry"
    assert "Send it again" in r.json()["detail"]
    assert await snapshot(catalogue) == before


async def test_a_bad_file_in_a_group_does_not_fail_the_others(catalogue: str) -> None:
    """One group, committed directly: a file that collides with the catalogue, one that
    collides with an earlier file of its own group, one with an event twice; the rest
    are written."""
    settings = Settings(database_url=catalogue)
    conn = await asyncpg.connect(catalogue)
    try:
        await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'prod')")
        await conn.fetchval("SELECT events_add_partitions(ARRAY[50])")
        held = uuid.uuid4()
        await conn.execute("INSERT INTO events VALUES (50, 1, 1, 1, $1)", held)
    finally:
        await conn.close()
    plan = {
        "good-a": events_of(50, 100, 10),
        "hits the catalogue": events_of(50, 1, 10),
        "good-b": events_of(50, 200, 10),
        "hits good-b": events_of(50, 205, 10),
        "twice": [*events_of(50, 300, 5), (50, 300, 1)],
    }
    async with Database.open(settings, catalogue) as db, Collector.open(db, settings) as collector:
        uploads = []
        buffers = []
        for events in plan.values():
            buffer = RowBuffer(collector.budget)
            buffers.append(buffer)
            body = FileBody(uuid.uuid4(), 1, "csv", buffer)
            body.feed(as_csv(events))
            body.finish()
            uploads.append(Upload(body, Dataset(1, "prod"), "tester"))
        try:
            await collector._commit(uploads)
            answers: dict[str, str] = {}
            for what, upload in zip(plan, uploads, strict=True):
                try:
                    answers[what] = (await upload.future).result
                except Exception as exc:
                    answers[what] = f"{getattr(exc, 'status', '?')}"
        finally:
            for buffer in buffers:
                buffer.close()
    assert answers == {
        "good-a": "loaded",
        "hits the catalogue": "409",
        "good-b": "loaded",
        "hits good-b": "409",
        "twice": "422",
    }
    assert await recount(catalogue) == (21, 3, True)


# --- scopes ---


async def test_scopes_write_to_upload_admin_to_replace(catalogue: str) -> None:
    conn = await asyncpg.connect(catalogue)
    try:
        reader, _ = await tokens.create(conn, "reader", ["read"], None)
        writer, _ = await tokens.create(conn, "producer", ["write"], None)
    finally:
        await conn.close()
    settings = Settings(database_url=catalogue, auth_required=True)
    async for api in app_client(settings):
        as_reader = {"Authorization": f"Bearer {reader}"}
        as_writer = {"Authorization": f"Bearer {writer}"}
        body = as_csv(events_of(60, 1, 10))
        r = await api.post("/v1/datasets", json={"name": "prod"}, headers=as_reader)
        problem(r, 403)
        problem(await api.post("/v1/datasets", json={"name": "prod"}), 401)
        r = await api.post("/v1/datasets", json={"name": "prod"}, headers=as_writer)
        assert r.status_code == 201
        fuid = new_fuid()
        problem(await put(api, fuid, body, headers={**CSV, **as_reader}), 403)
        problem(await put(api, fuid, body), 401)
        r = await put(api, fuid, body, headers={**CSV, **as_writer})
        assert r.status_code == 201, r.text
        r = await put(api, fuid, body, headers={**CSV, **as_writer}, replace="true")
        assert "admin" in str(problem(r, 403)["detail"])
        problem(await api.post("/v1/datasets/prod/close", headers=as_reader), 403)
    conn = await asyncpg.connect(catalogue)
    try:
        who = await conn.fetchval(
            "SELECT principal FROM loads WHERE fuid_raw = $1", uuid.UUID(fuid)
        )
    finally:
        await conn.close()
    assert who == "producer"


# --- large files, written while they arrive ---


async def test_a_large_file_written_as_it_arrives_is_still_all_or_nothing(
    catalogue: str,
) -> None:
    """With groups of 50 events, files of 3,000 stream straight into COPY."""
    settings = Settings(database_url=catalogue, upload_group_rows=50)
    async for api in app_client(settings):
        dsid = await register(api, "prod")
        events = events_of(80, 1, 3000)
        fuid = new_fuid()
        body = as_csv(events)
        r = await put(api, fuid, body, headers={**CSV, "Content-Digest": content_digest(body)})
        assert r.status_code == 201, r.text
        assert await file_events(catalogue, fuid) == {(a, b, c, dsid) for a, b, c in events}
        again = await put(api, fuid, body)
        assert again.json()["result"] == "identical"
        before = await snapshot(catalogue)
        bad_end = as_csv(events_of(81, 1, 3000)) + b"81,x,1\n"
        assert problem(await put(api, new_fuid(), bad_end), 422)["errors"][0]["line"] == 3002
        wrong = {**CSV, "Content-Digest": content_digest(b"other")}
        problem(await put(api, new_fuid(), as_csv(events_of(82, 1, 3000)), headers=wrong), 400)
        overlap = as_csv(events_of(80, 5001, 2000) + events_of(80, 2500, 10))
        detail = problem(await put(api, new_fuid(), overlap), 409)["detail"]
        assert f"line 2002: run 80 event 2500 is already in file {fuid}" in detail
        twice = as_csv(events_of(84, 1, 2000) + events_of(84, 7, 1))
        problem(await put(api, new_fuid(), twice), 422)
        assert await snapshot(catalogue) == before
        await api.post("/v1/datasets/prod/close")
        problem(await put(api, new_fuid(), as_csv(events_of(85, 1, 3000))), 409)
    assert await recount(catalogue) == (3000, 1, True)


# --- what an attacker tried (the red-team pass) ---


async def test_two_uploads_of_one_file_with_other_events_never_both_land(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod")
    await register(api, "other")
    for k in range(10):
        fuid = new_fuid()
        one = put(api, fuid, as_csv(events_of(90 + k, 1, 100)))
        two = put(api, fuid, as_csv(events_of(90 + k, 500, 100)), dataset="other")
        answers = sorted(r.status_code for r in await asyncio.gather(one, two))
        assert answers == [201, 409], answers
    assert await recount(catalogue) == (10 * 100, 10, True)


async def test_a_repeated_line_never_makes_a_subset_identical(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod")
    fuid = new_fuid()
    assert (await put(api, fuid, as_csv([(95, 1, 1), (95, 2, 1)]))).status_code == 201
    problem(await put(api, fuid, as_csv([(95, 1, 1), (95, 1, 1)])), 409)


async def test_replace_cannot_take_a_file_out_of_a_closed_dataset(
    api: httpx.AsyncClient, catalogue: str
) -> None:
    await register(api, "prod")
    await register(api, "next")
    fuid = new_fuid()
    assert (await put(api, fuid, as_csv(events_of(96, 1, 10)))).status_code == 201
    assert (await api.post("/v1/datasets/prod/close")).json()["state"] == "validated"
    before = await snapshot(catalogue)
    r = await put(api, fuid, as_csv(events_of(96, 1, 5)), dataset="next", replace="true")
    assert "validated" in problem(r, 409)["detail"]
    assert await snapshot(catalogue) == before


async def test_a_dataset_name_is_one_path_segment(api: httpx.AsyncClient) -> None:
    for name in ("a/b", "mine/../../datasets/1", "..", " x"):
        problem(await api.post("/v1/datasets", json={"name": name}), 422)


async def test_made_up_credentials_take_no_connection(catalogue: str) -> None:
    """Forty closes with a made-up token against a pool of two: every one is a 401, none
    waits for a connection (the credential is checked before one is taken)."""
    settings = Settings(database_url=catalogue, auth_required=True, pool_max_size=2)
    async for api in app_client(settings):
        bogus = {"Authorization": "Bearer ei_" + "x" * 40}
        answers = await asyncio.gather(
            *(api.post("/v1/datasets/1/close", headers=bogus) for _ in range(40)),
            *(api.get("/v1/datasets/1/status", headers=bogus) for _ in range(40)),
        )
        assert {r.status_code for r in answers} == {401}


async def test_a_write_only_credential_is_not_told_which_file_holds_an_event(
    catalogue: str,
) -> None:
    made = await api_tokens(catalogue, producer=["write"], operator=["read", "write"])
    writer, both = made["producer"], made["operator"]
    async for api in app_client(Settings(database_url=catalogue, auth_required=True)):
        as_writer = {**CSV, "Authorization": f"Bearer {writer}"}
        as_both = {**CSV, "Authorization": f"Bearer {both}"}
        r = await api.post("/v1/datasets", json={"name": "prod"}, headers=as_writer)
        assert r.status_code == 201
        held = new_fuid()
        assert (
            await put(api, held, as_csv(events_of(97, 1, 10)), headers=as_writer)
        ).status_code == 201
        clash = as_csv(events_of(97, 5, 3))
        blind = problem(await put(api, new_fuid(), clash, headers=as_writer), 409)
        assert held not in str(blind)
        assert "line 2: run 97 event 5 is already in another file" in blind["detail"]
        told = problem(await put(api, new_fuid(), clash, headers=as_both), 409)
        assert told["other_file"] == held
        differs = as_csv([(97, 1, 999)])
        assert (
            held
            not in problem(await put(api, held, differs, headers=as_writer), 409)["detail"][60:]
        )
        assert (
            "olt_result 999 here"
            in problem(await put(api, held, differs, headers=as_both), 409)["detail"]
        )


async def test_limits_on_a_files_size_and_name(catalogue: str) -> None:
    settings = Settings(database_url=catalogue, upload_max_events=100)
    async for api in app_client(settings):
        await register(api, "prod")
        problem(await put(api, new_fuid(), as_csv(events_of(98, 1, 101))), 413)
        assert (await put(api, new_fuid(), as_csv(events_of(98, 1, 100)))).status_code == 201
        nil = "00000000-0000-0000-0000-000000000000"
        problem(await put(api, nil, as_csv(events_of(98, 500, 1))), 422)


async def test_a_new_dataset_takes_a_free_id_even_after_the_largest(
    api: httpx.AsyncClient,
) -> None:
    hog = await api.post("/v1/datasets", json={"name": "hog", "id": 2147483647})
    assert hog.status_code == 201
    assert await register(api, "next") == 1
    assert await register(api, "after") == 2
