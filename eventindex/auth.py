"""Who is asking: EventIndex API tokens and OpenID Connect JWTs, both as bearer credentials.

API tokens (``ei_...``) are random, shown once, and kept only as a SHA-256 digest:
the digest of a high-entropy secret is looked up by an index, so there is no
comparison whose timing depends on the secret. JWTs are checked against the
issuer's published keys (fetched and cached; an unknown key id refetches them,
so rotated keys are picked up): signature, ``exp``, ``nbf``, ``iss``, ``aud``;
a claim (``scope`` or ``groups``) is mapped to EventIndex scopes by settings.
Credentials never reach the logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from eventindex import queries
from eventindex.config import Settings
from eventindex.db import acquire
from eventindex.problems import Problem

SCOPES = ("read", "write", "admin")
TOKEN_PREFIX = "ei_"
_JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]

log = logging.getLogger("eventindex.auth")

# Documents the credential in the OpenAPI document (a security scheme, and a security
# requirement on every operation that calls ``require``). It checks nothing itself:
# ``Authenticator`` does, and only when authentication is on (production mode).
BEARER = HTTPBearer(
    scheme_name="bearer",
    description="An EventIndex API token (`ei_...`, from `eventindex token create` or "
    "POST /v1/tokens) or a JWT of the configured OpenID Connect issuer. Required when "
    "authentication is on (production mode); without it the API is open.",
    auto_error=False,
)


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]
    kind: str  # "token", "jwt" or "open"


OPEN = Principal("anonymous", frozenset(SCOPES), "open")


def _unauthorized(detail: str, error: str = "invalid_token") -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": f'Bearer realm="eventindex", error="{error}"'},
    )


class JwtVerifier:
    def __init__(self, settings: Settings) -> None:
        if not (settings.oidc_jwks_url and settings.oidc_issuer and settings.oidc_audience):
            raise ValueError("JWT verification needs an issuer, an audience and a JWKS URL")
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.claim = settings.oidc_scope_claim
        self.scope_map = settings.oidc_scope_map
        self.keys = jwt.PyJWKClient(
            settings.oidc_jwks_url,
            cache_keys=True,
            lifespan=300,
            cooldown_duration=settings.oidc_jwks_refresh_cooldown,
        )

    async def verify(self, token: str) -> Principal:
        try:
            # Fetching keys is blocking I/O (cached; refetched for an unknown key id).
            key = await asyncio.to_thread(self.keys.get_signing_key_from_jwt, token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=_JWT_ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud"]},
                leeway=30,
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("The token has expired.") from None
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise _unauthorized(f"The token is not valid here ({type(exc).__name__}).") from None
        granted = claims.get(self.claim, [])
        values = granted.split() if isinstance(granted, str) else list(granted)
        scopes = frozenset(s for v in values for s in self.scope_map.get(str(v), []))
        return Principal(str(claims.get("sub", "?")), scopes, "jwt")


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self.required = settings.auth_enabled
        self.timeout = settings.pool_acquire_timeout
        self.jwt = JwtVerifier(settings) if settings.oidc_enabled else None

    async def identify(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise _unauthorized("Send the credential as 'Authorization: Bearer <token>'.")
        if credential.startswith(TOKEN_PREFIX):
            async with acquire(request.state.pool, self.timeout) as conn:
                row = await conn.fetchrow(queries.USE_TOKEN, token_digest(credential))
            if row is None:
                self._failed(request, "unknown, expired or revoked API token")
                raise _unauthorized("The API token is unknown, expired or revoked.")
            return Principal(row["name"], frozenset(row["scopes"]), "token")
        if self.jwt is not None:
            try:
                return await self.jwt.verify(credential)
            except Problem:
                self._failed(request, "JWT rejected")
                raise
        self._failed(request, "not an API token, and JWTs are not configured")
        raise _unauthorized("The credential is not an EventIndex API token.")

    @staticmethod
    def _failed(request: Request, reason: str) -> None:
        client = request.client.host if request.client else "?"
        log.warning("authentication failed from %s: %s", client, reason)


def require(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, who must hold ``scope`` when authentication is on."""

    async def check(
        request: Request,
        _documented: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> Principal:
        auth: Authenticator = request.app.state.auth
        principal = await auth.identify(request)
        if principal is None:
            if not auth.required:
                return OPEN
            raise _unauthorized("This service needs a bearer token.", "invalid_request")
        if scope not in principal.scopes:
            raise Problem(
                403,
                "forbidden",
                "Forbidden",
                f"'{principal.name}' lacks the '{scope}' scope this needs.",
            )
        request.state.principal = principal.name
        return principal

    return check
