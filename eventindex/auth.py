"""Who is asking: EventIndex API tokens and OpenID Connect JWTs, both as bearer credentials,
and X.509 client certificates whose subject an administrator mapped to a principal.

API tokens (``ei_...``) are random, shown once, and kept only as a SHA-256 digest:
the digest of a high-entropy secret is looked up by an index, so there is no
comparison whose timing depends on the secret. JWTs are checked against the
issuer's published keys (``jwks``: exactly the keys of its latest fetch):
signature, ``exp``, ``nbf``, ``iss``, ``aud``, ``sub``; a claim (``scope`` or
``groups``, a string or a list of strings) is mapped to EventIndex scopes by
settings.
A verified client certificate (or an RFC 3820 proxy of it) whose end-entity subject has a
live mapping is that principal (``certs.py``, ``middleware/clientcert.py``). A request with a
bearer credential is judged by it alone: the bearer decides, whatever certificate the
connection holds. An unmapped certificate is anonymous.
Credentials never reach the logs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import httpx
import jwt
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from eventindex.certs import USE_MAPPING
from eventindex.config import Settings
from eventindex.db import Database
from eventindex.jwks import JwksCache, KeysUnavailable, UnknownKey
from eventindex.middleware.clientcert import certificate_from_another_site, certificate_subject
from eventindex.middleware.ratelimit import charge_of
from eventindex.problems import Problem
from eventindex.tokens import SCOPES, TOKEN_PREFIX, USE_TOKEN, token_digest

_JWT_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]

log = logging.getLogger("eventindex.auth")

# Documents the credential in the OpenAPI document (a security scheme, and a security
# requirement on every operation that calls ``require``). It checks nothing itself:
# ``Authenticator`` does, and only when authentication is on (production mode).
BEARER = HTTPBearer(
    scheme_name="bearer",
    description="An EventIndex API token (`ei_...`, from `eventindex token create` or "
    "POST /v1/tokens) or a JWT of the configured OpenID Connect issuer. Required when "
    "authentication is on (production mode), unless the client's TLS certificate is mapped "
    "to a principal (`eventindex cert add`); without authentication the API is open.",
    auto_error=False,
)


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]
    kind: str  # "token", "jwt", "certificate" or "open"


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
    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        if not (settings.oidc_jwks_url and settings.oidc_issuer and settings.oidc_audience):
            raise ValueError("JWT verification needs an issuer, an audience and a JWKS URL")
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.claim = settings.oidc_scope_claim
        self.scope_map = settings.oidc_scope_map
        self.leeway = settings.oidc_leeway_seconds
        self.keys = JwksCache(
            settings.oidc_jwks_url,
            client,
            refresh_interval=settings.oidc_jwks_refresh_minutes * 60,
            cooldown=settings.oidc_jwks_refresh_cooldown,
            timeout=settings.oidc_jwks_timeout,
        )

    async def verify(self, token: str) -> Principal:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise _unauthorized("The credential is not a well-formed JWT.") from None
        if not isinstance(kid, str) or not kid:
            raise _unauthorized("The JWT names no signing key (kid).")
        try:
            key = await self.keys.key(kid)
        except KeysUnavailable:
            raise Problem(
                503,
                "identity-provider-unavailable",
                "Identity provider unavailable",
                "The identity provider's signing keys cannot be fetched now; retry later.",
                headers={"Retry-After": str(self.keys.retry_after)},
            ) from None
        except UnknownKey:
            raise _unauthorized(
                "The JWT is signed with a key the issuer does not publish."
            ) from None
        # Only the algorithm the key is published for: a header naming another (ES256
        # against an RSA key, PS256 for an RS256 key) is refused, not tried.
        algorithm = key.algorithm_name
        if algorithm not in _JWT_ALGORITHMS:
            raise _unauthorized("The JWT's signing key is not for an accepted algorithm.")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
                leeway=self.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("The token has expired.") from None
        except (jwt.InvalidTokenError, TypeError, ValueError) as exc:
            # TypeError/ValueError: the library met a key and a token that do not go together.
            raise _unauthorized(f"The token is not valid here ({type(exc).__name__}).") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise _unauthorized("The JWT's subject (sub) is not a string.")
        return Principal(subject, self._scopes(claims.get(self.claim)), "jwt")

    def _scopes(self, granted: object) -> frozenset[str]:
        if granted is None:
            values: list[str] = []
        elif isinstance(granted, str):
            values = granted.split(" ")  # RFC 6749: scopes are separated by spaces only
        elif isinstance(granted, list) and all(isinstance(v, str) for v in granted):
            values = granted
        else:
            # Anything else (a number, an object whose keys look like scopes) is a
            # provider we do not understand: grant nothing rather than guess.
            raise _unauthorized(
                f"The JWT's {self.claim!r} claim is neither a string nor a list of strings."
            )
        return frozenset(s for v in values for s in self.scope_map.get(v, []))


class Authenticator:
    """Checks bearer credentials. Made by :meth:`open` in the lifespan, which owns the
    HTTP client that fetches the identity provider's keys."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient | None) -> None:
        self.required = settings.auth_enabled
        self.jwt = JwtVerifier(settings, client) if client is not None else None

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Authenticator]:
        if not settings.oidc_enabled:
            yield cls(settings, None)
            return
        async with httpx.AsyncClient(
            timeout=settings.oidc_jwks_timeout, follow_redirects=False, trust_env=False
        ) as client:
            yield cls(settings, client)

    async def identify(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization")
        if header is not None:
            principal = await self._check(request, header)
        else:
            subject = certificate_subject(request.scope)
            if subject is None:
                return None
            mapped = await self._certificate(request, subject)
            if mapped is None:
                return None
            principal = mapped
        charge = charge_of(request.scope)
        if charge is not None:
            charge.principal(principal.kind, principal.name)
        return principal

    async def _check(self, request: Request, header: str) -> Principal:
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise _unauthorized("Send the credential as 'Authorization: Bearer <token>'.")
        if credential.startswith(TOKEN_PREFIX):
            db: Database = request.state.db
            async with db.connection() as conn:
                row = await conn.fetchrow(USE_TOKEN, token_digest(credential))
            if row is None:
                self._failed(request, "unknown, expired or revoked API token")
                raise _unauthorized("The API token is unknown, expired or revoked.")
            return Principal(row["name"], frozenset(row["scopes"]), "token")
        if self.jwt is not None:
            try:
                return await self.jwt.verify(credential)
            except Problem as problem:
                if problem.status == 401:
                    self._failed(request, "JWT rejected")
                raise
        self._failed(request, "not an API token, and JWTs are not configured")
        raise _unauthorized("The credential is not an EventIndex API token.")

    async def _certificate(self, request: Request, subject: str) -> Principal | None:
        db: Database = request.state.db
        async with db.connection() as conn:
            row = await conn.fetchrow(USE_MAPPING, subject)
        if row is None:
            return None
        return Principal(row["name"], frozenset(row["scopes"]), "certificate")

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
        auth: Authenticator = request.state.auth
        principal = await auth.identify(request)
        if principal is None:
            if not auth.required:
                return OPEN
            subject = certificate_subject(request.scope)
            if subject is not None:
                auth._failed(request, f"certificate subject {subject!r} is not mapped")
                raise _unauthorized(
                    f"The certificate subject '{subject}' has no live mapping here (unmapped, "
                    "expired or revoked): ask an administrator to map it, or send a bearer "
                    "token."
                )
            if certificate_from_another_site(request.scope):
                raise _unauthorized(
                    "A client certificate does not authenticate a request from another site's "
                    "page (the browser sends it by itself); send a bearer token.",
                    "invalid_request",
                )
            raise _unauthorized(
                "This service needs a credential: a bearer token, or a client certificate "
                "mapped to a principal.",
                "invalid_request",
            )
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
