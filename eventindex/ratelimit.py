"""Per-client request rate limit: token buckets, answered with 429 problems.

Who a client is depends on what the service knows of it:

- a request without a credential is charged to its address;
- a request with a credential is charged to the principal the credential proves
  (an API token's name, a JWT's subject), once the authenticator has checked it,
  so a grid job's many hosts share one budget and reformatting the header gives
  no fresh one;
- a credential that fails is charged to the address it came from, and an address
  whose budget is spent is refused before its next credential is even checked,
  so guessing tokens costs the guesser, not the database.

A credentialed request that nothing authenticated (a path outside the API) is
charged to its address when it ends. Buckets live in one worker process: with N
workers a client may get up to N times the rate (docs/security.md). The table of
buckets is bounded; when it is full, only buckets that have refilled (which are
the same as no bucket) are forgotten, and newcomers beyond share one bucket, so
no client can make the service forget another's spending.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from eventindex.problems import Problem

_EXEMPT = ("/health", "/ready")
SCOPE_KEY = "eventindex.ratelimit"
_OVERFLOW = "overflow"
_PRUNE_INTERVAL = 1.0


class RateLimiter:
    def __init__(self, per_second: float, burst: int, max_clients: int = 100_000) -> None:
        self.rate = per_second
        self.burst = float(burst)
        self.max_clients = max_clients
        self.buckets: dict[str, tuple[float, float]] = {}
        self._pruned_at = -math.inf

    def _level(self, key: str, now: float) -> float:
        tokens, last = self.buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def take(self, key: str) -> float:
        """Spend one request of ``key``'s budget: 0 if it may go, else the seconds until
        it may."""
        now = time.monotonic()
        if key not in self.buckets and len(self.buckets) >= self.max_clients:
            key = self._room_for(key, now)
        tokens = self._level(key, now)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, now)
            return 0.0
        self.buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def wait(self, key: str) -> float:
        """Like :meth:`take` without spending: 0 if ``key`` has budget left."""
        tokens = self._level(key, time.monotonic())
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _room_for(self, key: str, now: float) -> str:
        if now - self._pruned_at >= _PRUNE_INTERVAL:
            self._pruned_at = now
            full = [k for k in self.buckets if self._level(k, now) >= self.burst]
            for k in full:
                del self.buckets[k]
        # Every bucket is being spent: newcomers share one rather than push others out.
        return _OVERFLOW if len(self.buckets) >= self.max_clients else key

    def too_many(self, wait: float) -> Problem:
        retry_after = max(1, math.ceil(wait))
        return Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"This client is over {self.rate:g} requests per second; retry in {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


@dataclass
class Charge:
    """One request's account with the limiter; the authenticator settles it."""

    limiter: RateLimiter
    address: str
    settled: bool = field(default=False)

    def principal(self, kind: str, name: str) -> None:
        """The credential proved ``name``: charge it (429 if it is over its budget)."""
        self.settled = True
        wait = self.limiter.take(f"p:{kind}:{name}")
        if wait > 0:
            raise self.limiter.too_many(wait)

    def failure(self) -> None:
        """The credential failed: charge the address it came from."""
        self.settled = True
        self.limiter.take(self.address)


def charge_of(scope: Scope) -> Charge | None:
    charge: Charge | None = scope.get(SCOPE_KEY)
    return charge


class RateLimit:
    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_EXEMPT):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = "a:" + (client[0] if client else "?")
        credential = any(name == b"authorization" for name, _ in scope.get("headers", []))
        # A credential is charged once it is checked; it is refused now if this address
        # has spent its budget (on failed credentials, or on anonymous requests).
        wait = self.limiter.wait(address) if credential else self.limiter.take(address)
        if wait > 0:
            await self.limiter.too_many(wait).response(scope["path"])(scope, receive, send)
            return
        if not credential:
            await self.app(scope, receive, send)
            return
        charge = Charge(self.limiter, address)
        try:
            await self.app({**scope, SCOPE_KEY: charge}, receive, send)
        finally:
            if not charge.settled:
                self.limiter.take(address)
