"""Security headers and CORS: closed unless origins are configured."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from eventindex.config import Mode, Settings
from eventindex.middleware.secheaders import CONTENT_SECURITY_POLICY
from tests.support.auth import new_token
from tests.support.catalogue import RUNS
from tests.support.servers import app_client

PREFLIGHT = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


async def test_every_response_has_the_security_headers(client: httpx.AsyncClient) -> None:
    for path in ("/", "/health", f"/v1/events/{RUNS[0]}/1", "/v1/events/1/1", "/nowhere"):
        response = await client.get(path)
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["x-frame-options"] == "DENY", path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    # The API docs (Swagger UI) run only the service's own files too, under the same policy
    # (tests/test_apidocs.py renders them in Chromium); /redoc leads there.
    docs = await client.get("/docs")
    assert docs.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert docs.headers["x-frame-options"] == "DENY"
    assert "http" not in docs.text  # nothing from elsewhere
    redoc = await client.get("/redoc")
    assert (redoc.status_code, redoc.headers["location"]) == (308, "/docs")


async def test_cors_is_closed_by_default(client: httpx.AsyncClient) -> None:
    origin = {"Origin": "https://elsewhere.example"}
    preflight = await client.options("/v1/lookup", headers={**origin, **PREFLIGHT})
    assert "access-control-allow-origin" not in preflight.headers
    response = await client.get(f"/v1/events/{RUNS[0]}/1", headers=origin)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


@pytest.fixture
async def cors_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # A portal's pages may call the API when authentication is on (an open service refuses
    # foreign origins: tests/test_safe_defaults.py).
    token = new_token(database_url, "portal-reader", "read")
    settings = Settings(
        database_url=database_url, cors_origins=["https://portal.example"], mode=Mode.PRODUCTION
    )
    async for c in app_client(settings):
        c.headers["authorization"] = f"Bearer {token}"
        yield c


async def test_cors_opens_to_the_configured_origins_only(cors_client: httpx.AsyncClient) -> None:
    ok = {"Origin": "https://portal.example"}
    preflight = await cors_client.options("/v1/lookup", headers={**ok, **PREFLIGHT})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://portal.example"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    response = await cors_client.get(f"/v1/events/{RUNS[0]}/1", headers=ok)
    assert response.headers["access-control-allow-origin"] == "https://portal.example"
    other = {"Origin": "https://elsewhere.example"}
    refused = await cors_client.options("/v1/lookup", headers={**other, **PREFLIGHT})
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers


async def test_framework_read_bodies_are_limited(database_url: str) -> None:
    # The token endpoints (bodies the framework reads) exist when authentication is on.
    admin = {"authorization": "Bearer " + new_token(database_url, "limits-admin", "admin")}
    settings = Settings(database_url=database_url, max_body_bytes=4096, mode=Mode.PRODUCTION)
    async for client in app_client(settings):
        big = b'{"name": "' + b"x" * 10_000 + b'", "scopes": ["read"]}'
        response = await client.post(
            "/v1/tokens", content=big, headers={"content-type": "application/json", **admin}
        )
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert "4096 bytes" in response.json()["detail"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for _ in range(10):
                yield b" " * 1000

        response = await client.post(
            "/v1/tokens", content=chunks(), headers={"content-type": "application/json", **admin}
        )
        assert response.status_code == 413
