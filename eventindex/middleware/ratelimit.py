"""Per-client request rate limit: token buckets, answered with 429 problems.

Who a client is depends on what the service knows of it:

- a request without a credential is charged to its address (``a:``);
- a request with a credential (a bearer header, or a client certificate on the
  connection) is charged up front to its address's budget for credentials (``c:``),
  before the credential is checked, so that guesses sent all at once are limited as
  well as guesses sent one by one; when the credential proves a principal (an API
  token's name, a JWT's subject, a certificate principal) that charge is given
  back and the principal's own budget is charged instead, so a grid job's many
  hosts share one budget, rewriting the header buys nothing, and neither anonymous
  traffic nor guessing from a shared address (a NAT) spends a valid holder's budget;
  a subject named by a trusted proxy's header moves the address's charge likewise;
- a failed credential keeps its charge: guessing costs the guesser, not the database.

Addresses are read as IP addresses (IPv6 by its /64 network, which one host may
hold whole); anything else shares one key, so the table cannot grow by odd
values. Buckets live in one worker process: with N workers a client may get up to
N times the rate (docs/security.md). The table is bounded; when it is full, only
buckets that have refilled (which are the same as no bucket) are forgotten, and
newcomers beyond share one bucket, so no client can make the service forget
another's spending.
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from eventindex.middleware.clientcert import presents_certificate
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

    def refund(self, key: str) -> None:
        """Give back one request taken from ``key`` (never above the burst)."""
        now = time.monotonic()
        if key in self.buckets:
            self.buckets[key] = (min(self.burst, self._level(key, now) + 1.0), now)

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


@dataclass(frozen=True)
class Charge:
    """One request's account with the limiter. The request has been charged to its address's
    budget (for credentials, when it carries one) already: a credential that fails (or that
    nothing checks) keeps that charge; one that proves a principal moves it
    (``principal``)."""

    limiter: RateLimiter
    address: str

    def principal(self, kind: str, name: str) -> None:
        """The credential proved ``name``: charge it instead (429 if it is over its
        budget)."""
        self.limiter.refund(self.address)
        wait = self.limiter.take(f"p:{kind}:{name}")
        if wait > 0:
            raise self.limiter.too_many(wait)


def charge_of(scope: Scope) -> Charge | None:
    charge: Charge | None = scope.get(SCOPE_KEY)
    return charge


def client_key(scope: Scope) -> str:
    """The client's address as a bucket key: an IP address, IPv6 by its /64."""
    client = scope.get("client")
    try:
        address = ipaddress.ip_address(client[0] if client else "")
    except ValueError:
        return "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class RateLimit:
    def __init__(self, app: ASGIApp, limiter: RateLimiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(_EXEMPT):
            await self.app(scope, receive, send)
            return
        address = client_key(scope)
        credential = any(
            name == b"authorization" for name, _ in scope.get("headers", [])
        ) or presents_certificate(scope)
        key = ("c:" if credential else "a:") + address
        wait = self.limiter.take(key)
        if wait > 0:
            await self.limiter.too_many(wait).response(scope["path"])(scope, receive, send)
            return
        await self.app({**scope, SCOPE_KEY: Charge(self.limiter, key)}, receive, send)
