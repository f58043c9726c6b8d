"""The OpenID Connect provider's signing keys (its JWKS), fetched and kept current.

The set of trusted keys is exactly the latest successful fetch: a key the
provider has dropped is refused from the next fetch on. Keys are fetched again
at least every ``refresh_interval`` seconds and when a token names an unknown
key id, but never more often than once per ``cooldown`` seconds after any
attempt (failed or not), so tokens with made-up key ids cannot make the service
hammer the provider. One fetch runs at a time, asynchronously, bounded by
``timeout`` in total; requests whose key is known do not wait for it. When the
last good fetch is older than twice the refresh interval (the provider has been
unreachable that long), no key is trusted: the caller answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import jwt
import orjson

MAX_JWKS_BYTES = 1024 * 1024

log = logging.getLogger("eventindex.auth")


class KeysUnavailable(Exception):
    """No current keys: the provider could not be reached (or answered nonsense)."""


class UnknownKey(Exception):
    """The provider's current keys have no key with this id."""


class JwksCache:
    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        refresh_interval: float,
        cooldown: float,
        timeout: float,
    ) -> None:
        self.url = url
        self.client = client
        self.refresh_interval = refresh_interval
        self.cooldown = cooldown
        self.timeout = timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        if kid not in self._keys or self._stale():
            if self._lock.locked():
                if kid not in self._keys or not self._usable():
                    async with self._lock:
                        pass  # the fetch in flight may bring it
            elif self._may_fetch():
                async with self._lock:
                    # Another caller may have fetched while this one waited.
                    if (kid not in self._keys or self._stale()) and self._may_fetch():
                        await self._fetch()
        if not self._usable():
            raise KeysUnavailable
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKey(kid) from None

    @property
    def retry_after(self) -> int:
        return max(1, int(self.cooldown + 0.999))

    def _stale(self) -> bool:
        return (
            self._fetched_at is None or time.monotonic() - self._fetched_at >= self.refresh_interval
        )

    def _usable(self) -> bool:
        return (
            self._fetched_at is not None
            and time.monotonic() - self._fetched_at < 2 * self.refresh_interval
        )

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or time.monotonic() - self._attempted_at >= self.cooldown

    async def _fetch(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                body = await self._download()
            keys = _usable_keys(orjson.loads(body))
        except TimeoutError:
            log.warning(
                "the identity provider's keys (%s) did not come within %g s", self.url, self.timeout
            )
            return
        except (httpx.HTTPError, orjson.JSONDecodeError, _BadAnswer) as exc:
            log.warning("could not fetch the identity provider's keys (%s): %s", self.url, exc)
            return
        finally:
            # The cooldown runs from the end of an attempt: a slow provider is asked
            # again only ``cooldown`` seconds after it last answered (or failed to).
            self._attempted_at = time.monotonic()
        dropped = sorted(set(self._keys) - set(keys))
        if dropped:
            log.info("identity provider keys no longer trusted: %s", ", ".join(dropped))
        self._keys = keys
        self._fetched_at = time.monotonic()

    async def _download(self) -> bytes:
        async with self.client.stream("GET", self.url) as response:
            if response.status_code != 200:
                raise _BadAnswer(f"HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise _BadAnswer(f"more than {MAX_JWKS_BYTES} bytes")
            return bytes(body)


class _BadAnswer(Exception):
    pass


def _usable_keys(document: object) -> dict[str, jwt.PyJWK]:
    """The signing keys of a JWKS document by key id. A document with no usable key is a
    provider that trusts no key now (every token is refused), not a failed fetch."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _BadAnswer("not a JWK set")
    try:
        keyset = jwt.PyJWKSet.from_dict(document)
    except jwt.PyJWKSetError:
        return {}  # no key it could use: an empty set
    return {k.key_id: k for k in keyset.keys if k.key_id and k.public_key_use in ("sig", None)}
