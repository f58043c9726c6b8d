"""Metrics, request ids and logs, graceful shutdown, and a pool under pressure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr

from eventindex.config import Settings
from tests.support.localpg import free_port
from tests.support.servers import app_client, endless_upload, feed, run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow


async def test_metrics_count_requests_pairs_and_pool(client: httpx.AsyncClient) -> None:
    await client.get("/v1/events/100/1")
    await client.post("/v1/lookup", json={"pairs": [[100, 1], [9, 9], [100, 2]]})
    text = (await client.get("/metrics")).text
    assert (
        'eventindex_http_requests_total{method="GET",'
        'route="/v1/events/{run_number}/{event_number}",status="200"}'
    ) in text
    assert 'eventindex_pairs_looked_up_total{result="found"}' in text
    assert 'eventindex_pairs_looked_up_total{result="missing"}' in text
    assert 'eventindex_db_query_duration_seconds_count{query="lookup_batch"}' in text
    assert 'eventindex_pool_connections{state="open"}' in text
    assert "eventindex_pool_waiting" in text
    assert 'eventindex_http_request_duration_seconds_bucket{le="0.005",method="POST"' in text


async def test_metrics_can_be_off_or_protected(settings: Settings) -> None:
    async for client in app_client(settings.model_copy(update={"metrics_enabled": False})):
        assert (await client.get("/metrics")).status_code == 404
    protected = Settings(database_url=settings.database_url, metrics_token=SecretStr("s3cret"))
    async for client in app_client(protected):
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        ok = await client.get("/metrics", headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/health", headers={"x-request-id": "job-42.7"})
    assert given.headers["x-request-id"] == "job-42.7"
    made = [(await client.get("/health")).headers["x-request-id"] for _ in range(3)]
    assert all(re.fullmatch("[0-9a-f]{32}", m) for m in made)
    assert len(set(made)) == 3  # each request its own
    hostile = await client.get("/health", headers={"x-request-id": "a\tb" + "x" * 300})
    assert hostile.headers["x-request-id"] != "a\tb" + "x" * 300


def test_json_access_log_line(database_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "EVENTINDEX_DATABASE_URL": database_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventindex", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                asyncio.run(asyncio.sleep(0.1))
        httpx.post(
            url + "/v1/lookup",
            json={"pairs": [[100, 1], [100, 2]]},
            headers={"x-request-id": "pick-1"},
        )
        refused = httpx.get(
            url + "/v1/events/100/1", headers={"authorization": "Bearer ei_not-logged"}
        )
        assert refused.status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    entries = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    lookup = next(e for e in entries if e.get("request_id") == "pick-1")
    assert lookup["route"] == "/v1/lookup"
    assert lookup["method"] == "POST"
    assert lookup["status"] == 200
    assert lookup["pairs"] == 2
    assert lookup["client"] == "127.0.0.1"
    assert lookup["duration_ms"] > 0
    assert "not-logged" not in err


@pytest.fixture
async def feeder() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_shutdown_ends_a_stream_with_an_error_line(
    database_url: str, feeder: list[asyncio.Task[None]]
) -> None:
    with run_server(database_url, EVENTINDEX_SHUTDOWN_GRACE_SECONDS="1") as server:
        reader, writer = await endless_upload(server.url)
        feeder.append(asyncio.create_task(feed(writer, 25_000, 0.05)))
        received = b""
        while received.count(b"\n") < 60_000:
            received += await asyncio.wait_for(reader.read(65536), 30)
        # The client stops sending (a socket closed with unread input is reset) and
        # the stream waits for more when the server is told to stop.
        feeder[0].cancel()
        await asyncio.gather(feeder[0], return_exceptions=True)
        for _ in range(100):  # bounded: what the client wrote has left its buffer
            if not writer.transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), 30)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        writer.transport.abort()
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert await asyncio.to_thread(server.proc.wait, 20) in (0, -signal.SIGTERM)
    assert b'{"error"' in received[-2000:], received[-500:]
    tail = received[received.rindex(b'{"error"') :]
    last = orjson.loads(tail[: tail.index(b"\n")])
    assert last["error"]["type"] == "urn:eventindex:problem:shutting-down"
    assert last["error"]["answered"] >= 60_000


async def test_metrics_answer_on_a_database_not_migrated_yet(server_url: str) -> None:
    """Issue 16, finding 8: /metrics failed with 503 while `loads` did not exist yet."""
    from tests.support.catalogue import create_database, drop_database

    name = f"eventindex_unmigrated_{os.getpid()}"
    url = await create_database(server_url, name)
    try:
        async for client in app_client(Settings(database_url=url)):
            answer = await client.get("/metrics")
            assert answer.status_code == 200, answer.text
            assert "eventindex_pool_connections" in answer.text
            assert (await client.get("/ready")).status_code == 503  # and says why
    finally:
        await drop_database(server_url, name)


class EmbeddedRun:
    """``eventindex serve`` on its embedded PostgreSQL under ``data_dir``, in a session of its
    own (signals sent to it reach it alone), its log in a file."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTINDEX_")}
        env |= {"EVENTINDEX_DATA_DIR": str(data_dir), "EVENTINDEX_PORT": str(self.port)}
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "eventindex", "serve", "--migrate"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid_file = data_dir / "pgdata" / "postmaster.pid"
        for _ in range(300):  # bounded: the server answers once the database is up
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{self.port}/ready", timeout=1).status_code == 200:
                    break
            assert self.proc.poll() is None, "serve exited: " + log.read_text()
            time.sleep(0.1)
        else:
            raise AssertionError("serve did not start: " + log.read_text())
        self.postmaster = int(self.pid_file.read_text().split()[0])

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def running(pid: int) -> bool:
    """Whether the process still runs; waits (bounded) for one that is stopping."""
    for _ in range(100):  # pg_ctl stop waits for the server to go
        if not Path(f"/proc/{pid}").exists():
            return False
        time.sleep(0.1)
    return True


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_stopping_serve_stops_the_embedded_postgresql(tmp_path: Path, signum: int) -> None:
    """Found by the adversarial pass: `eventindex serve` on its embedded PostgreSQL, stopped
    with SIGTERM (systemd, docker stop, kill), left the database server running (uvicorn
    re-raises the signal past the exit handlers). Ctrl-C (SIGINT) and a closed terminal
    (SIGHUP, which uvicorn does not handle) must stop it too."""
    run = EmbeddedRun(tmp_path / "data", tmp_path / "serve.log")
    assert run.stop(signum) == 0
    assert not running(run.postmaster), "the embedded PostgreSQL still runs"
    assert "embedded PostgreSQL stopped" in run.log.read_text()


def test_a_server_left_by_a_killed_run_is_reused_then_stopped(tmp_path: Path) -> None:
    """Found: after `./dev run` was killed outright, its PostgreSQL ran on, and the next run,
    reusing it, never stopped it either (the wheel still counted the dead run as a user)."""
    data = tmp_path / "data"
    killed = EmbeddedRun(data, tmp_path / "killed.log")
    killed.stop(signal.SIGKILL)
    assert running(killed.postmaster)  # nothing could stop it

    second = EmbeddedRun(data, tmp_path / "second.log")
    assert second.postmaster == killed.postmaster  # found and reused
    assert (
        f"reusing the embedded PostgreSQL (pid {killed.postmaster}) left running by a run that "
        f"was killed (process {killed.proc.pid}); it stops with this one"
    ) in second.log.read_text()
    assert second.stop(signal.SIGINT) == 0
    assert not running(killed.postmaster)


def embedded_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventindex.embedded", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_dev_stop_and_reset_stop_a_server_a_killed_run_left(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = EmbeddedRun(data, tmp_path / "first.log")
    # In use by a live run: refused, in one line.
    busy = embedded_command("stop", "--data-dir", str(data))
    assert busy.returncode == 1
    assert busy.stderr.splitlines() == [
        f"eventindex: error: the embedded PostgreSQL in {(data / 'pgdata').resolve()} is in use "
        f"by process {first.proc.pid}: stop that first (Ctrl-C, or kill PID)"
    ]
    first.stop(signal.SIGKILL)
    stopped = embedded_command("stop", "--data-dir", str(data))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.endswith(": stopped it\n")
    assert not running(first.postmaster)
    again = embedded_command("stop", "--data-dir", str(data))
    assert again.stdout.endswith(": it was not running\n")

    second = EmbeddedRun(data, tmp_path / "second.log")
    second.stop(signal.SIGKILL)
    reset = embedded_command("reset", "--data-dir", str(data))
    assert reset.returncode == 0, reset.stderr
    assert "stopped it and deleted its data" in reset.stdout
    assert not running(second.postmaster)
    assert not (data / "pgdata").exists()
    nothing = embedded_command("stop", "--data-dir", str(data))
    assert nothing.stdout == f"eventindex: no embedded PostgreSQL in {data.resolve()}\n"
