"""Per-client request rate limit: a token bucket per client, answered with 429.

A client is its bearer credential when it sends one (so one grid job's many
hosts share a budget), else its address. Off unless configured.
"""

from __future__ import annotations

import hashlib
import math
import time

from starlette.types import ASGIApp, Receive, Scope, Send

from eventindex.problems import Problem

_EXEMPT = ("/health", "/ready", "/metrics")
_MAX_CLIENTS = 100_000


class RateLimit:
    def __init__(self, app: ASGIApp, per_second: float, burst: int) -> None:
        self.app = app
        self.rate = per_second
        self.burst = float(burst)
        self.buckets: dict[str, tuple[float, float]] = {}

    def _client(self, scope: Scope) -> str:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                # Keyed by a digest: the credential itself is not kept.
                return "t:" + hashlib.sha256(value).hexdigest()
        client = scope.get("client")
        return "a:" + (client[0] if client else "?")

    def _take(self, key: str) -> float:
        """0 if the request may go, else the seconds until it may."""
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            if len(self.buckets) >= _MAX_CLIENTS and key not in self.buckets:
                self.buckets.clear()  # a flood of new clients: forget, rather than grow
            self.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_EXEMPT):
            await self.app(scope, receive, send)
            return
        wait = self._take(self._client(scope))
        if wait <= 0:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        problem = Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"This client is over {self.rate:g} requests per second; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )
        await problem.response(scope["path"])(scope, receive, send)
