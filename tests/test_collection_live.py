"""Data collection against real servers: the upload command line and client, the service
killed under fifty producers, PostgreSQL restarted under uploads."""

from __future__ import annotations

import asyncio
import csv
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from eventindex import migrate
from eventindex.client import EventIndexClient, SyncEventIndexClient
from tests.support.auth import new_token
from tests.support.loading import generate
from tests.support.localpg import free_port
from tests.support.servers import EmbeddedServer, run_server
from tests.support.uploads import CSV, as_csv, events_of, file_events, new_fuid, recount

pytestmark = pytest.mark.slow


def eventindex(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventindex", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


def files_in(path: Path) -> dict[str, set[tuple[int, int, int, int]]]:
    """The generator's events by file, read with the csv module."""
    out: dict[str, set[tuple[int, int, int, int]]] = defaultdict(set)
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            out[row["fuid_raw"]].add(
                (
                    int(row["run_number"]),
                    int(row["event_number"]),
                    int(row["olt_result"]),
                    int(row["dsid_raw"]),
                )
            )
    return out


async def test_upload_command_sends_the_generators_files_and_resumes(
    catalogue: str, tmp_path: Path
) -> None:
    generate(tmp_path / "gen", "--events", "20000", "--runs", "8", "--datasets", "2")
    expected = files_in(tmp_path / "gen" / "events.csv")
    writer = new_token(catalogue, "producer", "read", "write")
    with run_server(catalogue, EVENTINDEX_AUTH_REQUIRED="true") as server:
        env = {"EVENTINDEX_URL": server.url, "EVENTINDEX_TOKEN": writer}
        with (tmp_path / "gen" / "datasets.csv").open(newline="") as f:
            for row in csv.DictReader(f):
                made = eventindex("datasets", "create", row["name"], "--id", row["id"], env=env)
                assert made.returncode == 0, made.stderr
                assert made.stdout.startswith(f"dataset {row['id']} {row['name']}: open")
        done = eventindex("upload", str(tmp_path / "gen" / "events.csv"), "--jobs", "4", env=env)
        assert done.returncode == 0, done.stderr
        summary = done.stderr.strip().splitlines()[-1]
        assert summary.startswith(f"eventindex: {len(expected):,} files loaded (20,000 events)")
        for fuid, events in list(expected.items())[:5]:
            assert await file_events(catalogue, fuid) == events
        assert await recount(catalogue) == (20_000, len(expected), True)

        # Again: every file is skipped, nothing changes.
        again = eventindex("upload", str(tmp_path / "gen" / "events.csv"), env=env)
        assert again.returncode == 0, again.stderr
        assert f"0 files loaded (0 events), {len(expected):,} already loaded" in again.stderr

        # One raw file named by its UUID, holding an event of another file: refused (3).
        some_fuid, some_events = next(iter(expected.items()))
        run, event, _, dsid = min(some_events)
        raw = tmp_path / f"{new_fuid()}.csv"
        raw.write_text(f"run_number,event_number,olt_result\n{run},{event},1\n")
        refused = eventindex("upload", str(raw), "--dataset", str(dsid), env=env)
        assert refused.returncode == 3, refused.stderr
        assert f"is already in file {some_fuid}" in refused.stderr

        # A read token cannot upload; the command says so in one line and exits 3.
        reader = new_token(catalogue, "reader", "read")
        other = tmp_path / f"{new_fuid()}.csv"
        other.write_bytes(as_csv(events_of(99_999, 1, 10)))
        denied = eventindex(
            "upload", str(other), "--dataset", str(dsid), env={**env, "EVENTINDEX_TOKEN": reader}
        )
        assert denied.returncode == 3, denied.stderr
        assert "lacks the 'write' scope" in denied.stderr
        closed = eventindex("datasets", "close", str(dsid), env=env)
        assert closed.returncode in (0, 4), closed.stderr
        shown = eventindex("datasets", "show", str(dsid), env=env)
        assert shown.returncode == 0
        assert ": validated," in shown.stdout or ": closed," in shown.stdout
        unknown = eventindex("upload", str(other), "--dataset", "no-such", env=env)
        assert unknown.returncode == 1
        assert unknown.stderr.count("\n") == 1, unknown.stderr
        assert "No dataset 'no-such'" in unknown.stderr


async def test_the_client_uploads_from_events_and_from_a_path(
    catalogue: str, tmp_path: Path
) -> None:
    with run_server(catalogue) as server:
        async with EventIndexClient(server.url) as client:
            made = await client.create_dataset("prod", files_expected=2)
            assert made["state"] == "open"
            fuid = new_fuid()
            events = events_of(70, 1, 1000)
            answer = await client.upload_file(fuid, events, "prod")
            assert answer["result"] == "loaded"
            assert (await client.upload_file(fuid, iter(events), made["id"]))["result"] == (
                "identical"
            )
            path = tmp_path / "file.csv.gz"
            import gzip

            path.write_bytes(gzip.compress(as_csv(events_of(70, 2000, 50))))
            second = new_fuid()
            assert (await client.upload_file(second, path, "prod"))["result"] == "loaded"
        with SyncEventIndexClient(server.url) as sync:
            closed = sync.close_dataset("prod")
            assert closed["state"] == "validated"
            assert sync.dataset_status("prod")["n_files"] == 2
    assert await file_events(catalogue, second) == {
        (r, e, o, made["id"]) for r, e, o in events_of(70, 2000, 50)
    }


def _serve(url: str, port: int, stderr: Any = None) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "EVENTINDEX_DATABASE_URL": url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_LOG_LEVEL": "warning" if stderr is None else "info",
    }
    return subprocess.Popen([sys.executable, "-m", "eventindex", "serve"], env=env, stderr=stderr)


def _wait_up(base: str) -> None:
    for _ in range(200):
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("the service did not start")


async def test_service_killed_under_fifty_producers_loses_and_doubles_nothing(
    catalogue: str,
) -> None:
    conn = await asyncpg.connect(catalogue)
    await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'prod')")
    await conn.close()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    files = {new_fuid(): events_of(200 + k // 25, 1 + (k % 25) * 400, 400) for k in range(200)}
    proc = _serve(catalogue, port)
    try:
        _wait_up(base)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for fuid in files:
            queue.put_nowait(fuid)
        answered: list[str] = []
        forty = asyncio.Event()

        async def producer(client: EventIndexClient) -> None:
            while not queue.empty():
                fuid = queue.get_nowait()
                answer = await client.upload_file(fuid, files[fuid], "prod")
                answered.append(answer["result"])
                if len(answered) >= 40:
                    forty.set()

        async def killer() -> None:
            nonlocal proc
            await forty.wait()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = _serve(catalogue, port)

        async with EventIndexClient(base, retries=60, backoff=0.1, max_backoff=0.5) as client:
            await asyncio.gather(*(producer(client) for _ in range(50)), killer())
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(answered) == len(files)
    # Files whose answer the kill cut off were sent again and found loaded.
    assert set(answered) <= {"loaded", "identical"}
    assert await recount(catalogue) == (200 * 400, 200, True)
    for fuid in list(files)[::37]:
        assert await file_events(catalogue, fuid) == {(r, e, o, 1) for r, e, o in files[fuid]}
    conn = await asyncpg.connect(catalogue)
    try:
        loads = await conn.fetchval("SELECT count(DISTINCT fuid_raw) FROM loads")
    finally:
        await conn.close()
    assert loads == 200


async def test_postgresql_restarted_under_uploads_is_503_then_retries_land(
    own_server: EmbeddedServer,
) -> None:
    url = own_server.url()
    conn = await asyncpg.connect(url)
    await migrate.apply(conn)
    await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'prod')")
    await conn.close()
    files = {new_fuid(): events_of(300 + k // 10, 1 + (k % 10) * 300, 300) for k in range(60)}
    statuses: list[int] = []
    retry_after: set[str] = set()
    some_answered = asyncio.Event()
    with run_server(url, EVENTINDEX_POOL_ACQUIRE_TIMEOUT="2") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:

            async def send(fuid: str) -> None:
                while True:
                    r = await http.put(
                        f"/v1/files/{fuid}",
                        params={"dataset": "prod"},
                        content=as_csv(files[fuid]),
                        headers=CSV,
                    )
                    statuses.append(r.status_code)
                    if len(statuses) >= 15:
                        some_answered.set()
                    if r.status_code in (200, 201):
                        return
                    assert r.status_code == 503, r.text
                    retry_after.add(r.headers.get("retry-after", ""))
                    await asyncio.sleep(0.2)

            async def sender(batch: list[str]) -> None:
                for fuid in batch:
                    await send(fuid)

            async def restart() -> None:
                await some_answered.wait()
                await asyncio.to_thread(own_server.stop)
                await asyncio.sleep(1.5)
                await asyncio.to_thread(own_server.start)

            names = list(files)
            await asyncio.gather(*(sender(names[i::6]) for i in range(6)), restart())
    assert 503 in statuses
    assert 500 not in statuses
    assert "" not in retry_after
    assert await recount(url) == (60 * 300, 60, True)


async def _chunked_put(base: str, fuid: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"PUT /v1/files/{fuid}?dataset=prod HTTP/1.1\r\nHost: localhost\r\n"
        "Content-Type: text/csv\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    return reader, writer


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    status = int(head.split(b" ", 2)[1])
    return status, head


async def test_endless_and_stalled_bodies_are_cut_off_and_store_nothing(catalogue: str) -> None:
    conn = await asyncpg.connect(catalogue)
    await conn.execute("INSERT INTO datasets (id, name) VALUES (1, 'prod')")
    await conn.close()
    env = {
        "EVENTINDEX_UPLOAD_MAX_BYTES": str(1 << 20),
        "EVENTINDEX_STREAM_IDLE_TIMEOUT": "1",
        "EVENTINDEX_UPLOAD_TIMEOUT": "4",
    }
    with run_server(catalogue, **env) as server:
        # Endless: good lines for ever; the answer comes at the limit, not at the end.
        reader, writer = await _chunked_put(server.url, new_fuid())
        writer.write(b"23\r\nrun_number,event_number,olt_result\n\r\n")

        async def endless() -> None:
            event = 1
            while True:
                chunk = b"".join(b"400,%d,1\n" % e for e in range(event, event + 2000))
                event += 2000
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                await asyncio.sleep(0)

        feeding = asyncio.create_task(endless())
        try:
            status, head = await _answer(reader)
        finally:
            feeding.cancel()
            writer.close()
        assert status == 413
        assert b"problem+json" in head
        # Stalled: the body stops; the idle timeout answers.
        reader, writer = await _chunked_put(server.url, new_fuid())
        first = b"run_number,event_number,olt_result\n401,1,1\n"
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        await writer.drain()
        try:
            status, head = await _answer(reader)
        finally:
            writer.close()
        assert status == 408
        # Trickling: never idle for a second, never done; the whole-body deadline answers.
        reader, writer = await _chunked_put(server.url, new_fuid())
        first = b"run_number,event_number,olt_result\n"
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))

        async def trickle() -> None:
            event = 1
            while True:
                line = b"402,%d,1\n" % event
                writer.write(b"%x\r\n%s\r\n" % (len(line), line))
                await writer.drain()
                event += 1
                await asyncio.sleep(0.3)

        dripping = asyncio.create_task(trickle())
        try:
            status, _ = await _answer(reader)
        finally:
            dripping.cancel()
            writer.close()
        assert status == 408
    assert await recount(catalogue) == (0, 0, True)


async def test_a_body_cut_by_a_malformed_chunk_is_no_server_error(
    catalogue: str, tmp_path: Path
) -> None:
    """uvicorn answers a malformed chunk itself and gives up the connection; the handler
    reading that body must end quietly (it once logged a 500 and a write-after-close)."""
    port = free_port()
    log = tmp_path / "server.log"
    with log.open("w") as err:
        proc = _serve(catalogue, port, err)
        try:
            _wait_up(f"http://127.0.0.1:{port}")
            for head in (
                f"PUT /v1/files/{new_fuid()}?dataset=prod HTTP/1.1\r\nContent-Type: text/csv",
                "POST /v1/lookup HTTP/1.1\r\nContent-Type: application/json",
            ):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    f"{head}\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                    + b"3\r\nrun_number,event_number\r\n"  # says 3 bytes, sends more
                )
                status, _ = await _answer(reader)
                assert status == 400
                writer.close()
            await asyncio.sleep(2.5)  # past the lingering close
        finally:
            proc.terminate()
            proc.wait(10)
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "unexpected error" not in text
