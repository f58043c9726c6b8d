"""Every pooled connection has one owner (issue 16): however a request ends, its
connection goes back. A leak hunt against a real uvicorn with a pool of two, and the
regression tests of the two leaks found from outside and from the code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from fastapi.routing import APIRoute

from eventindex.app import create_app
from eventindex.config import Mode, Settings
from eventindex.db import Database
from tests.support.auth import start, stop, wait_up
from tests.support.catalogue import RUNS, create_known_catalogue, drop_database, fuid_of
from tests.support.localpg import free_port
from tests.support.servers import Server, run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

POOL = {
    "EVENTINDEX_POOL_MAX_SIZE": "2",
    "EVENTINDEX_POOL_MIN_SIZE": "1",
    "EVENTINDEX_POOL_ACQUIRE_TIMEOUT": "3",
    "EVENTINDEX_STREAM_CONNECTIONS": "1",
    "EVENTINDEX_LOOKUP_BATCH_SIZE": "300",
    "EVENTINDEX_HEADER_TIMEOUT": "3",
    "EVENTINDEX_BODY_TIMEOUT": "3",
    "EVENTINDEX_STREAM_IDLE_TIMEOUT": "3",
}
RUN = RUNS[0]
FUID = fuid_of(RUN, 0)


@pytest.fixture(scope="module")
async def leak_database(server_url: str) -> AsyncIterator[str]:
    """A database of this module's own, so that its backends are the service's only."""
    name = f"eventindex_leaks_{os.getpid()}"
    yield await create_known_catalogue(server_url, name)
    await drop_database(server_url, name)


@pytest.fixture(scope="module")
def server(leak_database: str) -> Iterator[Server]:
    with run_server(leak_database, **POOL) as running:
        yield running


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def request(method: str, target: str, body: bytes = b"", **headers: str) -> bytes:
    head = [f"{method} {target} HTTP/1.1", "Host: localhost"]
    head += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def operations() -> list[bytes]:
    """One request of every catalogue and lookup operation, streams with long answers."""
    pairs = b"".join(b"%d %d\n" % (r, e) for r in RUNS for e in range(0, 1000, 3))
    json_pairs = orjson.dumps({"pairs": [[r, e] for r in RUNS for e in range(0, 1000, 7)]})
    return [
        request("GET", f"/v1/events/{RUN}/5"),
        request("GET", f"/v1/events/{RUN}/999999"),
        request("POST", "/v1/lookup", json_pairs, Content_Type="application/json"),
        request(
            "POST",
            "/v1/lookup",
            json_pairs,
            Content_Type="application/json",
            Accept="application/x-ndjson",
        ),
        request(
            "POST", "/v1/lookup", pairs, Content_Type="text/plain", Accept="application/x-ndjson"
        ),
        request("GET", f"/v1/files/{FUID}/events"),
        request("GET", f"/v1/files/{FUID}"),
        request("GET", "/v1/selection/events?any=0,1,2,3"),
        request("GET", "/v1/selection/events"),
        request("GET", "/v1/selection/count?any=0,1&group_by=run"),
        request("GET", "/v1/datasets"),
        request("GET", "/v1/datasets/1"),
        request("GET", "/v1/datasets/1/files"),
        request("GET", "/v1/datasets/1/consistency?gaps=true"),
        request("GET", "/v1/runs"),
        request("GET", f"/v1/runs/{RUN}"),
        request("GET", "/v1/online-filter/overlap"),
        request("GET", "/v1/online-filter/bits"),
    ]


async def open_socket(server: Server, small_buffer: bool = False) -> socket.socket:
    sock = socket.socket()
    if small_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address(server))
    return sock


def vanish(sock: socket.socket, reset: bool) -> None:
    if reset:  # RST instead of FIN: the server's next send fails
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def read_some(sock: socket.socket, limit: int, pause: float = 0.0) -> int:
    loop = asyncio.get_running_loop()
    got = 0
    with contextlib.suppress(OSError, TimeoutError):
        while got < limit:
            # An answer shorter than the limit is followed by silence (keep-alive).
            async with asyncio.timeout(0.5):
                chunk = await loop.sock_recv(sock, min(4096, limit - got))
            if not chunk:
                break
            got += len(chunk)
            if pause:
                await asyncio.sleep(pause)
    return got


async def hostile(server: Server, rng: random.Random, ops: list[bytes]) -> str:
    """One request of a random operation, ended badly in a random way; its kind."""
    loop = asyncio.get_running_loop()
    kind = rng.choice(["start", "cut-request", "cut-answer", "pipelined", "slow-reader"])
    raw = rng.choice(ops)
    sock = await open_socket(server, small_buffer=kind == "slow-reader")
    try:
        if kind == "start":
            # The whole request, then a reset at once: the answer's start meets a dead
            # connection.
            await loop.sock_sendall(sock, raw)
        elif kind == "cut-request":
            await loop.sock_sendall(sock, raw[: rng.randrange(1, len(raw))])
            await asyncio.sleep(rng.random() * 0.05)
        elif kind == "cut-answer":
            await loop.sock_sendall(sock, raw)
            await read_some(sock, rng.randrange(1, 20_000))
        elif kind == "pipelined":
            await loop.sock_sendall(sock, raw + rng.choice(ops) + rng.choice(ops))
            await asyncio.sleep(rng.random() * 0.02)
        else:
            await loop.sock_sendall(sock, raw)
            await read_some(sock, rng.randrange(1, 8_000), pause=0.01)
    except OSError:
        pass  # the server closed first: fine
    finally:
        vanish(sock, reset=rng.random() < 0.5)
    return kind


async def backends(url: str) -> list[str]:
    """The states of the service's backends in the module's database."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT state FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'eventindex'"
        )
    finally:
        await conn.close()
    return [r["state"] for r in rows]


async def settled(url: str, server: Server) -> tuple[list[str], dict[str, float]]:
    """Backend states and pool gauges once the service has had a moment to finish what
    it was doing (bounded: a leak stays a leak)."""
    deadline = time.monotonic() + 20
    while True:
        states = await backends(url)
        gauges = pool_gauges(server)
        if all(s == "idle" for s in states) and gauges.get("in_use", 1) == 0:
            return states, gauges
        if time.monotonic() > deadline:
            return states, gauges
        await asyncio.sleep(0.2)


def pool_gauges(server: Server) -> dict[str, float]:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("eventindex_pool_connections{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            out[state] = float(line.rsplit(" ", 1)[1])
    return out


async def answers_at_once(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
        event = await http.get(f"/v1/events/{RUN}/7")
        assert event.status_code == 200, event.text
        assert event.json()["fuid_raw"] == fuid_of(RUN, 7)
        stream = await http.get(f"/v1/files/{FUID}/events")
        assert stream.status_code == 200
        lines = [orjson.loads(x) for x in stream.text.splitlines()]
        assert [x["event_number"] for x in lines] == list(range(250))  # the file's events


async def test_finding_0_pipelined_stream_requests_then_gone(
    server: Server, leak_database: str
) -> None:
    """Found from outside: two pipelined stream requests, then the client gone, left
    both pooled connections idle in transaction for good (every later request: 503)."""
    loop = asyncio.get_running_loop()
    for target in (f"/v1/files/{FUID}/events", "/v1/selection/events?any=0,1"):
        for i in range(15):
            sock = await open_socket(server)
            await loop.sock_sendall(sock, request("GET", target) * 2)
            await asyncio.sleep(0.005)
            vanish(sock, reset=i % 2 == 0)
    states, gauges = await settled(leak_database, server)
    assert "idle in transaction" not in states, states
    assert gauges["in_use"] == 0, gauges
    await answers_at_once(server)


async def test_leak_hunt(server: Server, leak_database: str) -> None:
    """1,200 requests over every catalogue and lookup operation, each ended badly: reset at
    the answer's start, cut in the request, cut in the answer, pipelined then gone, read
    slowly then gone; 16 at a time. After them: no backend in a transaction, no pooled
    connection in use, and a normal request is answered."""
    rng = random.Random(16)
    ops = operations()
    kinds: dict[str, int] = {}
    queue = list(range(1200))

    async def worker() -> None:
        while queue:
            queue.pop()
            kind = await hostile(server, rng, ops)
            kinds[kind] = kinds.get(kind, 0) + 1

    await asyncio.gather(*(worker() for _ in range(16)))
    assert sum(kinds.values()) == 1200
    assert min(kinds.values()) > 150, kinds
    states, gauges = await settled(leak_database, server)
    assert all(s == "idle" for s in states), states
    assert gauges["in_use"] == 0, gauges
    assert server.proc.poll() is None
    await answers_at_once(server)


# --- finding 1: a response whose start cannot be sent ---------------------------------------


def scope_for(method: str, path: str, query: bytes = b"") -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def run_failing_start(app: Callable[..., Any], scope: dict[str, Any]) -> None:
    """Run one request whose send fails at the response start, as uvicorn's does when the
    client is gone; then the client is reported gone."""
    gone = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            gone.set()
            raise OSError("the client is gone")

    with contextlib.suppress(OSError):
        async with asyncio.timeout(20):
            await app(scope, receive, send)


async def test_finding_1_failed_response_start_releases(leak_database: str) -> None:
    settings = Settings(
        database_url=leak_database,
        pool_max_size=2,
        pool_min_size=0,
        stream_connections=1,
        pool_acquire_timeout=2,
    )
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        for _ in range(3):
            await run_failing_start(manager.app, scope_for("GET", f"/v1/files/{FUID}/events"))
            await run_failing_start(
                manager.app, scope_for("GET", "/v1/selection/events", b"any=0,1")
            )
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            answer = await http.get(f"/v1/files/{FUID}/events")
            assert answer.status_code == 200, answer.text
            assert len(answer.text.splitlines()) == 250
        assert "idle in transaction" not in await backends(leak_database)


# --- finding 2: the pools have one owner ----------------------------------------------------


async def test_failed_read_pool_closes_the_primary(leak_database: str) -> None:
    """Finding 2: if the read pool failed to open (here: start-up cancelled while a replica
    that accepts but never answers is being connected to), the primary pool was neither
    closed nor forgotten."""
    before = len(await backends(leak_database))
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever answers
        replica = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
        settings = Settings(
            database_url=leak_database, pool_min_size=2, read_database_urls=[replica]
        )
        assert settings.database_url is not None
        url = settings.database_url

        async def start() -> None:
            async with Database.open(settings, url):
                raise AssertionError("opened")

        task = asyncio.create_task(start())
        deadline = time.monotonic() + 20
        while len(await backends(leak_database)) < before + 2:  # the primary pool is up
            assert time.monotonic() < deadline
            assert not task.done()
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(await backends(leak_database)) == before


def test_no_dependency_runs_in_a_thread() -> None:
    """Finding 3: a plain ``def`` dependency (or a class) runs in the thread pool: two
    thread hops per lookup. Every dependency of every route is a coroutine function."""
    import inspect

    app = create_app(Settings(database_url="postgresql://u@127.0.0.1:1/x", mode=Mode.PRODUCTION))
    seen = set()

    def check(call: Any) -> None:
        name = getattr(call, "__qualname__", type(call).__qualname__)
        method = call if inspect.isroutine(call) else type(call).__call__
        is_async = inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(call)
        if inspect.isclass(call):
            is_async = False  # a class is called (built) in the thread pool
        seen.add(name)
        assert is_async, f"{name} runs in a thread"

    def walk(dependant: Any) -> None:
        for sub in dependant.dependencies:
            check(sub.call)
            walk(sub)

    def routes(items: list[Any]) -> None:
        for route in items:
            router = getattr(route, "original_router", None)
            if router is not None:  # an included router (FastAPI keeps it whole)
                for depends in router.dependencies:
                    check(depends.dependency)
                routes(router.routes)
            elif isinstance(route, APIRoute):
                walk(route.dependant)

    routes(app.routes)
    assert len(seen) >= 5


# --- (e) and finding 7: streams cancelled at shutdown ------------------------------------------


def dechunk(response: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 response."""
    _head, _, rest = response.partition(b"\r\n\r\n")
    body = bytearray()
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body += rest[:size]
        rest = rest[size + 2 :]
    return bytes(body)


async def read_all_slowly(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    data = bytearray()
    with contextlib.suppress(OSError):
        while chunk := await loop.sock_recv(sock, 16384):
            data += chunk
            await asyncio.sleep(0.005)
    return bytes(data)


@pytest.fixture
async def own_database(server_url: str) -> AsyncIterator[str]:
    """The known catalogue in a database no other server of this module uses."""
    name = f"eventindex_leaks_own_{os.getpid()}"
    yield await create_known_catalogue(server_url, name)
    await drop_database(server_url, name)


async def test_shutdown_under_streams_leaves_no_backend_and_no_traceback(
    own_database: str,
) -> None:
    """(e) A stream still running when the server stops (its client reads slowly) gets its
    closing line, no traceback is logged, and no backend is left."""
    leak_database = own_database
    port = free_port()
    env = {
        "EVENTINDEX_DATABASE_URL": leak_database,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_SHUTDOWN_GRACE_SECONDS": "1",
        "EVENTINDEX_LOG_FORMAT": "json",
        "EVENTINDEX_LOG_LEVEL": "info",
        **POOL,
    }
    proc = start([sys.executable, "-m", "eventindex", "serve"], env)
    running = Server(proc, f"http://127.0.0.1:{port}")  # type: ignore[arg-type]
    # Answers far beyond what the sockets' buffers hold: still running at the stop.
    pairs = b"".join(b"%d %d\n" % (r, e) for r in RUNS for e in range(1000)) * 60
    raw = request(
        "POST", "/v1/lookup", pairs, Content_Type="text/plain", Accept="application/x-ndjson"
    )
    readers = []
    try:
        wait_up(running.url, proc)
        for _ in range(2):
            sock = await open_socket(running, small_buffer=True)
            await asyncio.get_running_loop().sock_sendall(sock, raw)
            readers.append((sock, asyncio.create_task(read_all_slowly(sock))))
        await asyncio.sleep(0.5)
    finally:
        err = await asyncio.to_thread(stop, proc)
    answers = []
    for sock, reader in readers:
        async with asyncio.timeout(60):
            answers.append(await reader)
        sock.close()
    # uvicorn ends by raising the signal it stopped for again.
    assert proc.returncode in (0, -15), err
    for answer in answers:
        body = dechunk(answer)
        assert body.endswith(b"\n"), (len(answer), answer[:300], answer[-300:])
        last = orjson.loads(body.rstrip(b"\n").rsplit(b"\n", 1)[-1])
        assert last["error"]["type"].endswith("shutting-down"), last
    records = [orjson.loads(line) for line in err.splitlines()]  # every line is JSON
    # uvicorn says (at error level, in one line) that it cut the streams; nothing else may.
    cut = "timeout graceful shutdown exceeded"
    errors = [r for r in records if r["level"] in ("error", "critical")]
    assert all(cut in r["message"] for r in errors), err
    assert "Traceback" not in err
    assert await backends(leak_database) == []
