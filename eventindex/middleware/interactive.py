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
for at most ``max_pause`` at a time, so that bulk work slows down under a flood of
interactive requests but never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

# The longest a bulk step waits for interactive requests to finish before it runs anyway.
MAX_BULK_PAUSE = 0.05


class Priority:
    """The interactive requests in flight in this process; owned by the lifespan."""

    def __init__(self, max_pause: float = MAX_BULK_PAUSE) -> None:
        self.max_pause = max_pause
        self.active = 0
        self._calm = asyncio.Event()
        self._calm.set()

    def claim(self) -> Claim:
        self.active += 1
        self._calm.clear()
        return Claim(self)

    def _release(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._calm.set()

    async def pause(self) -> None:
        """Wait until no interactive request is in flight, or ``max_pause``."""
        if self.active == 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_pause):
                await self._calm.wait()


class Claim:
    """One request's interactive standing, given up once: when the request turns out to be
    bulk work, or when it ends, whichever comes first."""

    def __init__(self, priority: Priority) -> None:
        self.priority = priority
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.priority._release()


# The claim of the request this task serves (tasks a request starts inherit it).
_claim: ContextVar[Claim | None] = ContextVar("eventindex_interactive_claim", default=None)


def as_bulk() -> None:
    """The current request is bulk work: it no longer holds other bulk work back."""
    claim = _claim.get()
    if claim is not None:
        claim.release()


async def bulk_turn() -> None:
    """Give the event loop its turn between two steps of bulk work, after the interactive
    requests in flight when there are any. Outside a request, or in one still counted as
    interactive, it only yields."""
    claim = _claim.get()
    if claim is None or claim.held:
        await asyncio.sleep(0)
        return
    await claim.priority.pause()


class InteractiveFirst:
    """Gives each HTTP request its claim, released whatever ends the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        priority: Priority | None = scope.get("state", {}).get("priority")
        if scope["type"] != "http" or priority is None:
            await self.app(scope, receive, send)
            return
        claim = priority.claim()
        token = _claim.set(claim)
        try:
            await self.app(scope, receive, send)
        finally:
            claim.release()
            _claim.reset(token)
