"""Python client of the EventIndex API: async (httpx), with a small synchronous wrapper.

    async with EventIndexClient("https://eventindex:8443", token=...) as client:
        event = await client.get_event(1000, 42)            # Event, or None if unknown
        answer = await client.lookup([(1000, 42), (1000, 43)])  # LookupResponse
        async for result in client.lookup_stream(pairs):     # any (async) iterable, any size
            ...

``lookup_stream`` cuts the pairs into chunks, each sent as a streamed NDJSON
request; up to ``concurrency`` chunks are in flight while the results of the
oldest are handed out, in input order. A chunk whose stream breaks (connection
lost, server restarted, 502/503/504, 429) is asked again from its first
undelivered pair, after a backoff that honours ``Retry-After``: no pair is
answered twice or skipped. Memory is bounded by chunk size times concurrency.
4xx answers raise ``ProblemError`` carrying the server's problem details.

Instead of a token, a client may present an X.509 certificate or grid proxy that the
service maps to a principal: ``EventIndexClient(url, cert=os.environ["X509_USER_PROXY"],
ca="/etc/grid-security/certificates")`` (``clienttls.py``; with both, the token decides).

It needs httpx and the standard library only (``pip install eventindex``): results are
plain dataclasses, not the service's pydantic models.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import random
import ssl
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx

from eventindex.clienttls import ssl_context

Pair = tuple[int, int]
NDJSON = "application/x-ndjson"
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Event:
    run_number: int
    event_number: int
    fuid_raw: UUID  # the raw-data file holding the event
    dsid_raw: int  # its dataset's id
    olt_result: int  # bitmask of the Online Filter decisions that selected it


@dataclass(frozen=True, slots=True)
class LookupResult:
    run_number: int
    event_number: int
    found: bool
    fuid_raw: UUID | None
    dsid_raw: int | None
    olt_result: int | None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> LookupResult:
        fuid = item["fuid_raw"]
        return cls(
            item["run_number"],
            item["event_number"],
            item["found"],
            None if fuid is None else UUID(fuid),
            item["dsid_raw"],
            item["olt_result"],
        )


@dataclass(frozen=True, slots=True)
class LookupSummary:
    requested: int
    found: int
    missing: int


@dataclass(frozen=True, slots=True)
class InvalidLine:
    line: int
    error: str


@dataclass(frozen=True, slots=True)
class LookupResponse:
    results: list[LookupResult]  # one per requested pair, in input order
    summary: LookupSummary
    invalid_lines: list[InvalidLine] | None = None


def _results(batch: list[bytes]) -> list[LookupResult]:
    return [LookupResult.from_json(item) for item in json.loads(b"[" + b",".join(batch) + b"]")]


class EventIndexError(Exception):
    """Anything that went wrong talking to EventIndex."""

    def __init__(self, message: str, *, status: int | None = None, problem: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.problem: dict[str, Any] = problem if isinstance(problem, dict) else {}


class ProblemError(EventIndexError):
    """The server refused the request (4xx); ``problem`` holds its problem details."""


class UnavailableError(EventIndexError):
    """The service did not answer usefully within the retries."""


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _RetryAfter(_Retry):
    """A stream that failed part-way: the answers before the failure, then retry."""

    def __init__(self, answered: bytes, problem: dict[str, Any]) -> None:
        super().__init__(str(problem.get("detail", "the stream failed")))
        self.answered = answered


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _tls_refusal(exc: BaseException) -> str | None:
    """Why TLS failed, when no retry can mend it: this side does not trust the server's
    certificate, or the server refused this side's with an alert that arrived (over TLS 1.3
    a refused client certificate often looks like a closed connection, which is retried)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"the server's certificate is not trusted here ({seen.verify_message})"
        if isinstance(seen, ssl.SSLError) and any(
            word in (seen.reason or "") for word in ("CERTIFICATE", "UNKNOWN_CA")
        ):
            return f"the server refused this client's certificate ({seen.reason})"
        seen = seen.__cause__ or seen.__context__
    return None


def _problem_error(status: int, body: bytes) -> ProblemError:
    try:
        problem = json.loads(body)
    except ValueError:  # not JSON, or not UTF-8
        problem = {}
    detail = problem.get("detail") if isinstance(problem, dict) else None
    return ProblemError(
        f"HTTP {status}: {detail or body[:200].decode(errors='replace')}",
        status=status,
        problem=problem,
    )


async def _chunks(
    pairs: Iterable[Pair] | AsyncIterable[Pair], size: int
) -> AsyncIterator[list[Pair]]:
    chunk: list[Pair] = []
    if isinstance(pairs, AsyncIterable):
        async for p in pairs:
            chunk.append((int(p[0]), int(p[1])))
            if len(chunk) >= size:
                yield chunk
                chunk = []
    else:
        for p in pairs:
            chunk.append((int(p[0]), int(p[1])))
            if len(chunk) >= size:
                yield chunk
                chunk = []
                await asyncio.sleep(0)  # let the requests in flight progress
    if chunk:
        yield chunk


class _ChunkFetch:
    """One chunk's request, retried and resumed until every pair is answered.

    Answers are queued as blocks of whole lines (split only when handed out) in a
    bounded queue, so a chunk runs at most a few blocks ahead of its reader, and
    ``delivered`` always says how many pairs are answered: a retry resumes there.
    """

    QUEUE_BLOCKS = 32

    def __init__(self, client: EventIndexClient, pairs: list[Pair]) -> None:
        self.client = client
        self.pairs = pairs
        self.delivered = 0
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(self.QUEUE_BLOCKS)
        self.task = asyncio.create_task(self._run())

    async def _body(self, start: int) -> AsyncIterator[bytes]:
        pairs = self.pairs
        for i in range(start, len(pairs), 10_000):
            yield b"".join(
                b'{"run_number":%d,"event_number":%d}\n' % p for p in pairs[i : i + 10_000]
            )

    async def _deliver(self, block: bytes) -> None:
        if block:
            await self.queue.put(block)
            self.delivered += block.count(b"\n")

    async def _run(self) -> None:
        failures = 0
        try:
            while self.delivered < len(self.pairs):
                before = self.delivered
                try:
                    await self._attempt()
                    if self.delivered < len(self.pairs):
                        raise _Retry("the answer ended early")
                except (httpx.TransportError, _Retry) as exc:
                    self.client._refuse_tls(exc)
                    if isinstance(exc, _RetryAfter):
                        await self._deliver(exc.answered)
                    failures = 0 if self.delivered > before else failures + 1
                    retry_after = exc.retry_after if isinstance(exc, _Retry) else None
                    await self.client._pause(failures, retry_after, exc)
            await self.queue.put(None)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self.queue.put(exc)

    async def _attempt(self) -> None:
        headers = {"content-type": NDJSON, "accept": NDJSON}
        async with self.client.http.stream(
            "POST", "/v1/lookup", content=self._body(self.delivered), headers=headers
        ) as response:
            if response.status_code in RETRY_STATUSES:
                raise _Retry(f"HTTP {response.status_code}", _retry_after(response))
            if response.status_code >= 400:
                raise _problem_error(response.status_code, await response.aread())
            tail = b""
            async for data in response.aiter_bytes():
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail += data
                    continue
                block, tail = tail + data[: cut + 1], data[cut + 1 :]
                if b'{"error"' in block:
                    block = self._without_error(block)
                await self._deliver(block)

    @staticmethod
    def _without_error(block: bytes) -> bytes:
        """The block, unless it holds an error line: then raise (to retry, or not)."""
        lines = block.split(b"\n")
        for i, line in enumerate(lines):
            if line.startswith(b'{"error"'):
                problem = json.loads(line)["error"]
                if problem.get("status", 500) >= 500 or problem.get("status") == 429:
                    answered = b"\n".join(lines[:i]) + b"\n" if i else b""
                    raise _RetryAfter(answered, problem)
                raise ProblemError(
                    f"HTTP {problem.get('status')}: {problem.get('detail')}",
                    status=problem.get("status"),
                    problem=problem,
                )
        return block

    async def lines(self) -> AsyncIterator[list[bytes]]:
        """This chunk's answers in order, a block at a time."""
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item[:-1].split(b"\n")

    def cancel(self) -> None:
        self.task.cancel()


class EventIndexClient:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 20.0,
        chunk_size: int = 50_000,
        concurrency: int = 2,
        transport: httpx.AsyncBaseTransport | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        ca: str | os.PathLike[str] | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """``cert`` (and ``key``, unless in the same file, as in a grid proxy): a client
        certificate to present; ``ca``: trust only these CAs (a PEM bundle or a directory
        of hashed certificates); ``verify``: a whole context instead (``clienttls``).
        A file that cannot be used raises ``clienttls.ClientTlsError`` (a ValueError)."""
        if chunk_size < 1 or concurrency < 1:
            raise ValueError("chunk_size and concurrency must be at least 1")
        if verify is not None and (cert or key or ca):
            raise ValueError("give either verify or cert/key/ca, not both")
        if verify is None and (cert or key or ca):
            verify = ssl_context(cert, key, ca)
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.chunk_size = chunk_size
        self.concurrency = concurrency
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http: httpx.AsyncClient | None = None
        self._http_args: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": headers,
            "timeout": httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            "limits": httpx.Limits(max_connections=concurrency + 2),
            "transport": transport,
            "verify": True if verify is None else verify,
        }

    async def __aenter__(self) -> EventIndexClient:
        self._http = httpx.AsyncClient(**self._http_args)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("use the client as 'async with EventIndexClient(...) as client'")
        return self._http

    def _refuse_tls(self, exc: BaseException) -> None:
        reason = _tls_refusal(exc)
        if reason is not None:
            raise EventIndexError(f"TLS with {self.base_url} failed: {reason}") from exc

    async def _pause(self, failures: int, retry_after: float | None, cause: BaseException) -> None:
        if failures > self.retries:
            raise UnavailableError(
                f"EventIndex at {self.base_url} did not answer after {self.retries} retries: "
                f"{cause}"
            ) from cause
        delay = min(self.max_backoff, self.backoff * 2 ** max(failures - 1, 0))
        delay *= 0.5 + random.random() / 2  # jitter, so that many clients do not retry in step
        if retry_after is not None:
            delay = max(delay, retry_after)
        await asyncio.sleep(delay)

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        failures = 0
        while True:
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                self._refuse_tls(exc)
                failures += 1
                await self._pause(failures, None, exc)
                continue
            if response.status_code in RETRY_STATUSES:
                failures += 1
                await self._pause(
                    failures, _retry_after(response), _Retry(f"HTTP {response.status_code}")
                )
                continue
            return response

    async def get_event(self, run_number: int, event_number: int) -> Event | None:
        """The event, or None if the catalogue does not hold it."""
        response = await self._request("GET", f"/v1/events/{run_number}/{event_number}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise _problem_error(response.status_code, response.content)
        item = response.json()
        return Event(
            item["run_number"],
            item["event_number"],
            UUID(item["fuid_raw"]),
            item["dsid_raw"],
            item["olt_result"],
        )

    async def get_dataset(self, dataset: int) -> dict[str, Any] | None:
        """The dataset's summary as the API gives it (name, counts, run range), or None."""
        response = await self._request("GET", f"/v1/datasets/{int(dataset)}")
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise _problem_error(response.status_code, response.content)
        found: dict[str, Any] = response.json()
        return found

    async def dataset_names(self) -> dict[int, str]:
        """Every dataset's name by its id (``dsid_raw``), a page of the API at a time."""
        names: dict[int, str] = {}
        after: int | None = -1
        while after is not None:
            response = await self._request(
                "GET", "/v1/datasets", params={"after": after, "limit": 1000}
            )
            if response.status_code >= 400:
                raise _problem_error(response.status_code, response.content)
            page = response.json()
            names.update((int(d["id"]), str(d["name"])) for d in page["items"])
            after = page["next_after"]
        return names

    async def decisions(self) -> dict[int, str]:
        """The Online Filter decisions' names by bit of ``olt_result``."""
        response = await self._request("GET", "/v1/online-filter/bits")
        if response.status_code >= 400:
            raise _problem_error(response.status_code, response.content)
        return {int(b["bit"]): str(b["name"]) for b in response.json()}

    async def lookup(self, pairs: Iterable[Pair]) -> LookupResponse:
        """A small set (up to the server's max_json_pairs) in one JSON request."""
        body = json.dumps({"pairs": [[int(r), int(e)] for r, e in pairs]}).encode()
        response = await self._request(
            "POST", "/v1/lookup", content=body, headers={"content-type": "application/json"}
        )
        if response.status_code >= 400:
            raise _problem_error(response.status_code, response.content)
        answer = response.json()
        invalid = answer.get("invalid_lines")
        return LookupResponse(
            [LookupResult.from_json(item) for item in answer["results"]],
            LookupSummary(**answer["summary"]),
            None if invalid is None else [InvalidLine(**i) for i in invalid],
        )

    async def lookup_stream_raw(
        self, pairs: Iterable[Pair] | AsyncIterable[Pair]
    ) -> AsyncGenerator[list[bytes], None]:
        """The answers as NDJSON lines (bytes), in input order, in batches: the fast path."""
        chunks = _chunks(pairs, self.chunk_size)
        window: deque[_ChunkFetch] = deque()
        exhausted = False
        try:
            while True:
                while not exhausted and len(window) < self.concurrency:
                    chunk = await anext(chunks, None)
                    if chunk is None:
                        exhausted = True
                    else:
                        window.append(_ChunkFetch(self, chunk))
                if not window:
                    return
                async for batch in window[0].lines():
                    yield batch
                window.popleft()
        finally:
            for fetch in window:
                fetch.cancel()
            for fetch in window:
                with contextlib.suppress(BaseException):
                    await fetch.task

    async def lookup_stream(
        self, pairs: Iterable[Pair] | AsyncIterable[Pair]
    ) -> AsyncIterator[LookupResult]:
        """One typed result per pair, in input order, for any number of pairs."""
        async for batch in self.lookup_stream_raw(pairs):
            for result in _results(batch):
                yield result

    # --- data collection (write scope) ---

    async def upload_file(
        self,
        fuid: str | UUID,
        events: Iterable[tuple[int, int, int]] | bytes | str | os.PathLike[str],
        dataset: str | int,
        *,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Report one raw file's events: an iterable of (run_number, event_number,
        olt_result), or the path of a CSV file with the header
        ``run_number,event_number,olt_result``, or such a CSV as bytes (gzip-compressed
        ones are sent so). Returns the server's answer (``result``: ``loaded``,
        ``identical`` or ``replaced``). Retried on failures: uploads are idempotent.
        Raises ProblemError when the server refuses the file."""
        headers = {"content-type": "text/csv"}
        if isinstance(events, bytes):
            body = events
        elif isinstance(events, str | os.PathLike):
            # A raw file's index is small (10,000 events: ~200 kB): read in a thread.
            body = await asyncio.to_thread(Path(events).read_bytes)
        else:
            body = upload_body(events)
        if body[:2] == b"\x1f\x8b":
            headers["content-encoding"] = "gzip"
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        headers["content-digest"] = f"sha-256=:{digest}:"
        params: dict[str, str] = {"dataset": str(dataset)}
        if replace:
            params["replace"] = "true"
        response = await self._request(
            "PUT", f"/v1/files/{_segment(fuid)}", params=params, content=body, headers=headers
        )
        return self._json(response)

    async def file_info(self, fuid: str | UUID) -> dict[str, Any] | None:
        """What the catalogue holds of a file (None if it holds none of its events)."""
        response = await self._request("GET", f"/v1/files/{_segment(fuid)}")
        if response.status_code == 404:
            return None
        return self._json(response)

    async def create_dataset(
        self,
        name: str,
        *,
        data_type: str = "raw",
        description: str = "",
        files_expected: int | None = None,
        dataset_id: int | None = None,
    ) -> dict[str, Any]:
        """Register a dataset; the same registration again returns it unchanged."""
        body: dict[str, Any] = {"name": name, "data_type": data_type, "description": description}
        if files_expected is not None:
            body["files_expected"] = files_expected
        if dataset_id is not None:
            body["id"] = dataset_id
        response = await self._request(
            "POST", "/v1/datasets", content=json.dumps(body), headers=_JSON_HEADERS
        )
        return self._json(response)

    async def close_dataset(self, dataset: str | int) -> dict[str, Any]:
        """End the dataset's filling; its state becomes validated or closed."""
        response = await self._request("POST", f"/v1/datasets/{_segment(dataset)}/close")
        return self._json(response)

    async def dataset_status(self, dataset: str | int) -> dict[str, Any]:
        response = await self._request("GET", f"/v1/datasets/{_segment(dataset)}/status")
        return self._json(response)

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        if response.status_code >= 400:
            raise _problem_error(response.status_code, response.content)
        answer = response.json()
        if not isinstance(answer, dict):
            raise EventIndexError(f"unexpected answer: {response.text[:200]}")
        return answer


_JSON_HEADERS = {"content-type": "application/json"}


def _segment(value: object) -> str:
    """A value as one path segment: a name holding "/" or ".." cannot reach another path."""
    text = quote(str(value), safe="")
    return text.replace(".", "%2E") if text in (".", "..") else text


def upload_body(events: Iterable[tuple[int, int, int]]) -> bytes:
    """A file's events as the CSV body ``PUT /v1/files`` takes."""
    lines = [b"run_number,event_number,olt_result\n"]
    lines += [b"%d,%d,%d\n" % (int(r), int(e), int(o)) for r, e, o in events]
    return b"".join(lines)


class SyncEventIndexClient:
    """The same client for scripts and notebooks, on an event loop in a helper thread."""

    def __init__(self, base_url: str, token: str | None = None, **kwargs: Any) -> None:
        from anyio.from_thread import start_blocking_portal

        self._portal_cm = start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        self._client = EventIndexClient(base_url, token, **kwargs)
        self._portal.call(self._client.__aenter__)

    def __enter__(self) -> SyncEventIndexClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._portal.call(self._client.aclose)
        self._portal_cm.__exit__(None, None, None)

    def get_event(self, run_number: int, event_number: int) -> Event | None:
        return self._portal.call(self._client.get_event, run_number, event_number)

    def lookup(self, pairs: Iterable[Pair]) -> LookupResponse:
        return self._portal.call(self._client.lookup, list(pairs))

    def lookup_stream(self, pairs: Iterable[Pair]) -> Iterator[LookupResult]:
        stream = self._client.lookup_stream_raw(pairs)
        try:
            while True:
                batch = self._portal.call(_next_batch, stream)
                if batch is None:
                    return
                yield from _results(batch)
        finally:
            self._portal.call(stream.aclose)

    def upload_file(
        self,
        fuid: str | UUID,
        events: Iterable[tuple[int, int, int]] | bytes | str | os.PathLike[str],
        dataset: str | int,
        *,
        replace: bool = False,
    ) -> dict[str, Any]:
        if not isinstance(events, bytes | str | os.PathLike):
            events = list(events)
        return self._portal.call(
            partial(self._client.upload_file, fuid, events, dataset, replace=replace)
        )

    def create_dataset(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return self._portal.call(partial(self._client.create_dataset, name, **kwargs))

    def close_dataset(self, dataset: str | int) -> dict[str, Any]:
        return self._portal.call(self._client.close_dataset, dataset)

    def dataset_status(self, dataset: str | int) -> dict[str, Any]:
        return self._portal.call(self._client.dataset_status, dataset)


async def _next_batch(stream: AsyncIterator[list[bytes]]) -> list[bytes] | None:
    return await anext(stream, None)
