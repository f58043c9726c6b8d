"""Token and certificate-principal management for holders of the admin scope (only when
authentication is on)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, Field, field_validator

from eventindex import certs, tokens
from eventindex.auth import require
from eventindex.deps import DatabaseDep, WriteConnection
from eventindex.problems import Problem, problem_responses
from eventindex.routes.jsonbody import read_json

router = APIRouter(prefix="/v1/tokens", tags=["tokens"], dependencies=[Depends(require("admin"))])


class _Grant(BaseModel):
    """What a token and a certificate mapping both grant: scopes, until when."""

    scopes: list[Literal["read", "write", "admin"]] = Field(min_length=1, examples=[["read"]])
    # Strict: an RFC 3339 string with its offset; a number (read as Unix time by lax
    # parsing) is refused.
    expires_at: Annotated[AwareDatetime | None, Field(strict=True)] = Field(
        default=None,
        description="RFC 3339 date-time with an offset, in the future; null for never",
        examples=["2027-06-30T00:00:00Z"],
    )

    @field_validator("expires_at")
    @classmethod
    def _in_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("expires_at must be in the future")
        return value


class TokenRequest(_Grant):
    name: str = Field(pattern=tokens.NAME_PATTERN, examples=["grid-picking"])


class TokenInfo(BaseModel):
    name: str
    scopes: list[str]
    state: Literal["active", "expired", "revoked"]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class NewToken(TokenInfo):
    token: str = Field(description="The token itself: shown this once, never stored")


_TOKEN_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TokenRequest"}}},
    }
}


async def read_token_request(request: Request) -> TokenRequest:
    """The body, read only now: the router's ``require('admin')`` has run first, so an
    anonymous caller's body is never read (FastAPI reads declared bodies before it
    solves dependencies)."""
    return await read_json(request, TokenRequest)


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
    openapi_extra=_TOKEN_BODY_DOC,
)
async def create_token(request: Request, db: DatabaseDep) -> Any:
    body = await read_token_request(request)
    # Acquired after the body is in: a slow upload holds no connection.
    async with db.connection() as conn:
        try:
            token, record = await tokens.create(conn, body.name, body.scopes, body.expires_at)
        except tokens.TokenExists as exc:
            raise Problem(409, "token-exists", "Token exists", str(exc)) from None
        except tokens.TokenError as exc:
            raise Problem(422, "invalid-token-request", "Invalid token request", str(exc)) from None
    return {**record, "state": "active", "token": token}


@router.get("", response_model=list[TokenInfo], responses=problem_responses(401, 403, 503))
async def list_tokens(conn: WriteConnection) -> Any:
    return await tokens.list_all(conn)


@router.delete("/{name}", status_code=204, responses=problem_responses(401, 403, 404, 422, 503))
async def revoke_token(
    name: Annotated[str, Path(pattern=tokens.NAME_PATTERN)],
    conn: WriteConnection,
) -> Response:
    if not await tokens.revoke(conn, name):
        raise Problem(404, "token-not-found", "Token not found", f"No live token {name!r}.")
    return Response(status_code=204)


# --- certificate principals -------------------------------------------------------------------

certificates = APIRouter(
    prefix="/v1/certificates", tags=["certificates"], dependencies=[Depends(require("admin"))]
)


class CertificateRequest(_Grant):
    dn: str = Field(
        min_length=1,
        max_length=certs.MAX_DN_LENGTH,
        description="The certificate subject, in RFC 4514 form (CN=...,O=...,C=...) or "
        "OpenSSL's slash form (/C=.../O=.../CN=...)",
        examples=["/C=RU/O=JINR/OU=LIT/CN=Ivan Ivanov"],
    )
    name: str = Field(pattern=tokens.NAME_PATTERN, examples=["ivanov"])


class CertificateInfo(BaseModel):
    name: str
    dn: str = Field(description="The subject in its canonical RFC 4514 form")
    scopes: list[str]
    state: Literal["active", "expired", "revoked"]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


_CERTIFICATE_BODY_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/CertificateRequest"}}
        },
    }
}


@certificates.post(
    "",
    status_code=201,
    response_model=CertificateInfo,
    responses={
        201: {
            "links": {
                "RevokeCertificate": {
                    "operationRef": "#/paths/~1v1~1certificates~1{name}/delete",
                    "parameters": {"name": "$response.body#/name"},
                }
            }
        },
        **problem_responses(400, 401, 403, 408, 409, 413, 422, 503),
    },
    openapi_extra=_CERTIFICATE_BODY_DOC,
)
async def map_certificate(request: Request, db: DatabaseDep) -> Any:
    body = await read_json(request, CertificateRequest)
    async with db.connection() as conn:
        try:
            record = await certs.add(conn, body.name, body.dn, body.scopes, body.expires_at)
        except certs.MappingExists as exc:
            raise Problem(
                409, "certificate-exists", "Certificate mapping exists", str(exc)
            ) from None
        except certs.CertificateError as exc:
            raise Problem(
                422, "invalid-certificate-request", "Invalid certificate request", str(exc)
            ) from None
    return {**record, "state": "active"}


@certificates.get(
    "", response_model=list[CertificateInfo], responses=problem_responses(401, 403, 503)
)
async def list_certificates(conn: WriteConnection) -> Any:
    return await certs.list_all(conn)


@certificates.delete(
    "/{name}", status_code=204, responses=problem_responses(401, 403, 404, 422, 503)
)
async def revoke_certificate(
    name: Annotated[str, Path(pattern=tokens.NAME_PATTERN)],
    conn: WriteConnection,
) -> Response:
    if not await certs.revoke(conn, name):
        raise Problem(
            404,
            "certificate-not-found",
            "Certificate mapping not found",
            f"No live mapping {name!r}.",
        )
    return Response(status_code=204)
