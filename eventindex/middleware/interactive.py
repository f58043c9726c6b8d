"""Interactive requests first, inside one worker process.

The fair gate (``db.FairGate``) keeps a single-event lookup from queueing behind stream
batches for a database connection, but the event loop is shared too: four streams parsing
and answering keep several callbacks ready at every turn of the loop, and each turn of a
GET (read the request, query, answer) waited behind all of them (p50 225 ms, p99 750 ms
beside four 300k-pair streams, ``bench qos``).

So every HTTP request starts out holding an interactive claim. Work that turns out to be
bulk (a streamed lookup, a JSON lookup larger than a batch, a catalogue cursor, an upload)
gives its claim up with :func:`as_bulk` and then takes its loop turns through
:func:`bulk_turn`, which waits while any interactive request of the process is in flight,
for at most a short pause at a time (longer while a request with database work of its
own, such as a page-sized lookup, is in flight), so that bulk work slows down under a flood
of interactive requests but never stops.

Bulk requests are also admitted a few at a time. Beyond ``slots`` of them (the
connections bulk work may hold, ``EVENTINDEX_BULK_CONNECTIONS``), a bulk request waits in
arrival order before anything of it is read, holding no memory but its socket's; past
``queue`` waiting, or ``timeout`` of waiting, it is refused at once with 503 and
``Retry-After``. Without this, three hundred clients asking for 10,000-pair lookups and
streams had their bodies read and parsed, each then waiting for a connection with its
pairs in memory: the process grew by a gigabyte, and the streams that waited longest were
refused part-way (``bench load-test``).
"""

from __future__ import annotations

import asyncio
import contextlib
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from eventindex.db import FairGate
from eventindex.problems import Problem

# The longest a bulk step waits for interactive requests to finish before it runs anyway:
# while one of them has database work of its own to do (a page-sized lookup: its probes
# compete with the bulk queries for the database's cores), and while there are only
# requests that need a few turns of the event loop (single events). bench qos, two workers
# beside four streams: a pause of 50 ms for all kept GETs at p99 9 ms but the streams at
# 0.69x, 5 ms for all kept the streams at 0.82x but 1,000-pair lookups at p99 164 ms.
MAX_BULK_PAUSE = 0.02
SHORT_BULK_PAUSE = 0.005


class Priority:
    """The interactive requests in flight in this process; owned by the lifespan."""

    def __init__(
        self, max_pause: float = MAX_BULK_PAUSE, short_pause: float = SHORT_BULK_PAUSE
    ) -> None:
        self.max_pause = max_pause
        self.short_pause = short_pause
        self.active = 0
        self.weighty = 0  # of them, those with database work of their own
        self._calm = asyncio.Event()
        self._calm.set()

    def claim(self) -> Claim:
        self.active += 1
        self._calm.clear()
        return Claim(self)

    def _release(self, weighty: bool) -> None:
        self.active -= 1
        if weighty:
            self.weighty -= 1
        if self.active == 0:
            self._calm.set()

    async def pause(self) -> None:
        """Wait until no interactive request is in flight, or ``max_pause`` (while one with
        database work of its own is in flight; else ``short_pause``)."""
        if self.active == 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_pause if self.weighty else self.short_pause):
                await self._calm.wait()


class Claim:
    """One request's interactive standing, given up once: when the request turns out to be
    bulk work, or when it ends, whichever comes first."""

    def __init__(self, priority: Priority) -> None:
        self.priority = priority
        self.held = True
        self.weighty = False

    def weigh(self) -> None:
        if self.held and not self.weighty:
            self.weighty = True
            self.priority.weighty += 1

    def release(self) -> None:
        if self.held:
            self.held = False
            self.priority._release(self.weighty)


class BulkAdmission:
    """Bulk requests served at once by this process, and those waiting their turn; owned
    by the lifespan."""

    def __init__(self, slots: int, queue: int, timeout: float) -> None:
        self.slots = slots
        self.queue = queue
        self.timeout = timeout
        self._gate = FairGate(slots)

    @property
    def waiting(self) -> int:
        return len(self._gate.waiters)

    @property
    def served(self) -> int:
        return self.slots - self._gate.free

    async def enter(self) -> None:
        would_wait = self._gate.free <= 0 or bool(self._gate.waiters)
        if would_wait and self.waiting >= self.queue:
            raise self._busy(f"{self.waiting} more wait their turn (EVENTINDEX_BULK_QUEUE)")
        try:
            await self._gate.enter(self.timeout)
        except TimeoutError:
            raise self._busy(
                f"this one waited its turn for {self.timeout:g} s (EVENTINDEX_BULK_QUEUE_TIMEOUT)"
            ) from None

    def leave(self) -> None:
        self._gate.leave()

    def _busy(self, why: str) -> Problem:
        return Problem(
            503,
            "busy",
            "Service busy",
            f"This worker serves {self.slots} bulk requests (streams, lookups of many "
            f"pairs, catalogue listings) at once, and {why}; try again shortly.",
            headers={"Retry-After": "5"},
        )


class Ticket:
    """A request's place among the bulk requests, taken once at most and given back by
    the middleware when the request ends."""

    def __init__(self, admission: BulkAdmission) -> None:
        self.admission = admission
        self.admitted = False

    async def take(self) -> None:
        if not self.admitted:
            await self.admission.enter()
            self.admitted = True

    def give_back(self) -> None:
        if self.admitted:
            self.admitted = False
            self.admission.leave()


# The claim of the request this task serves (tasks a request starts inherit it).
_claim: ContextVar[Claim | None] = ContextVar("eventindex_interactive_claim", default=None)
_ticket: ContextVar[Ticket | None] = ContextVar("eventindex_bulk_ticket", default=None)


def as_bulk() -> None:
    """The current request is bulk work: it no longer holds other bulk work back."""
    claim = _claim.get()
    if claim is not None:
        claim.release()


async def admit_bulk() -> None:
    """The current request is bulk work that will hold database connections for a while:
    wait for its turn among the bulk requests of the process (or be refused with 503)."""
    as_bulk()
    ticket = _ticket.get()
    if ticket is not None:
        await ticket.take()


def weighty() -> None:
    """The current interactive request has database work of its own (a lookup of many
    pairs): bulk steps hold back longer while it runs."""
    claim = _claim.get()
    if claim is not None:
        claim.weigh()


def is_bulk() -> bool:
    """Whether the current request has turned out to be bulk work."""
    claim = _claim.get()
    return claim is not None and not claim.held


async def bulk_turn() -> None:
    """Give the event loop its turn between two steps of bulk work, after the interactive
    requests in flight when there are any. Outside a request, or in one still counted as
    interactive, it only yields."""
    claim = _claim.get()
    if claim is None or claim.held:
        await asyncio.sleep(0)
        return
    await claim.priority.pause()


# Bodies of POST /v1/lookup larger than this (or of no stated length) are bulk work,
# admitted before they are read: a page-sized lookup, 1,000 pairs as JSON, is about 15 kB.
INTERACTIVE_BODY_BYTES = 32 * 1024


def _bulk_by_its_head(scope: Scope) -> bool:
    if scope["method"] != "POST" or scope["path"] != "/v1/lookup":
        return False
    for name, value in scope["headers"]:
        if name == b"content-length":
            return not value.isdigit() or int(value) > INTERACTIVE_BODY_BYTES
    return True


class InteractiveFirst:
    """Gives each HTTP request its claim and its ticket, released whatever ends the
    request; admits a lookup that its head shows to be bulk before its body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state", {})
        priority: Priority | None = state.get("priority")
        admission: BulkAdmission | None = state.get("admission")
        if scope["type"] != "http" or priority is None or admission is None:
            await self.app(scope, receive, send)
            return
        claim = priority.claim()
        ticket = Ticket(admission)
        claim_token = _claim.set(claim)
        ticket_token = _ticket.set(ticket)
        try:
            if _bulk_by_its_head(scope):
                claim.release()
                try:
                    await ticket.take()
                except Problem as problem:
                    await problem.response(scope["path"])(scope, receive, send)
                    return
            await self.app(scope, receive, send)
        finally:
            claim.release()
            ticket.give_back()
            _ticket.reset(ticket_token)
            _claim.reset(claim_token)
