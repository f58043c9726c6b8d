"""API token records: create, list, revoke. Used by the admin endpoints and the CLI."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from eventindex.db import Connection

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

CREATE_TOKEN = """
INSERT INTO api_tokens (name, token_sha256, scopes, expires_at)
VALUES ($1, $2, $3, $4)
RETURNING name, scopes, created_at, expires_at
"""

# The token's record if it may be used now; marks it used (at most once a minute).
USE_TOKEN = """
WITH found AS (
    SELECT id, name, scopes, last_used_at FROM api_tokens
    WHERE token_sha256 = $1 AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > now())
), touched AS (
    UPDATE api_tokens AS t SET last_used_at = now()
    FROM found AS f
    WHERE t.id = f.id AND (f.last_used_at IS NULL OR f.last_used_at < now() - interval '1 minute')
)
SELECT name, scopes FROM found
"""

LIST_TOKENS = """
SELECT name, scopes, created_at, expires_at, last_used_at, revoked_at,
       CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
            WHEN expires_at <= now() THEN 'expired'
            ELSE 'active' END AS state
FROM api_tokens ORDER BY name
"""

REVOKE_TOKEN = """
UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL RETURNING name
"""


_DURATION = re.compile(r"^([0-9]+)([dhm])$")


SCOPES = ("read", "write", "admin")
TOKEN_PREFIX = "ei_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """Only this is stored: the digest of a high-entropy secret is looked up by an index, so
    no comparison's timing depends on the secret."""
    return hashlib.sha256(token.encode()).hexdigest()


NAME_PATTERN = r"^[A-Za-z0-9._@-]{1,100}$"


class TokenError(ValueError):
    pass


class TokenExists(TokenError):
    pass


def parse_expiry(text: str | None, now: datetime | None = None) -> datetime | None:
    """``30d``, ``12h``, ``45m`` from now, or an ISO date/time; None for never."""
    if not text:
        return None
    now = now or datetime.now(UTC)
    match = _DURATION.match(text)
    if match:
        n, unit = int(match.group(1)), match.group(2)
        unit_length = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
        try:
            return now + n * unit_length[unit]
        except OverflowError:
            raise TokenError(f"expiry {text!r} is too far in the future") from None
    try:
        when = datetime.fromisoformat(text)
        when = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise TokenError(f"expiry {text!r} is too far in the future") from None
    except ValueError:
        raise TokenError(f"expiry {text!r} is neither like 30d, 12h, 45m nor an ISO date") from None
    if when <= now:
        raise TokenError(f"expiry {text!r} is not in the future")
    return when


async def create(
    conn: Connection, name: str, scopes: Sequence[str], expires_at: datetime | None
) -> tuple[str, dict[str, Any]]:
    """A new token (returned once, never stored) and its record."""
    unknown = set(scopes) - set(SCOPES)
    if not scopes or unknown:
        raise TokenError(f"scopes must be some of {', '.join(SCOPES)}")
    if not re.fullmatch(NAME_PATTERN, name):
        raise TokenError("a token name is 1-100 letters, digits and . _ @ -")
    token = new_token()
    try:
        row = await conn.fetchrow(
            CREATE_TOKEN, name, token_digest(token), sorted(set(scopes)), expires_at
        )
    except asyncpg.UniqueViolationError:
        raise TokenExists(f"a token named {name!r} exists already") from None
    assert row is not None
    return token, dict(row)


async def list_all(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(LIST_TOKENS)]


async def revoke(conn: Connection, name: str) -> bool:
    return await conn.fetchval(REVOKE_TOKEN, name) is not None
