"""The NDJSON lookup stream: an ASGI response that reads the request body while it answers.

One line out per pair in, in input order, produced batch by batch. The
request body is consumed incrementally into a ``Spool`` by a task of its own,
so memory stays bounded whatever the size of the request and whether or not
the client reads while it sends. Errors found before the first answer are
ordinary problem+json responses; after it, the stream ends with one line
``{"error": {...problem...}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from eventindex.config import Settings
from eventindex.db import Lane, PoolExhausted
from eventindex.lookup import CSV_HEADER, Batch, iterate_batches, lookup_batches
from eventindex.metrics import count_pairs
from eventindex.metrics import current as current_metrics
from eventindex.middleware.interactive import admit_bulk, bulk_turn
from eventindex.pairs import PairParser, PairSyntaxError
from eventindex.problems import Problem, database_problem
from eventindex.spool import BodyTooLarge, Spool

NDJSON = "application/x-ndjson"
CSV = "text/csv; charset=utf-8"
MAX_LINE_BYTES = 64 * 1024
# Rows of a catalogue stream fetched and sent at a time.
CURSOR_BATCH = 5_000

log = logging.getLogger("eventindex")


class ClientGone(Exception):
    pass


def syntax_problem(exc: PairSyntaxError) -> Problem:
    return Problem(
        422,
        "invalid-pairs",
        "Invalid pairs",
        str(exc),
        errors=[{"line": e.line, "message": e.reason} for e in exc.errors],
    )


def no_pairs(empty: bool) -> Problem:
    what = "is empty" if empty else "contains no pairs"
    return Problem(422, "no-pairs", "No pairs", f"The request body {what}.")


def _too_large_problem(limit: int) -> Problem:
    return Problem(
        413,
        "body-too-large",
        "Request body too large",
        f"The request body exceeds the limit of {limit} bytes; split the input.",
        # The rest of the body is not wanted: close rather than read and drop it all.
        headers={"Connection": "close"},
    )


def _problem_for(exc: BaseException) -> Problem | None:
    if isinstance(exc, PairSyntaxError):
        return syntax_problem(exc)
    if isinstance(exc, BodyTooLarge):
        return _too_large_problem(exc.limit)
    if isinstance(exc, Problem):
        return exc
    return database_problem(exc)


async def spooled_batches(
    spool: Spool, batch_size: int, parser: PairParser | None = None
) -> AsyncIterator[tuple[list[bytes], list[bytes]]]:
    """Pairs parsed from the spooled body (their digits), in batches of at most
    ``batch_size``.

    After the first batch, a batch goes out early when no more input is
    waiting, so a client that sends slowly gets answers as it goes. The first
    batch always waits to be full (or for the end), so that a bad line within
    the first ``batch_size`` pairs fails the request before anything is
    answered, whatever the timing; a bad line later ends the stream after the
    pairs before it. A parser that collects errors instead never stops.
    """
    parser = parser or PairParser()
    limit = MAX_LINE_BYTES
    total = 0
    runs: list[bytes] = []
    events: list[bytes] = []
    # The start of a line whose end has not come yet, in the pieces it came in (joined
    # once, when its end comes: a line sent a byte at a time costs no more than another).
    pending: list[bytes] = []
    pending_size = 0
    pieces = _pieces(spool)
    empty = True
    while True:
        if runs and total and not spool.has_data():
            total += len(runs)
            yield runs, events
            runs, events = [], []
        data = await anext(pieces, b"")
        if not data:
            break
        empty = False
        cut = data.rfind(b"\n")
        if cut < 0:
            pending.append(data)
            pending_size += len(data)
        else:
            lines = b"".join((*pending, data[: cut + 1])) if pending else data[: cut + 1]
            rest = data[cut + 1 :]
            pending, pending_size = ([rest], len(rest)) if rest else ([], 0)
            # A line too long is refused however it came, in pieces or whole within one
            # read: stop at the first one. Each step passes up to `limit` bytes.
            checked = 0  # the lines before this are short enough
            while len(lines) - checked > limit:
                newline = lines.rfind(b"\n", checked, checked + limit + 1)
                if newline < 0:
                    break
                checked = newline + 1
            long_line = len(lines) - checked > limit
            r, e = parser.feed_tokens(lines[:checked] if long_line else lines)
            runs += r
            events += e
            if long_line and parser.failure is None:
                parser.failure = PairSyntaxError.single(
                    parser.line_no + 1, f"line longer than {limit} bytes"
                )
            if parser.failure is not None:
                break
        if pending_size > limit:
            parser.failure = PairSyntaxError.single(
                parser.line_no + 1, f"line longer than {limit} bytes"
            )
            break
        while len(runs) >= batch_size:
            total += batch_size
            yield runs[:batch_size], events[:batch_size]
            runs, events = runs[batch_size:], events[batch_size:]
    if pending and parser.failure is None:
        r, e = parser.feed_tokens(b"".join(pending))
        runs += r
        events += e
    if parser.failure is not None:
        if total + len(runs) < batch_size:
            raise parser.failure
    elif not runs and total == 0:
        parser.raise_collected()
        raise no_pairs(empty)
    # The last line may hold many pairs (";"): still no batch over batch_size.
    for start in range(0, len(runs), batch_size):
        yield runs[start : start + batch_size], events[start : start + batch_size]
    if parser.failure is not None:
        raise parser.failure


# Bytes of body parsed at a time: about 1,500 pairs, about a millisecond, after which the
# event loop gets its turn (a megabyte at once held it for tens of milliseconds, which every
# other request of the process waited for; 16 kB measured better than 64 kB with bench qos).
PARSE_STEP = 16 * 1024


async def _pieces(spool: Spool) -> AsyncIterator[bytes]:
    while data := await spool.read():
        for start in range(0, len(data), PARSE_STEP):
            yield data[start : start + PARSE_STEP]
            await bulk_turn()


class LookupStream(Response):
    """``POST /v1/lookup`` answered as NDJSON."""

    media_type = NDJSON

    def __init__(
        self,
        lane: Lane,
        settings: Settings,
        pairs: tuple[list[int], list[int]] | None = None,
        *,
        report_invalid: bool = False,
        csv: bool = False,
    ) -> None:
        super().__init__(media_type=CSV if csv else NDJSON)
        self.lane = lane
        # CSV rows under a header line instead of NDJSON; such a stream has no way to say
        # why it failed part-way: it is cut off, so that the client sees it incomplete.
        self.csv = csv
        self.settings = settings
        self.pairs = pairs  # already parsed from a JSON body; else the body is read here
        # Bad lines are reported in the stream ({"line": N, "error": ...}) and skipped,
        # and the stream ends with a summary line, instead of stopping at the first.
        self.report_invalid = report_invalid
        self.parser = PairParser(collect_errors=report_invalid)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with _tracked(scope):
            await self._run(scope, receive, send)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        with Spool(self.settings.spool_memory_bytes, self.settings.max_stream_bytes) as spool:
            await self._stream(scope, receive, send, spool)

    async def _stream(self, scope: Scope, receive: Receive, send: Send, spool: Spool) -> None:
        if self.pairs is not None:
            spool.finish()
        gone = asyncio.Event()
        reader = asyncio.create_task(self._read_body(receive, spool, gone, self.pairs is None))
        writer = asyncio.create_task(self._respond(scope, send, spool))
        waiter = asyncio.create_task(gone.wait())
        try:
            try:
                await asyncio.wait({writer, waiter}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # The server is stopping: the writer ends the stream with an error line.
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
                _stopped_quietly()
                return
            if not writer.done():
                # The client went away: stop the queries and give the connections back now.
                writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        finally:
            reader.cancel()
            waiter.cancel()
            await asyncio.gather(reader, waiter, return_exceptions=True)

    async def _read_body(
        self, receive: Receive, spool: Spool, gone: asyncio.Event, body: bool
    ) -> None:
        idle = self.settings.stream_idle_timeout
        while True:
            if body:
                try:
                    message: Message = await asyncio.wait_for(receive(), idle)
                except TimeoutError:
                    # A client that stops sending would hold its request for ever.
                    spool.fail(
                        Problem(
                            408,
                            "stream-idle",
                            "Request body stalled",
                            f"No more of the request body arrived for {idle:g} seconds.",
                            headers={"Connection": "close"},
                        )
                    )
                    return
            else:
                message = await receive()
            if message["type"] == "http.disconnect":
                spool.fail(ClientGone())
                gone.set()
                return
            if message["type"] == "http.request" and body:
                spool.write(message.get("body", b""))
                if not message.get("more_body", False):
                    spool.finish()
                    body = False

    def _batches(self, spool: Spool) -> AsyncIterator[Batch]:
        size = self.settings.lookup_batch_size
        if self.pairs is not None:
            return iterate_batches(*self.pairs, size)
        return spooled_batches(spool, size, self.parser)

    async def _respond(self, scope: Scope, send: Send, spool: Spool) -> None:
        began = time.perf_counter()
        try:
            await self._answer(scope, send, spool)
        finally:
            metrics = current_metrics.get()
            if metrics is not None:
                metrics.streams.observe(time.perf_counter() - began)

    async def _answer(self, scope: Scope, send: Send, spool: Spool) -> None:
        started = False
        path = scope.get("path")
        requested = found = 0
        state = scope.setdefault("state", {})

        async def write(body: bytes) -> None:
            nonlocal started
            if not started:
                started = True
                headers = [(b"content-type", self.media_type.encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                if self.csv:
                    body = CSV_HEADER + body
            await send({"type": "http.response.body", "body": body, "more_body": True})

        try:
            batches = self._batches(spool)
            async for result in lookup_batches(
                self.lane,
                batches,
                "\n",
                width=self.settings.stream_connections,
                csv=self.csv,
                interactive_below=self.settings.lookup_batch_size,
            ):
                requested += result.requested
                found += result.found
                state["pairs"] = requested
                count_pairs(result.found, result.requested)
                await write(result.body + b"\n" + self._invalid_lines())
            if self.report_invalid:
                summary = {
                    "requested": requested,
                    "found": found,
                    "missing": requested - found,
                    "invalid_lines": self.parser.error_count,
                }
                await write(self._invalid_lines() + orjson.dumps({"summary": summary}) + b"\n")
        except ClientGone:
            return
        except asyncio.CancelledError:
            # The server is stopping (or the client left, and then this goes nowhere):
            # say so rather than end the output as if it were complete.
            if started and not self.csv:
                what = f"{requested} answers; ask again for the pairs after them"
                await _last_words(send, _stopping_line(path, requested, what))
            raise
        except Exception as exc:
            problem = _problem_for(exc) or Problem(
                500, "internal", "Internal error", "The lookup stream failed."
            )
            if problem.status == 500:
                log.exception("lookup stream failed")
            elif problem.status > 500:
                log.warning("lookup stream: %s", problem.detail)
            if not started:
                response = problem.response(path)
                await response(scope, _no_receive, send)
                return
            if self.csv:
                # Cut off: without its last chunk the answer is seen to be incomplete (the
                # server then logs that the response was not completed).
                log.info(
                    "CSV lookup stream cut off after %d answers: %s", requested, problem.detail
                )
                return
            await write(orjson.dumps({"error": problem.body(path)}) + b"\n")
        await write(b"")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _invalid_lines(self) -> bytes:
        return b"".join(
            orjson.dumps({"line": e.line, "error": e.reason}) + b"\n"
            for e in self.parser.take_errors()
        )


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _stopped_quietly() -> None:
    """A stream the server cancelled at shutdown has written its closing line and ends as
    an answer does: re-raising would only make the server log a traceback."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


@contextlib.contextmanager
def _tracked(scope: Scope) -> Iterator[None]:
    """The running stream is known to the lifespan, so that a shutdown waits for its
    closing line."""
    streams: set[asyncio.Task[Any]] | None = scope.get("state", {}).get("streams")
    task = asyncio.current_task()
    if streams is None or task is None:
        yield
        return
    streams.add(task)
    try:
        yield
    finally:
        streams.discard(task)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class CursorStream(Response):
    """A catalogue query's rows as NDJSON, from a cursor in a read-only transaction.

    The response owns its connection: acquired when the server runs the response and
    released in the same block, whatever ends it (the last row, a failed query, the
    client leaving, a failed send of the response start, a shutdown). A response that
    is never run holds nothing. Errors before the first row are a problem answer;
    after it, a closing ``{"error": ...}`` line.
    """

    media_type = NDJSON

    def __init__(self, lane: Lane, query: str, *args: Any) -> None:
        super().__init__(media_type=NDJSON)
        self.lane = lane
        self.query = query
        self.args = args

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with _tracked(scope):
            writer = asyncio.create_task(self._stream(scope, send))
            watcher = asyncio.create_task(_disconnected(receive))
            try:
                try:
                    await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
                except asyncio.CancelledError:
                    writer.cancel()  # the server is stopping: the writer says so
                    with contextlib.suppress(asyncio.CancelledError):
                        await writer
                    _stopped_quietly()
                    return
                if not writer.done():
                    writer.cancel()  # the client left: stop the query, give the connection back
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    # OSError: the send failed, the client is gone (uvicorn's
                    # ClientDisconnected); the connection went back as the writer ended.
                    await writer
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _stream(self, scope: Scope, send: Send) -> None:
        path = scope.get("path")
        started = False
        rows = 0
        try:
            await admit_bulk()
            async with self.lane.acquire(bulk=True) as conn, conn.transaction(readonly=True):
                head = [(b"content-type", NDJSON.encode())]
                await send({"type": "http.response.start", "status": 200, "headers": head})
                started = True
                batch: list[bytes] = []
                async for row in conn.cursor(self.query, *self.args, prefetch=CURSOR_BATCH):
                    batch.append(orjson.dumps(dict(row)))
                    if len(batch) >= CURSOR_BATCH:
                        rows += len(batch)
                        await _body(send, b"\n".join(batch) + b"\n")
                        batch = []
                        await bulk_turn()
                if batch:
                    await _body(send, b"\n".join(batch) + b"\n")
        except asyncio.CancelledError:
            if started:
                await _last_words(send, _stopping_line(path, rows, f"{rows} lines"))
            raise
        except Problem as refused:  # no turn among the bulk requests
            await refused.response(path)(scope, _no_receive, send)
            return
        except (asyncpg.PostgresError, asyncpg.InterfaceError, PoolExhausted, OSError) as exc:
            if isinstance(exc, OSError) and started:
                raise  # the send failed: nobody to tell
            problem = _problem_for(exc) or Problem(
                500, "internal", "Internal error", "The stream failed."
            )
            if problem.status >= 500:
                log.warning("catalogue stream: %s", problem.detail)
            if not started:
                await problem.response(path)(scope, _no_receive, send)
                return
            await _body(send, orjson.dumps({"error": problem.body(path)}) + b"\n")
        await _body(send, b"", False)


_LAST_WORDS_SECONDS = 3.0


def _stopping_line(path: str | None, answered: int, what: str) -> bytes:
    """The closing line of a stream the server stopped: how far it got."""
    stopping = Problem(
        503,
        "shutting-down",
        "Service shutting down",
        f"The service stopped this stream after {what}.",
        answered=answered,
    )
    return orjson.dumps({"error": stopping.body(path)}) + b"\n"


async def _last_words(send: Send, line: bytes) -> None:
    """The closing line of a stream the server is stopping; a client that does not read
    does not get to hold the shutdown up."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_LAST_WORDS_SECONDS):
            await _body(send, line, False)


async def _body(send: Send, body: bytes, more: bool = True) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": more})
