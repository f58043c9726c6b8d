"""API token records: create, list, revoke. Used by the admin endpoints and the CLI."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from eventindex import queries
from eventindex.auth import SCOPES, new_token, token_digest
from eventindex.db import Connection

_DURATION = re.compile(r"^([0-9]+)([dhm])$")


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
            queries.CREATE_TOKEN, name, token_digest(token), sorted(set(scopes)), expires_at
        )
    except asyncpg.UniqueViolationError:
        raise TokenExists(f"a token named {name!r} exists already") from None
    assert row is not None
    return token, dict(row)


async def list_all(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(queries.LIST_TOKENS)]


async def revoke(conn: Connection, name: str) -> bool:
    return await conn.fetchval(queries.REVOKE_TOKEN, name) is not None
