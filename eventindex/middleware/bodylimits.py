"""Size and time limits on request bodies the framework reads for a handler.

FastAPI reads a JSON body whole before the handler runs, with no limit on its
size or on how long the client takes to send it. This middleware gives every
such body the service's limits (``max_body_bytes``, ``body_timeout``): a
declared length over the limit is refused before anything is read; a body that
grows past it, or is still arriving at the deadline, stops being read and the
request is answered 413 or 408 instead of whatever the framework made of the
cut-off body. The lookup endpoint reads its own body (it may stream without
end) and so do file uploads: they apply their own limits and are exempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventindex.problems import Problem


class _Stop(Exception):
    """Raised into the framework's body reader to stop it."""


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "body-too-large",
        "Request body too large",
        f"The request body exceeds {limit} bytes.",
        # The rest of the body is not wanted: close rather than read and drop it all.
        headers={"Connection": "close"},
    )


def too_slow(timeout: float) -> Problem:
    return Problem(
        408,
        "body-timeout",
        "Request body too slow",
        f"The request body did not arrive within {timeout:g} seconds.",
        headers={"Connection": "close"},
    )


class BodyLimits:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        timeout: float,
        exempt: frozenset[str],
        exempt_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.exempt = exempt
        self.exempt_prefixes = exempt_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.exempt or path.startswith(self.exempt_prefixes):
            await self.app(scope, receive, send)
            return
        declared, chunked = _framing(scope)
        if declared is None and not chunked:
            # No Content-Length and no Transfer-Encoding: an HTTP/1.1 request without a
            # body (RFC 9112, 6.3), such as every GET: nothing to limit.
            await self.app(scope, receive, send)
            return
        if declared is not None and declared > self.max_bytes:
            await too_large(self.max_bytes).response(path)(scope, receive, send)
            return

        deadline = time.monotonic() + self.timeout
        received = 0
        body_done = False
        problem: Problem | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done, problem
            if body_done:
                return await receive()  # only a disconnect comes now: no deadline
            try:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    message = await receive()
            except TimeoutError:
                problem = too_slow(self.timeout)
                raise _Stop from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    problem = too_large(self.max_bytes)
                    raise _Stop
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if problem is not None:
                return  # what the framework made of a cut-off body; ours goes instead
            started = True
            await send(message)

        with contextlib.suppress(_Stop):
            await self.app(scope, limited_receive, guarded_send)
        if problem is not None and not started:
            await problem.response(path)(scope, receive, send)


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The request's Content-Length (None if absent or not a number; such a request
    counts as having a body), and whether it has a Transfer-Encoding."""
    length: int | None = None
    has_length = chunked = False
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            has_length = True
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":
            chunked = True
    return length, chunked or (has_length and length is None)


def _loop_time(deadline: float) -> float:
    # asyncio's clock is time.monotonic on every platform asyncio supports, but
    # convert anyway rather than rely on it.
    loop = asyncio.get_running_loop()
    return loop.time() + (deadline - time.monotonic())
