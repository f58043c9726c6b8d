"""Hostile clients against a real uvicorn: huge and endless bodies, slow-loris,
header floods, deep JSON, invalid UTF-8, connection churn.

Each test checks the clear answer the client gets (a problem+json with the
limit that was hit) and that the server is none the worse: it answers the next
client, holds no extra database connections, and its memory stays bounded.
The limits are set small here (environment below) so that they are reached fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.auth import new_token
from tests.support.catalogue import RUNS, busy_lookup_backends, fuid_of
from tests.support.servers import Server, endless_upload, feed, run_server

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

LIMITS = {
    "EVENTINDEX_HEADER_TIMEOUT": "2",
    "EVENTINDEX_BODY_TIMEOUT": "3",
    "EVENTINDEX_STREAM_IDLE_TIMEOUT": "3",
    "EVENTINDEX_MAX_BODY_BYTES": str(1024 * 1024),
    "EVENTINDEX_MAX_STREAM_BYTES": str(4 * 1024 * 1024),
    "EVENTINDEX_MAX_HEADER_BYTES": str(16 * 1024),
    "EVENTINDEX_MAX_HEADERS": "50",
    "EVENTINDEX_MAX_CONNECTIONS": "200",
    "EVENTINDEX_POOL_MAX_SIZE": "4",
    "EVENTINDEX_POOL_ACQUIRE_TIMEOUT": "5",
    "EVENTINDEX_LOOKUP_BATCH_SIZE": "500",
}
GIB = 1024**3
RUN = RUNS[0]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def problem(self) -> dict[str, object]:
        assert self.headers.get("content-type") == "application/problem+json", self
        problem = orjson.loads(self.body)
        assert isinstance(problem, dict)
        assert problem["status"] == self.status
        return problem


@pytest.fixture(scope="module")
def server(database_url: str) -> Iterator[Server]:
    with run_server(database_url, **LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def admin_server(database_url: str) -> Iterator[tuple[Server, str]]:
    """With authentication on: the token endpoints, whose bodies the framework reads, exist
    only there. The admin token's header goes into raw requests."""
    token = new_token(database_url, f"hostile-admin-{os.getpid()}", "admin")
    with run_server(database_url, EVENTINDEX_MODE="production", **LIMITS) as running:
        yield running, f"Authorization: Bearer {token}\r\n"


@pytest.fixture
async def http(server: Server) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


async def read_reply(reader: asyncio.StreamReader, timeout: float = 20) -> Reply:
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        else:
            body = await reader.read()
        return Reply(status, headers, body)


async def send_and_read(server: Server, data: bytes) -> Reply:
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        writer.write(data)
        await writer.drain()
        return await read_reply(reader)
    finally:
        writer.close()


async def still_serves(http: httpx.AsyncClient) -> None:
    event = 7
    response = await http.get(f"/v1/events/{RUN}/{event}")
    assert response.status_code == 200
    assert response.json()["fuid_raw"] == fuid_of(RUN, event)


async def upload_until_answered(server: Server, head: bytes, chunk: bytes, limit: int) -> Reply:
    """Send ``chunk`` after ``head`` until the server answers (or ``limit`` bytes went)."""
    reader, writer = await asyncio.open_connection(*address(server))
    sent = 0

    async def send() -> None:
        nonlocal sent
        writer.write(head)
        with contextlib.suppress(ConnectionError):
            while sent < limit:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
                await asyncio.sleep(0)  # drain() need not yield: let the reader see the answer

    sender = asyncio.create_task(send())
    try:
        reply = await read_reply(reader, 60)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.transport.abort()
    assert sent < limit, "the server read the whole gigabyte"
    return reply


def server_fds(server: Server) -> int:
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


def server_rss_mib(server: Server) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# Huge and endless bodies


async def test_gigabyte_declared_is_refused_before_it_is_sent(
    server: Server, http: httpx.AsyncClient
) -> None:
    for path, media in [("/v1/lookup", "application/json"), ("/v1/tokens", "application/json")]:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {media}\r\n"
            f"Content-Length: {GIB}\r\n\r\n"
        ).encode()
        reply = await send_and_read(server, head)
        assert reply.status == 413, (path, reply)
        assert str(1024 * 1024) in str(reply.problem()["detail"])
    await still_serves(http)


async def test_gigabyte_chunked_json_is_cut_at_the_limit(
    server: Server, admin_server: tuple[Server, str], http: httpx.AsyncClient
) -> None:
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    admin, credential = admin_server
    for target, path, auth in ((server, "/v1/lookup", ""), (admin, "/v1/tokens", credential)):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"{auth}Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        reply = await upload_until_answered(target, head, chunk, GIB)
        assert reply.status == 413, (path, reply)
        assert reply.headers["connection"] == "close"
        assert reply.problem()["type"] == "urn:eventindex:problem:body-too-large"
    await still_serves(http)


async def test_gigabyte_stream_ends_at_the_stream_limit(
    server: Server, http: httpx.AsyncClient
) -> None:
    # A valid endless stream of pairs: answered until the limit, then one error line.
    reader, writer = await endless_upload(server.url)
    sender = asyncio.create_task(feed(writer, 2000, 0))
    try:
        reply = await read_reply(reader, 60)
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.transport.abort()
    assert reply.status == 200
    text = reply.body.decode()
    assert '"found":true' in text
    assert '"error"' in text
    assert "body-too-large" in text, text[-500:]
    await still_serves(http)


# Slow clients


async def test_slow_headers_get_408_and_silent_connections_are_closed(
    server: Server, http: httpx.AsyncClient
) -> None:
    reader, writer = await asyncio.open_connection(*address(server))
    silent_reader, silent_writer = await asyncio.open_connection(*address(server))
    try:
        # A byte every 0.1 s, then nothing: the head is never finished.
        for byte in b"GET /health HTTP/1.1\r\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)
        reply = await read_reply(reader, 10)
        assert reply.status == 408
        assert reply.problem()["type"] == "urn:eventindex:problem:header-timeout"
        # The silent one was closed without an answer.
        assert await asyncio.wait_for(silent_reader.read(), 10) == b""
    finally:
        writer.close()
        silent_writer.close()
    await still_serves(http)


async def test_slow_json_body_gets_408(
    server: Server, admin_server: tuple[Server, str], http: httpx.AsyncClient
) -> None:
    body = orjson.dumps({"pairs": [{"run_number": RUN, "event_number": 1}]})
    admin, credential = admin_server
    for target, path, auth in ((server, "/v1/lookup", ""), (admin, "/v1/tokens", credential)):
        reader, writer = await asyncio.open_connection(*address(target))
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"{auth}Content-Length: {len(body)}\r\n\r\n".encode()
            )

            async def trickle(writer: asyncio.StreamWriter) -> None:
                for byte in body:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1)

            sender = asyncio.create_task(trickle(writer))
            reply = await read_reply(reader, 15)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        finally:
            writer.transport.abort()
        assert reply.status == 408, (path, reply)
        assert "3 seconds" in str(reply.problem()["detail"])
    await still_serves(http)


async def test_stalled_stream_ends_with_408(server: Server, http: httpx.AsyncClient) -> None:
    reader, writer = await endless_upload(server.url)
    try:
        pairs = b"".join(b"%d %d\n" % (RUN, e) for e in range(600))  # more than one batch
        writer.write(b"%x\r\n%s\r\n" % (len(pairs), pairs))
        await writer.drain()
        reply = await read_reply(reader, 20)
    finally:
        writer.transport.abort()
    assert reply.status == 200
    text = reply.body.decode()
    assert text.count('"found":true') == 600  # every pair sent was answered
    assert "stream-idle" in text


async def test_slow_streams_hold_no_database_connection(
    server: Server, http: httpx.AsyncClient, database_url: str
) -> None:
    # Twice as many trickling streams as the pool has connections.
    conns = [await endless_upload(server.url) for _ in range(8)]
    senders = [asyncio.create_task(feed(w, 1, 1.0)) for _, w in conns]
    try:
        await asyncio.sleep(1.5)
        assert await busy_lookup_backends(database_url) == 0
        for _ in range(3):
            response = await http.post(
                "/v1/lookup", json={"pairs": [[RUN, e] for e in range(2000)]}
            )
            assert response.status_code == 200
            assert len(response.json()["results"]) == 2000
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        for _, writer in conns:
            writer.transport.abort()


# Malformed requests


async def test_deeply_nested_json_is_a_clear_422(
    server: Server, admin_server: tuple[Server, str], http: httpx.AsyncClient
) -> None:
    depth = 100_000
    admin, credential = admin_server
    auth = dict([credential.strip().split(": ", 1)])
    for body in (b"[" * depth + b"]" * depth, b'{"pairs": ' + b"[" * depth + b"]" * depth + b"}"):
        for url, headers in ((server.url + "/v1/lookup", {}), (admin.url + "/v1/tokens", auth)):
            response = await http.post(
                url, content=body, headers={"content-type": "application/json", **headers}
            )
            assert response.status_code in (400, 422), (url, response.text[:300])
            assert response.headers["content-type"] == "application/problem+json"
    await still_serves(http)


async def test_invalid_utf8_anywhere_is_a_4xx(server: Server, http: httpx.AsyncClient) -> None:
    bad = b"\xff\xfe\xc3\x28"
    lines = b"%d 1\n%d 2%s\n" % (RUN, RUN, bad)
    response = await http.post(
        "/v1/lookup",
        content=lines,
        headers={"content-type": "text/plain", "accept": "application/json"},
    )
    assert response.status_code == 422
    assert "line 2" in response.json()["detail"]
    response = await http.post(
        "/v1/lookup",
        content=b'{"pairs": "' + bad + b'"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    stream = await http.post(
        "/v1/lookup",
        content=lines,
        headers={"content-type": "text/plain", "accept": "application/x-ndjson"},
    )
    assert stream.status_code == 422
    for raw in (
        b"GET /v1/events/" + bad + b"/1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /v1/events/%d/1?x=" % RUN + bad + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /v1/events/%d/1 HTTP/1.1\r\nHost: localhost\r\nX-Note: " % RUN + bad + b"\r\n\r\n",
        b"GET /v1/events/%d/1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " % RUN
        + bad
        + b"\r\n\r\n",
        b"GET /v1/events/%25ff/1 HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ):
        reply = await send_and_read(server, raw)
        assert 200 <= reply.status < 500, (raw, reply)
    await still_serves(http)


async def test_header_floods_get_431_and_cost_no_memory(
    server: Server, http: httpx.AsyncClient
) -> None:
    before = server_rss_mib(server)
    many = b"".join(b"X-Flood-%d: %s\r\n" % (i, b"a" * 50) for i in range(200_000))
    huge = b"X-Huge: " + b"a" * (50 * 1024 * 1024) + b"\r\n"
    for flood in (many, huge):
        replies = await asyncio.gather(
            *(
                send_and_read(
                    server, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + flood + b"\r\n"
                )
                for _ in range(4)
            )
        )
        for reply in replies:
            assert reply.status == 431
            assert reply.problem()["type"] == "urn:eventindex:problem:header-too-large"
    # 4 x 10 MB and 4 x 50 MB were sent; what the server keeps is bounded by its limit.
    assert server_rss_mib(server) - before < 40
    await still_serves(http)


async def test_unread_body_bytes_do_not_keep_a_connection_for_ever(server: Server) -> None:
    """Found by the adversarial pass: a request with a body its answer does not wait for,
    then one body byte: uvicorn cancelled its keep-alive timer and armed none, so 2048
    such sockets held every connection slot (503 for everyone) as long as they liked."""
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        await writer.drain()
        assert (await read_reply(reader)).status == 200
        writer.write(b"1")
        await writer.drain()
        # Closed after the head timeout (2 s here); a hang would never end.
        async with asyncio.timeout(20):
            rest = await reader.read()
        assert rest == b"" or rest.startswith(b"HTTP/1.1 408")
    finally:
        writer.close()


async def test_head_over_the_limit_in_one_read_gets_431(
    server: Server, http: httpx.AsyncClient
) -> None:
    """Found: the size was checked between reads only, so a whole head that arrived in one
    read (100-180 KB against a 64 KiB limit) was processed. Limit here: 16 KiB."""
    limit = int(LIMITS["EVENTINDEX_MAX_HEADER_BYTES"])
    for size in (limit + 100, 2 * limit, 5 * limit):
        head = b"GET /v1/events/%d/1 HTTP/1.1\r\nHost: localhost\r\nX-Pad: %s\r\n\r\n" % (
            RUN,
            b"a" * size,
        )
        reader, writer = await asyncio.open_connection(*address(server))
        try:
            writer.write(head)  # one write: on loopback it arrives as one read
            await writer.drain()
            reply = await read_reply(reader)
        finally:
            writer.close()
        assert reply.status == 431, (size, reply)
        assert reply.problem()["type"] == "urn:eventindex:problem:header-too-large"
    # A long URL counts too, and a head just under the limit is served.
    long_url = b"GET /v1/events/%d/1?pad=%s HTTP/1.1\r\nHost: localhost\r\n\r\n" % (
        RUN,
        b"a" * (limit + 10),
    )
    assert (await send_and_read(server, long_url)).status == 431
    fits = b"GET /v1/events/%d/1 HTTP/1.1\r\nHost: localhost\r\nX-Pad: %s\r\n\r\n" % (
        RUN,
        b"a" * (limit - 200),
    )
    assert (await send_and_read(server, fits)).status == 200
    await still_serves(http)


# Connections


async def test_connection_churn_leaves_nothing_behind(
    server: Server, http: httpx.AsyncClient
) -> None:
    await still_serves(http)
    fds_before = server_fds(server)
    rss_before = server_rss_mib(server)
    host, port = address(server)
    request = f"GET /v1/events/{RUN}/3 HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()

    async def churn(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            kind = i % 4
            if kind == 0:  # a whole request, then close
                writer.write(request)
                await writer.drain()
                reply = await read_reply(reader)
                assert reply.status == 200
            elif kind == 1:  # half a request, then close
                writer.write(request[:20])
                await writer.drain()
            elif kind == 2:  # a request, then reset before reading the answer
                writer.write(request)
                await writer.drain()
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
            # kind 3: connect and close at once
        finally:
            writer.close()

    total = 0
    while total < 4000:
        results = await asyncio.gather(
            *(churn(total + i) for i in range(100)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        total += 100
    await still_serves(http)
    for _ in range(50):
        if server_fds(server) <= fds_before + 2:
            break
        await asyncio.sleep(0.1)
    assert server_fds(server) <= fds_before + 2
    assert server_rss_mib(server) - rss_before < 30


async def test_too_many_connections_get_503(server: Server, http: httpx.AsyncClient) -> None:
    opened = []
    try:
        for _ in range(200):
            opened.append(await asyncio.open_connection(*address(server)))
        reply = await send_and_read(server, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert reply.status == 503
        assert reply.headers["retry-after"]
        assert "200 connections" in str(reply.problem()["detail"])
    finally:
        for _, writer in opened:
            writer.transport.abort()
    await asyncio.sleep(0.3)
    await still_serves(http)


async def test_pipelined_requests_are_all_answered(server: Server) -> None:
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        writer.write(
            b"".join(
                b"GET /v1/events/%d/%d HTTP/1.1\r\nHost: localhost\r\n\r\n" % (RUN, e)
                for e in (1, 2, 3)
            )
        )
        await writer.drain()
        replies = [await read_reply(reader) for _ in range(3)]
    finally:
        writer.close()
    assert [r.status for r in replies] == [200, 200, 200]
    assert [orjson.loads(r.body)["event_number"] for r in replies] == [1, 2, 3]


async def test_an_answer_before_the_server_closes_arrives_whole(server: Server) -> None:
    """The server holds an answer's small writes to send them together (httpguard): a
    ``Connection: close`` answer must still go out whole before the connection ends."""
    reader, writer = await asyncio.open_connection(*address(server))
    try:
        writer.write(
            b"GET /v1/events/%d/4 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n" % RUN
        )
        await writer.drain()
        async with asyncio.timeout(20):
            everything = await reader.read()  # to the end of the connection
    finally:
        writer.close()
    head, _, body = everything.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert orjson.loads(body)["fuid_raw"] == fuid_of(RUN, 4)


def test_httpguard_hooks_exist_in_the_installed_uvicorn() -> None:
    """httpguard overrides these members of uvicorn's httptools protocol (and reads the
    attributes): if an upgrade renamed one, the limits would silently stop applying. The
    slow-header, flood and keep-alive tests above check that they still work."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from eventindex.middleware.httpguard import GuardedProtocol

    overridden = [
        "connection_made",
        "connection_lost",
        "data_received",
        "send_400_response",
        "on_message_begin",
        "on_url",
        "on_header",
        "on_headers_complete",
    ]
    for name in overridden:
        assert callable(getattr(HttpToolsProtocol, name, None)), name
        assert name in GuardedProtocol.__dict__, name
    source = Path(HttpToolsProtocol.__init__.__code__.co_filename).read_text()
    for attribute in ("self.timeout_keep_alive_task", "self.cycle", "self.connections"):
        assert attribute in source, attribute
