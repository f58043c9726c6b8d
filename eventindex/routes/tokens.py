"""Token management for holders of the admin scope."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from fastapi.responses import Response
from pydantic import BaseModel, Field

from eventindex import tokens
from eventindex.auth import require
from eventindex.db import PoolDep, SettingsDep, acquire
from eventindex.problems import Problem, problem_responses

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], dependencies=[Depends(require("admin"))])
_NAME = r"^[A-Za-z0-9._@-]{1,100}$"


class TokenRequest(BaseModel):
    name: str = Field(pattern=_NAME, examples=["grid-picking"])
    scopes: list[Literal["read", "write", "admin"]] = Field(min_length=1, examples=[["read"]])
    expires_at: datetime | None = None


class TokenInfo(BaseModel):
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class NewToken(TokenInfo):
    token: str = Field(description="The token itself: shown this once, never stored")


@router.post(
    "",
    status_code=201,
    response_model=NewToken,
    responses={
        201: {
            "links": {
                "RevokeToken": {
                    "operationRef": "#/paths/~1v1~1tokens~1{name}/delete",
                    "parameters": {"name": "$response.body#/name"},
                }
            }
        },
        **problem_responses(400, 401, 403, 408, 409, 413, 422, 503),
    },
)
async def create_token(body: TokenRequest, pool: PoolDep, settings: SettingsDep) -> Any:
    async with acquire(pool, settings.pool_acquire_timeout) as conn:
        try:
            token, record = await tokens.create(conn, body.name, body.scopes, body.expires_at)
        except tokens.TokenError as exc:
            status = 409 if "exists" in str(exc) else 422
            raise Problem(
                status, "invalid-token-request", "Invalid token request", str(exc)
            ) from None
    return {**record, "token": token}


@router.get("", response_model=list[TokenInfo], responses=problem_responses(401, 403, 503))
async def list_tokens(pool: PoolDep, settings: SettingsDep) -> Any:
    async with acquire(pool, settings.pool_acquire_timeout) as conn:
        return await tokens.list_all(conn)


@router.delete("/{name}", status_code=204, responses=problem_responses(401, 403, 404, 422, 503))
async def revoke_token(
    name: Annotated[str, Path(pattern=_NAME)],
    pool: PoolDep,
    settings: SettingsDep,
) -> Response:
    async with acquire(pool, settings.pool_acquire_timeout) as conn:
        if not await tokens.revoke(conn, name):
            raise Problem(404, "token-not-found", "Token not found", f"No live token {name!r}.")
    return Response(status_code=204)
