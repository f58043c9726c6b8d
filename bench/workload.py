"""The load test's workload: a weighted mix of GETs, JSON lookups and streams, each answer
checked, run by many clients at once."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import numpy as np
import orjson

from bench.common import EVENTS_PER_FILE, EVENTS_PER_RUN, JSON_PAIRS, Pairs

# ---------------------------------------------------------------------------------------------
# load-test: several hundred clients mixing GETs, 10k-pair JSON lookups and NDJSON streams.
# The generator (build_workload, run_load, ServerMonitor) is shared with tests/test_load.py.

LOAD_KINDS = ("get", "json10k", "stream")
DEFAULT_MIX = "get=90,json10k=8,stream=2"
NDJSON = "application/x-ndjson"
MISSING_SHARE = 0.05


def parse_mix(text: str) -> dict[str, float]:
    """``get=90,json10k=8,stream=2``: relative weights of the request kinds."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.partition("=")
        name = name.strip()
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or name not in LOAD_KINDS or value < 0:
            raise argparse.ArgumentTypeError(
                f"expected kind=weight,... with kinds {', '.join(LOAD_KINDS)}, not {part!r}"
            )
        mix[name] = value
    if not any(mix.values()):
        raise argparse.ArgumentTypeError("every weight is zero")
    return mix


class LoadCatalogue(Protocol):
    """What the load generator needs to know of the catalogue it runs against."""

    def sample(self, rng: np.random.Generator, n: int) -> Pairs:
        """``n`` random pairs, some of them unknown."""
        ...

    def fuid(self, run: int, event: int) -> str | None:
        """The file UUID the service must answer for the pair; None if it is unknown."""
        ...


@dataclass(frozen=True)
class BenchCatalogue:
    """The synthetic events ``prepare_database`` loads (5% of the sampled pairs unknown)."""

    n_events: int

    def sample(self, rng: np.random.Generator, n: int) -> Pairs:
        g = rng.integers(0, self.n_events, n)
        events = g % EVENTS_PER_RUN
        missing = rng.random(n) < MISSING_SHARE
        return (1000 + g // EVENTS_PER_RUN).tolist(), np.where(
            missing, events + EVENTS_PER_RUN, events
        ).tolist()

    def fuid(self, run: int, event: int) -> str | None:
        g = (run - 1000) * EVENTS_PER_RUN + event
        if run < 1000 or not 0 <= event < EVENTS_PER_RUN or g >= self.n_events:
            return None
        digest = hashlib.md5(b"file%d" % (g // EVENTS_PER_FILE), usedforsecurity=False)
        return str(uuid.UUID(digest.hexdigest()))  # md5('file' || n)::uuid, as loaded


# (index in the request, run, event, the expected fuid or None for an unknown pair)
Check = tuple[int, int, int, str | None]


@dataclass(frozen=True)
class LoadRequest:
    """A prepared lookup: its body, how many pairs it holds (and how many of them are not
    in the catalogue) and answers to check."""

    body: bytes
    content_type: str
    pairs: int
    unknown: int
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class LoadWorkload:
    gets: tuple[tuple[int, int, str | None], ...]
    json: tuple[LoadRequest, ...]
    streams: tuple[LoadRequest, ...]


def build_workload(
    catalogue: LoadCatalogue,
    *,
    json_pairs: int = JSON_PAIRS,
    stream_pairs: int = 100_000,
    variants: int = 4,
    gets: int = 20_000,
    checks: int = 64,
    seed: int = 0,
) -> LoadWorkload:
    """Request bodies made once (so that the clients spend their time on the service), with
    the first, the last and ``checks`` random answers of each to be checked. Streams
    alternate text (``run event``) and NDJSON object bodies."""
    rng = np.random.default_rng(seed)

    def request(body: bytes, content_type: str, runs: list[int], events: list[int]) -> LoadRequest:
        picked = {0, len(runs) - 1, *rng.integers(0, len(runs), checks).tolist()}
        return LoadRequest(
            body,
            content_type,
            len(runs),
            sum(catalogue.fuid(r, e) is None for r, e in zip(runs, events, strict=True)),
            tuple(
                (i, runs[i], events[i], catalogue.fuid(runs[i], events[i])) for i in sorted(picked)
            ),
        )

    json_requests = []
    stream_requests = []
    for v in range(variants):
        runs, events = catalogue.sample(rng, json_pairs)
        body = orjson.dumps({"pairs": [list(p) for p in zip(runs, events, strict=True)]})
        json_requests.append(request(body, "application/json", runs, events))
        runs, events = catalogue.sample(rng, stream_pairs)
        pairs = zip(runs, events, strict=True)
        if v % 2:
            body = b"".join(b'{"run_number":%d,"event_number":%d}\n' % p for p in pairs)
            stream_requests.append(request(body, NDJSON, runs, events))
        else:
            body = b"".join(b"%d %d\n" % p for p in pairs)
            stream_requests.append(request(body, "text/plain", runs, events))
    runs, events = catalogue.sample(rng, gets)
    singles = tuple((r, e, catalogue.fuid(r, e)) for r, e in zip(runs, events, strict=True))
    return LoadWorkload(singles, tuple(json_requests), tuple(stream_requests))


class WrongAnswer(Exception):
    """An answer with the wrong content: a count, a pair, a file, the order."""


class Refused(Exception):
    """A status other than the right one (503 from a busy pool, ...), or a stream that
    ended part-way with an error line (the pairs before it answered rightly)."""

    def __init__(self, what: str, status: int, detail: str) -> None:
        super().__init__(f"{what}: HTTP {status} {detail[:300]!r}")
        self.status = status


def _refused(what: str, response: httpx.Response) -> Refused:
    return Refused(what, response.status_code, response.text)


def _check_result(what: str, result: Any, check: Check) -> None:
    _, run, event, fuid = check
    if (
        not isinstance(result, dict)
        or result.get("run_number") != run
        or result.get("event_number") != event
        or result.get("found") is not (fuid is not None)
        or result.get("fuid_raw") != fuid
    ):
        raise WrongAnswer(f"{what}: answer {check[0]} is {result!r}, expected {check}")


async def _load_get(
    http: httpx.AsyncClient, work: LoadWorkload, rng: random.Random
) -> tuple[int, int]:
    """One GET; returns (pairs, unknown pairs). A 404 for an unknown event is right."""
    run, event, fuid = work.gets[rng.randrange(len(work.gets))]
    what = f"GET /v1/events/{run}/{event}"
    response = await http.get(f"/v1/events/{run}/{event}")
    if response.status_code not in (200, 404):
        raise _refused(what, response)
    if (response.status_code == 404) != (fuid is None):
        raise WrongAnswer(f"{what}: HTTP {response.status_code}, expected fuid_raw {fuid}")
    if fuid is None:
        return 1, 1
    answer = orjson.loads(response.content)
    if (answer.get("run_number"), answer.get("event_number"), answer.get("fuid_raw")) != (
        run,
        event,
        fuid,
    ):
        raise WrongAnswer(f"{what}: {answer!r}, expected fuid_raw {fuid}")
    return 1, 0


async def _load_json(
    http: httpx.AsyncClient, work: LoadWorkload, rng: random.Random
) -> tuple[int, int]:
    req = work.json[rng.randrange(len(work.json))]
    what = f"POST /v1/lookup JSON {req.pairs} pairs"
    response = await http.post(
        "/v1/lookup", content=req.body, headers={"content-type": req.content_type}
    )
    if response.status_code != 200:
        raise _refused(what, response)
    answer = orjson.loads(response.content)
    results = answer["results"]
    summary = answer["summary"]
    if len(results) != req.pairs or (summary["requested"], summary["missing"]) != (
        req.pairs,
        req.unknown,
    ):
        raise WrongAnswer(
            f"{what}: {len(results)} results, summary {summary}, {req.unknown} unknown sent"
        )
    for check in req.checks:
        _check_result(what, results[check[0]], check)
    return req.pairs, req.unknown


async def _load_stream(
    http: httpx.AsyncClient, work: LoadWorkload, rng: random.Random
) -> tuple[int, int]:
    """A streamed lookup read to its end: every line counted, the checked ones decoded."""
    req = work.streams[rng.randrange(len(work.streams))]
    what = f"POST /v1/lookup {req.content_type} -> NDJSON stream {req.pairs} pairs"
    checks = iter(req.checks)
    check = next(checks, None)
    lines = unknown = 0
    tail = last = b""
    headers = {"content-type": req.content_type, "accept": NDJSON}
    async with http.stream("POST", "/v1/lookup", content=req.body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            raise _refused(what, response)
        async for chunk in response.aiter_bytes():
            data = tail + chunk
            cut = data.rfind(b"\n") + 1  # whole lines before, a part of one after
            tail = data[cut:]
            if not cut:
                continue
            done = data[:cut]
            n = done.count(b"\n")
            unknown += done.count(b'"found":false')
            if check is not None and check[0] < lines + n:
                parts = done.split(b"\n")
                while check is not None and check[0] < lines + n:
                    line = parts[check[0] - lines]
                    if line.startswith(b'{"error"'):
                        break  # the stream failed here: the end says how
                    _check_result(what, orjson.loads(line), check)
                    check = next(checks, None)
            last = done[done.rfind(b"\n", 0, cut - 1) + 1 : cut - 1]
            lines += n
    if last.startswith(b'{"error"') and not tail:
        status = orjson.loads(last)["error"].get("status", 0)
        raise Refused(f"{what}: ended after {lines - 1} answers with", status, last.decode())
    if tail:
        raise WrongAnswer(f"{what}: the stream ended inside a line: {tail[:300]!r}")
    if lines != req.pairs or unknown != req.unknown:
        raise WrongAnswer(
            f"{what}: {lines} lines for {req.pairs} pairs, {unknown} not found for "
            f"{req.unknown} unknown"
        )
    return req.pairs, unknown


_LOAD_CALLS: dict[
    str, Callable[[httpx.AsyncClient, LoadWorkload, random.Random], Awaitable[tuple[int, int]]]
] = {"get": _load_get, "json10k": _load_json, "stream": _load_stream}


@dataclass
class KindStats:
    """One kind of request in one phase."""

    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    pairs: int = 0
    unknown: int = 0  # pairs answered as not in the catalogue (GET: the 404s)
    errors: int = 0
    wrong: int = 0  # of the errors: answers with the wrong content
    refused: dict[int, int] = field(default_factory=dict)  # of the errors: by HTTP status
    messages: list[str] = field(default_factory=list)  # the first few errors of each sort

    def fail(self, exc: Exception, message: str) -> None:
        self.errors += 1
        if isinstance(exc, WrongAnswer):
            self.wrong += 1
        elif isinstance(exc, Refused):
            self.refused[exc.status] = self.refused.get(exc.status, 0) + 1
        sort = type(exc).__name__
        if sum(m.startswith(sort + ":") for m in self.messages) < 3:
            self.messages.append(f"{sort}: {message}")

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) if self.latencies else float("nan")


@dataclass
class LoadGauge:
    """Live counters the monitor samples."""

    in_flight: int = 0
    done: int = 0


@dataclass
class LoadStats:
    kinds: dict[str, KindStats]
    clients: int
    elapsed: float = 0.0  # from the start to the end of the last request
    client_cpu: float = 0.0  # CPU seconds of this (client) process meanwhile

    @property
    def errors(self) -> int:
        return sum(k.errors for k in self.kinds.values())

    @property
    def wrong(self) -> int:
        return sum(k.wrong for k in self.kinds.values())

    @property
    def requests(self) -> int:
        return sum(len(k.latencies) + k.errors for k in self.kinds.values())

    def messages(self) -> list[str]:
        return [m for k in self.kinds.values() for m in k.messages]


async def run_load(
    base: str,
    work: LoadWorkload,
    *,
    clients: int,
    duration: float,
    mix: dict[str, float],
    timeout: float = 120.0,
    seed: int = 0,
    gauge: LoadGauge | None = None,
) -> LoadStats:
    """``clients`` concurrent clients, each with its own connection, each sending requests
    of a kind drawn from ``mix`` one after the other until ``duration`` is over; requests
    running then are finished. Every answer is checked: an error is a transport error, any
    status but 200 (and 404 for an unknown event's GET), or a wrong answer."""
    kinds = [k for k in LOAD_KINDS if mix.get(k, 0) > 0]
    weights = [mix[k] for k in kinds]
    stats = LoadStats({k: KindStats() for k in kinds}, clients)
    live = gauge if gauge is not None else LoadGauge()
    deadline = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    # One TLS context for all: httpx makes one per client otherwise (~40 ms of CPU each,
    # which held up the start of several hundred clients by seconds).
    tls = ssl.create_default_context()

    async def client(i: int) -> None:
        rng = random.Random(seed * 100_003 + i)
        async with httpx.AsyncClient(
            base_url=base, timeout=timeout, limits=limits, verify=tls
        ) as http:
            while time.perf_counter() < deadline:
                kind = rng.choices(kinds, weights)[0]
                kstats = stats.kinds[kind]
                live.in_flight += 1
                started = time.perf_counter()
                try:
                    pairs, unknown = await _LOAD_CALLS[kind](http, work, rng)
                except Exception as exc:
                    elapsed = time.perf_counter() - started
                    kstats.fail(exc, f"{kind} after {elapsed:.2f} s: {exc}")
                else:
                    kstats.latencies.append(time.perf_counter() - started)
                    kstats.pairs += pairs
                    kstats.unknown += unknown
                finally:
                    live.in_flight -= 1
                    live.done += 1

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(i) for i in range(clients)))
    stats.elapsed = time.perf_counter() - started
    stats.client_cpu = time.process_time() - cpu
    return stats
