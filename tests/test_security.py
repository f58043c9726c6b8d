"""Authentication (API tokens, JWTs), TLS and the two run modes, on real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from eventindex.config import Mode, Settings
from tests.support.auth import (
    Provider,
    bearer,
    cli,
    make_tls,
    new_token,
    start,
    stop,
    trusting,
    wait_up,
)
from tests.support.localpg import free_port
from tests.support.servers import app_client

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def secured(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database_url=database_url, mode=Mode.PRODUCTION)
    async for client in app_client(settings):
        yield client


async def test_token_lifecycle(database_url: str, secured: httpx.AsyncClient) -> None:
    missing = await secured.get("/v1/events/100/1")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert (await secured.get("/health")).status_code == 200
    assert (
        await secured.get("/v1/events/100/1", headers={"authorization": "Basic eDp5"})
    ).status_code == 401

    reader = new_token(database_url, "reader-1", "read")
    ok = await secured.get("/v1/events/100/1", headers=bearer(reader))
    assert ok.status_code == 200
    denied = await secured.get("/v1/tokens", headers=bearer(reader))
    assert denied.status_code == 403
    assert "admin" in denied.json()["detail"]

    admin = new_token(database_url, "admin-1", "admin", "read")
    made = await secured.post(
        "/v1/tokens", json={"name": "grid-1", "scopes": ["read"]}, headers=bearer(admin)
    )
    assert made.status_code == 201
    grid = made.json()["token"]
    assert (await secured.get("/v1/datasets", headers=bearer(grid))).status_code == 200
    listed = (await secured.get("/v1/tokens", headers=bearer(admin))).json()
    assert {t["name"] for t in listed} >= {"reader-1", "admin-1", "grid-1"}
    assert all("token" not in t for t in listed)
    assert next(t for t in listed if t["name"] == "reader-1")["last_used_at"] is not None

    # Revoked (through the API) and revoked (through the CLI): refused at once.
    assert (await secured.delete("/v1/tokens/grid-1", headers=bearer(admin))).status_code == 204
    assert (await secured.get("/v1/datasets", headers=bearer(grid))).status_code == 401
    assert cli("token", "revoke", "reader-1", url=database_url).returncode == 0
    assert (await secured.get("/v1/events/100/1", headers=bearer(reader))).status_code == 401
    again = cli("token", "revoke", "reader-1", url=database_url)
    assert again.returncode == 1
    assert "no active token" in again.stderr

    # Expired.
    soon = new_token(database_url, "short-1", "read", expires="1m")
    assert (await secured.get("/v1/events/100/1", headers=bearer(soon))).status_code == 200
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'short-1'"
        )
        # Only digests are stored: no token appears anywhere in the table.
        dump = str([dict(r) for r in await conn.fetch("SELECT * FROM api_tokens")])
    finally:
        await conn.close()
    assert (await secured.get("/v1/events/100/1", headers=bearer(soon))).status_code == 401
    for token in (reader, admin, grid, soon):
        assert token not in dump
        assert token[3:] not in dump


def test_token_cli_errors(database_url: str) -> None:
    bad = cli("token", "create", "--name", "x y", "--scope", "read", url=database_url)
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1
    when = cli(
        "token", "create", "--name", "w", "--scope", "read", "--expires", "soon", url=database_url
    )
    assert when.returncode == 1
    assert "expiry 'soon'" in when.stderr
    listing = cli("token", "list", url=database_url)
    assert listing.returncode == 0


async def test_development_mode_is_open(database_url: str) -> None:
    async for client in app_client(Settings(database_url=database_url)):
        assert (await client.get("/v1/events/100/1")).status_code == 200
        # A credential that is sent must still be valid.
        bad = await client.get("/v1/events/100/1", headers=bearer("ei_nope"))
        assert bad.status_code == 401


async def test_docs_can_be_turned_off(database_url: str) -> None:
    settings = Settings(database_url=database_url, docs_enabled=False)
    async for client in app_client(settings):
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/openapi.json")).status_code == 404


# --- JWTs from an OpenID Connect provider --------------------------------------------------


@pytest.fixture
def jwks() -> Iterator[Provider]:
    provider = Provider(scope="openid eventindex:read")
    provider.add("k1")
    yield provider
    provider.close()


async def test_jwt_accepted_and_rejected(database_url: str, jwks: Provider) -> None:
    settings = Settings(
        database_url=database_url,
        mode=Mode.PRODUCTION,
        oidc_issuer="https://iam.spd.test",
        oidc_audience="eventindex",
        oidc_jwks_url=jwks.url,
        oidc_jwks_refresh_cooldown=0,
        oidc_allow_http_jwks=True,
    )
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async for client in app_client(settings):

        async def status(token: str, client: httpx.AsyncClient = client) -> int:
            return (await client.get("/v1/events/100/1", headers=bearer(token))).status_code

        assert await status(jwks.token("k1")) == 200
        assert await status(jwks.token("k1", key=other)) == 401  # wrong key
        expired = await client.get(
            "/v1/events/100/1", headers=bearer(jwks.token("k1", exp=int(time.time()) - 120))
        )
        assert expired.status_code == 401
        assert "expired" in expired.json()["detail"]
        assert await status(jwks.token("k1", aud="someone-else")) == 401
        assert await status(jwks.token("k1", iss="https://evil.test")) == 401
        assert await status(jwks.token("k1", nbf=int(time.time()) + 600)) == 401
        assert await status(jwks.token("k1", scope="openid")) == 403  # no EventIndex scope
        # The provider rotates its key: tokens signed with the new one are accepted.
        jwks.rotate("k2")
        assert await status(jwks.token("k2")) == 200
        assert await status(jwks.token("k2", groups=["x"])) == 200


# --- TLS -------------------------------------------------------------------------------------


def test_tls_round_trip_and_secrets_stay_out_of_logs(database_url: str, tmp_path: Path) -> None:
    ca, cert, key = make_tls(tmp_path)
    token = new_token(database_url, "tls-reader", "read")
    port = free_port()
    env = {
        "EVENTINDEX_DATABASE_URL": database_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_MODE": "production",
        "EVENTINDEX_SSL_CERTFILE": str(cert),
        "EVENTINDEX_SSL_KEYFILE": str(key),
    }
    proc = start([sys.executable, "-m", "eventindex", "serve"], env)
    try:
        url = f"https://127.0.0.1:{port}"
        wait_up(url, proc, verify=trusting(ca))
        with httpx.Client(base_url=url, verify=trusting(ca)) as client:
            answer = client.get("/v1/events/100/1", headers=bearer(token))
            assert answer.status_code == 200
            assert answer.headers["strict-transport-security"] == "max-age=31536000"
            assert client.get("/v1/events/100/1", headers=bearer("ei_guess")).status_code == 401
            assert (
                client.get("/v1/events/100/1", headers=bearer("eyJhbGciOi.x.y")).status_code == 401
            )
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=5)  # not trusting the test CA
        # The server is unharmed by the plain-HTTP attempt.
        assert httpx.get(url + "/health", verify=trusting(ca), timeout=5).status_code == 200
    finally:
        err = stop(proc)
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(e.get("message", "").startswith("authentication failed") for e in logs)
    for secret in (token, token[3:], "ei_guess", "eyJhbGciOi", key.read_text().splitlines()[1]):
        assert secret not in err


@pytest.mark.parametrize("mode", ["development", "production"])
def test_both_modes_start(database_url: str, mode: str) -> None:
    port = free_port()
    env = {
        "EVENTINDEX_DATABASE_URL": database_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_WORKERS": "2",
    }
    proc = start(["sh", str(ROOT / "entry_point.sh"), mode], env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_up(url, proc)
        status = httpx.get(url + "/v1/events/100/1", timeout=5).status_code
        assert status == (200 if mode == "development" else 401)
    finally:
        stop(proc)


def test_production_without_database_url_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventindex", "serve"],
        env={k: v for k, v in os.environ.items() if k != "EVENTINDEX_DATABASE_URL"}
        | {"EVENTINDEX_MODE": "production"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "production mode needs EVENTINDEX_DATABASE_URL" in result.stderr


async def test_odd_token_names_are_422_not_500(database_url: str) -> None:
    admin = new_token(database_url, "odd-names-admin", "admin")
    async for client in app_client(Settings(database_url=database_url, mode=Mode.PRODUCTION)):
        for name in ("%00", "a%20b", "x" * 101):
            response = await client.delete(f"/v1/tokens/{name}", headers=bearer(admin))
            assert response.status_code == 422, (name, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
