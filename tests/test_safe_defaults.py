"""Safe by default: what an operator gets who sets nothing, and the holes an outside
review opened (issue 15). Each test names the finding it guards."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr, ValidationError

from eventindex.app import create_app
from eventindex.config import Mode, Settings
from eventindex.middleware.ratelimit import RateLimiter
from tests.support.auth import Provider, bearer, new_token, start, stop, wait_up
from tests.support.localpg import free_port
from tests.support.servers import app_client

ROOT = Path(__file__).resolve().parents[1]


def eventindex(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventindex", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- Finding 1: open mode is for one's own machine -------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "eventindex.example"])
def test_open_service_refuses_a_network_address(database_url: str, host: str) -> None:
    result = eventindex("serve", "--host", host, EVENTINDEX_DATABASE_URL=database_url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "EVENTINDEX_HOST" in lines[0]
    assert "EVENTINDEX_ALLOW_OPEN_SERVICE" in lines[0]


def test_loopback_addresses_and_explicit_override_are_accepted() -> None:
    url = "postgresql://unused@127.0.0.1:1/x"
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1"):
        assert Settings(database_url=url, host=host).loopback_only
    opened = Settings(database_url=url, host="0.0.0.0", allow_open_service=True)
    assert not opened.loopback_only
    # With authentication on, any address: the credential protects it.
    assert Settings(database_url=url, host="0.0.0.0", mode=Mode.PRODUCTION).auth_enabled


def test_production_refuses_authentication_off(database_url: str) -> None:
    env = {"EVENTINDEX_DATABASE_URL": database_url, "EVENTINDEX_AUTH_REQUIRED": "false"}
    result = subprocess.run(
        ["sh", str(ROOT / "entry_point.sh"), "production"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "EVENTINDEX_ALLOW_OPEN_SERVICE" in result.stderr
    with pytest.raises(ValidationError):
        Settings(database_url=database_url, mode=Mode.PRODUCTION, auth_required=False)
    Settings(
        database_url=database_url,
        mode=Mode.PRODUCTION,
        auth_required=False,
        allow_open_service=True,
    )


@pytest.mark.parametrize(
    ("host", "answered"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("127.9.9.9", True),
        ("[::1]:8000", True),
        ("app.localhost:8000", True),
        ("rebind.attacker.example", False),
        ("rebind.attacker.example:8000", False),
        ("10.0.0.5:8000", False),
        ("localhost.attacker.example", False),
        ("", False),
    ],
)
async def test_open_service_answers_only_loopback_host_names(
    database_url: str, host: str, answered: bool
) -> None:
    async for client in app_client(Settings(database_url=database_url)):
        response = await client.get("/v1/events/100/1", headers={"host": host})
        if answered:
            assert response.status_code == 200, response.text
        else:
            assert response.status_code == 421
            assert response.headers["content-type"] == "application/problem+json"
            assert "host-not-allowed" in response.json()["type"]
        page = await client.get("/", headers={"host": host})
        assert (page.status_code == 200) is answered


async def test_host_check_is_off_with_authentication_or_override(database_url: str) -> None:
    token = new_token(database_url, "host-reader", "read")
    production = Settings(database_url=database_url, mode=Mode.PRODUCTION)
    async for client in app_client(production):
        answer = await client.get(
            "/v1/events/100/1", headers={"host": "eventindex.jinr.example", **bearer(token)}
        )
        assert answer.status_code == 200
    opened = Settings(database_url=database_url, allow_open_service=True)
    async for client in app_client(opened):
        answer = await client.get("/v1/events/100/1", headers={"host": "eventindex.example"})
        assert answer.status_code == 200


async def test_open_service_has_no_token_administration(database_url: str) -> None:
    async for client in app_client(Settings(database_url=database_url)):
        made = await client.post("/v1/tokens", json={"name": "anyone", "scopes": ["admin"]})
        assert made.status_code == 404
        assert (await client.get("/v1/tokens")).status_code == 404
        assert (await client.delete("/v1/tokens/x")).status_code == 404
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not any(p.startswith("/v1/tokens") for p in paths)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM api_tokens WHERE name = 'anyone'") == 0
    finally:
        await conn.close()


# --- Finding 5: production says what it leaves open ------------------------------------------


class Production:
    """A real ``eventindex serve`` in production mode; its log once it has stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.logs: list[str] = []


@contextmanager
def production(database_url: str, **env: str) -> Iterator[Production]:
    port = free_port()
    proc = start(
        [sys.executable, "-m", "eventindex", "serve"],
        {
            "EVENTINDEX_DATABASE_URL": database_url,
            "EVENTINDEX_PORT": str(port),
            "EVENTINDEX_MODE": "production",
            **env,
        },
    )
    server = Production(f"http://127.0.0.1:{port}")
    try:
        wait_up(server.url, proc)
        yield server
    finally:
        server.logs = stop(proc).strip().splitlines()


def serve_logs(database_url: str, **env: str) -> list[str]:
    """The lines a production server logs from start to a normal stop."""
    with production(database_url, EVENTINDEX_LOG_LEVEL="info", **env) as server:
        pass
    return server.logs


def test_production_warns_once_for_each_open_surface(database_url: str) -> None:
    lines = serve_logs(database_url)
    records = [json.loads(line) for line in lines]  # every line is JSON
    warnings = [r["message"] for r in records if r["level"] == "warning"]
    assert sum("/docs" in w for w in warnings) == 1, warnings
    assert sum("/metrics" in w for w in warnings) == 1, warnings
    assert any(r["message"].startswith("serving on http://") for r in records)

    closed = serve_logs(
        database_url, EVENTINDEX_DOCS_ENABLED="false", EVENTINDEX_METRICS_TOKEN="scrape-me"
    )
    records = [json.loads(line) for line in closed]
    assert not [r for r in records if "open to anyone" in r["message"]]


# --- Findings 2 and 3: keys come and go with the JWKS; a slow provider stalls nobody ----------


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    p.add("k1")
    yield p
    p.close()


def oidc_settings(database_url: str, url: str, **extra: Any) -> Settings:
    return Settings(
        database_url=database_url,
        mode=Mode.PRODUCTION,
        oidc_issuer="https://iam.spd.test",
        oidc_audience="eventindex",
        oidc_jwks_url=url,
        oidc_allow_http_jwks=True,
        **extra,
    )


async def status(client: httpx.AsyncClient, token: str, path: str = "/v1/events/100/1") -> int:
    return (await client.get(path, headers=bearer(token))).status_code


async def test_key_dropped_by_the_provider_is_refused(
    database_url: str, provider: Provider
) -> None:
    settings = oidc_settings(database_url, provider.url, oidc_jwks_refresh_cooldown=0)
    async for client in app_client(settings):
        old = provider.token("k1")
        assert await status(client, old, "/v1/tokens") == 200
        # The provider rotates: k1 is gone, k2 is new. A k2 token makes the service fetch.
        del provider.keys["k1"]
        provider.add("k2")
        assert await status(client, provider.token("k2")) == 200
        refused = await client.get("/v1/tokens", headers=bearer(old))
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"


async def test_keys_are_refetched_on_schedule(database_url: str, provider: Provider) -> None:
    settings = oidc_settings(
        database_url, provider.url, oidc_jwks_refresh_minutes=0.2 / 60, oidc_jwks_refresh_cooldown=0
    )
    async for client in app_client(settings):
        old = provider.token("k1")
        assert await status(client, old) == 200
        provider.keys.clear()
        provider.add("k2")
        # No token names an unknown key: only the schedule can notice that k1 is gone.
        deadline = time.monotonic() + 30
        while await status(client, old) == 200:
            assert time.monotonic() < deadline, "k1 was still trusted 30 s after it went"
            await asyncio.sleep(0.1)
        assert await status(client, old) == 401


async def test_hanging_provider_stalls_no_login(database_url: str, provider: Provider) -> None:
    settings = oidc_settings(
        database_url, provider.url, oidc_jwks_timeout=1.0, oidc_jwks_refresh_cooldown=0.3
    )
    async for client in app_client(settings):
        valid = provider.token("k1")
        assert await status(client, valid) == 200
        await asyncio.sleep(0.4)  # past the cooldown: an unknown key id may cause a fetch
        fetches = provider.fetches
        provider.hang.set()
        junk = [provider.token(f"junk-{i}", key=provider.keys["k1"]) for i in range(23)]
        # The old client held a global lock for up to 30 s per junk token: 23 of them and
        # the valid one waited minutes. Now: one fetch at most, bounded, and the valid
        # token (its key known) never waits for it.
        async with asyncio.timeout(20):
            answers = await asyncio.gather(
                *(status(client, t) for t in junk), status(client, valid)
            )
        assert answers[-1] == 200
        assert set(answers[:-1]) == {401}
        assert provider.fetches - fetches == 1


async def test_unreachable_provider_is_503(database_url: str) -> None:
    port = free_port()  # nobody listens there
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode(
        {"iss": "https://iam.spd.test", "aud": "eventindex", "sub": "x", "exp": 2**40},
        key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    settings = oidc_settings(database_url, f"http://127.0.0.1:{port}/jwks.json")
    async for client in app_client(settings):
        answer = await client.get("/v1/events/100/1", headers=bearer(token))
        assert answer.status_code == 503
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"].endswith("identity-provider-unavailable")
        assert int(answer.headers["retry-after"]) >= 1


def test_jwks_must_be_https_unless_allowed() -> None:
    oidc: dict[str, Any] = {
        "database_url": "postgresql://unused@127.0.0.1:1/x",
        "oidc_issuer": "https://iam.spd.test",
        "oidc_audience": "eventindex",
    }
    with pytest.raises(ValidationError, match="https"):
        Settings(**oidc, oidc_jwks_url="http://iam.spd.test/jwks")
    with pytest.raises(ValidationError, match="https"):
        Settings(**oidc, oidc_jwks_url="file:///etc/passwd", oidc_allow_http_jwks=True)
    Settings(**oidc, oidc_jwks_url="https://iam.spd.test/jwks")
    Settings(**oidc, oidc_jwks_url="http://iam.spd.test/jwks", oidc_allow_http_jwks=True)


# --- Finding 7: scope claims are strings ------------------------------------------------------


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        ("eventindex:admin", 200),
        (["eventindex:admin"], 200),
        ("openid eventindex:read", 403),
        (5, 401),
        ({"eventindex:admin": 1}, 401),  # was mapped through its keys: admin
        (["eventindex:admin", 5], 401),
        ([["eventindex:admin"]], 401),
        (True, 401),
    ],
)
async def test_scope_claim_must_be_a_string_or_strings(
    database_url: str, provider: Provider, claim: Any, expected: int
) -> None:
    async for client in app_client(oidc_settings(database_url, provider.url)):
        token = provider.token("k1", scope=claim)
        answer = await client.get("/v1/tokens", headers=bearer(token))
        assert answer.status_code == expected, answer.text


async def test_jwt_leeway_is_a_setting(database_url: str, provider: Provider) -> None:
    late = provider.token("k1", exp=int(time.time()) - 90)
    async for client in app_client(oidc_settings(database_url, provider.url)):
        assert await status(client, late) == 401  # default leeway 30 s
    settings = oidc_settings(database_url, provider.url, oidc_leeway_seconds=120)
    async for client in app_client(settings):
        assert await status(client, late) == 200


# --- Finding 4: the rate limit keys on who is asking --------------------------------------------


def limited(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        mode=Mode.PRODUCTION,
        rate_limit_per_second=0.01,
        rate_limit_burst=5,
        metrics_token=SecretStr("scrape-me"),
    )


async def limited_client(
    settings: Settings, address: str
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    from asgi_lifespan import LifespanManager

    app = create_app(settings)
    async with LifespanManager(app) as manager:

        def client_from(addr: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=manager.app, client=(addr, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://localhost")

        async with client_from(address) as client:
            yield client, client_from


async def test_reformatted_credentials_share_one_budget(database_url: str) -> None:
    token = new_token(database_url, "spacey", "read")
    async for client, client_from in limited_client(limited(database_url), "192.0.2.1"):
        codes = []
        for i in range(15):
            header = "Bearer" + " " * (i + 1) + token + " " * i
            codes.append(await client.get("/v1/datasets", headers={"authorization": header}))
        statuses = [r.status_code for r in codes]
        assert statuses == [200] * 5 + [429] * 10
        assert int(codes[-1].headers["retry-after"]) >= 1
        # The same principal from another address: the same budget, spent.
        async with client_from("192.0.2.2") as elsewhere:
            again = await elsewhere.get("/v1/datasets", headers=bearer(token))
            assert again.status_code == 429
            # ... while that address itself, anonymous, still has its own.
            assert (await elsewhere.get("/v1/datasets")).status_code == 401


async def test_guessed_tokens_are_limited_by_address(database_url: str) -> None:
    async for client, client_from in limited_client(limited(database_url), "192.0.2.3"):
        statuses = []
        for i in range(12):
            answer = await client.get("/v1/datasets", headers=bearer(f"ei_guess{i}"))
            statuses.append(answer.status_code)
        assert statuses == [401] * 5 + [429] * 7
        async with client_from("192.0.2.4") as other:
            assert (await other.get("/v1/datasets", headers=bearer("ei_x"))).status_code == 401


async def test_metrics_token_guesses_are_limited(database_url: str) -> None:
    async for client, _ in limited_client(limited(database_url), "192.0.2.5"):
        statuses = []
        for i in range(8):
            answer = await client.get("/metrics", headers=bearer(f"guess-{i}"))
            statuses.append(answer.status_code)
        assert statuses == [401] * 5 + [429] * 3


def test_a_flood_of_new_clients_resets_nobody() -> None:
    limiter = RateLimiter(per_second=0.001, burst=3, max_clients=100)
    for _ in range(3):
        assert limiter.take("a:victim-is-attacker") == 0
    assert limiter.take("a:victim-is-attacker") > 0
    for i in range(10_000):
        limiter.take(f"a:flood-{i}")
    assert len(limiter.buckets) <= 101
    assert limiter.take("a:victim-is-attacker") > 0  # still spent
    assert limiter.wait("a:victim-is-attacker") > 0


def test_refilled_buckets_make_room() -> None:
    limiter = RateLimiter(per_second=1000.0, burst=2, max_clients=10)
    for i in range(10):
        limiter.take(f"a:{i}")
    time.sleep(0.01)  # every bucket refills (2 tokens at 1000/s)
    assert limiter.take("a:new") == 0
    assert "a:new" in limiter.buckets


# --- Finding 7: Unicode digits and other look-alikes are 4xx, never 500 ------------------------

LOOKALIKES = ["²", "٣", "１", "1_000", "+1", " 1", "1.0", "0x1", "1e3", "½", "Ⅻ", "𝟙"]


def fill(path: str, params: list[dict[str, Any]], bad: str | None, target: str | None) -> str:
    defaults = {"run_number": "100", "event_number": "1", "run": "100", "dataset_id": "1"}
    for p in params:
        if p["in"] == "path":
            value = bad if p["name"] == target else defaults.get(p["name"], "1")
            if p["name"] == "fuid":
                value = bad if p["name"] == target else "00000000-0000-0000-0000-000000000000"
            path = path.replace("{" + p["name"] + "}", value or "1")
    return path


async def test_lookalike_digits_sweep_every_operation(database_url: str) -> None:
    token = new_token(database_url, "sweeper", "read", "write", "admin")
    production = Settings(database_url=database_url, mode=Mode.PRODUCTION)
    async for client in app_client(production):
        document = (await client.get("/openapi.json")).json()
        tried = 0
        for path, item in document["paths"].items():
            for method, op in item.items():
                params = op.get("parameters", [])
                for p in params:
                    schema = p.get("schema", {})
                    kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
                    numeric = "integer" in kinds
                    assert not {"ge", "le"} & set(schema), (path, p)  # JSON Schema names
                    for bad in LOOKALIKES:
                        url = fill(path, params, bad, p["name"])
                        query = {p["name"]: bad} if p["in"] == "query" else {}
                        answer = await client.request(
                            method.upper(), url, params=query, headers=bearer(token)
                        )
                        tried += 1
                        where = f"{method.upper()} {path} {p['name']}={bad!r}"
                        assert answer.status_code < 500, (where, answer.text)
                        if numeric:
                            assert 400 <= answer.status_code < 500, (where, answer.text)
                            assert answer.headers["content-type"] == "application/problem+json"
        assert tried > 100
        # The decision names of a selection (finding 7's own example).
        for op in ("count", "events"):
            for param in ("all", "any", "none"):
                answer = await client.get(
                    f"/v1/selection/{op}", params={param: "²"}, headers=bearer(token)
                )
                assert answer.status_code == 422, answer.text
        # Numbers in a lookup body, as text lines, NDJSON and JSON.
        for content, media in [
            ("٣ 1\n", "text/plain"),
            ("100 ²\n", "text/plain"),
            ('{"run_number": "١٠٠", "event_number": 1}\n', "application/x-ndjson"),
            ('{"pairs": [["١٠٠", 1]]}', "application/json"),
        ]:
            answer = await client.post(
                "/v1/lookup",
                content=content.encode(),
                headers={"content-type": media, **bearer(token)},
            )
            assert answer.status_code == 422, (content, answer.text)


# --- Finding 8: tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expires_at",
    [0, 1_700_000_000, "1970-01-01T00:00:01Z", "2020-01-01T00:00:00+00:00", "2030-01-01T00:00:00",
     "2030-01-01", "tomorrow", True],
)  # fmt: skip
async def test_token_expiry_is_a_future_rfc3339_time(
    database_url: str, secured_admin: tuple[httpx.AsyncClient, str], expires_at: Any
) -> None:
    client, admin = secured_admin
    answer = await client.post(
        "/v1/tokens",
        json={"name": "exp-test", "scopes": ["read"], "expires_at": expires_at},
        headers=bearer(admin),
    )
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert "expires_at" in answer.text


@pytest.fixture
async def secured_admin(database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    admin = new_token(database_url, f"admin-{time.monotonic_ns()}", "admin")
    async for client in app_client(Settings(database_url=database_url, mode=Mode.PRODUCTION)):
        yield client, admin


async def test_expired_tokens_are_listed_as_expired(
    database_url: str, secured_admin: tuple[httpx.AsyncClient, str]
) -> None:
    client, admin = secured_admin
    made = await client.post(
        "/v1/tokens",
        json={"name": "soon-gone", "scopes": ["read"], "expires_at": "2999-01-01T00:00:00Z"},
        headers=bearer(admin),
    )
    assert made.status_code == 201, made.text
    assert made.json()["state"] == "active"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 hour' WHERE name = 'soon-gone'"
        )
    finally:
        await conn.close()
    listed = {t["name"]: t for t in (await client.get("/v1/tokens", headers=bearer(admin))).json()}
    assert listed["soon-gone"]["state"] == "expired"
    assert listed[next(n for n in listed if n.startswith("admin-"))]["state"] == "active"
    shown = eventindex("token", "--database-url", database_url, "list")
    line = next(x for x in shown.stdout.splitlines() if x.startswith("soon-gone\t"))
    assert "\texpired\t" in line
    past = eventindex(
        "token", "--database-url", database_url, "create", "--name", "past",
        "--scope", "read", "--expires", "2001-01-01",
    )  # fmt: skip
    assert past.returncode == 1
    assert "not in the future" in past.stderr


async def test_anonymous_token_body_is_never_read(database_url: str) -> None:
    read = []

    async def body() -> AsyncIterator[bytes]:
        read.append(True)
        yield b'{"name": "intruder", "scopes": ["admin"]}'

    async for client in app_client(Settings(database_url=database_url, mode=Mode.PRODUCTION)):
        answer = await client.post(
            "/v1/tokens", content=body(), headers={"content-type": "application/json"}
        )
        assert answer.status_code == 401
        reader = new_token(database_url, f"reader-{time.monotonic_ns()}", "read")
        answer = await client.post(
            "/v1/tokens",
            content=body(),
            headers={"content-type": "application/json", **bearer(reader)},
        )
        assert answer.status_code == 403
    assert read == []


async def test_hsts_only_over_https(database_url: str) -> None:
    async for client in app_client(Settings(database_url=database_url)):
        plain = await client.get("/health")
        assert "strict-transport-security" not in plain.headers


# --- Found by the adversarial pass after the fixes above -----------------------------------------


def _unsigned(header: dict[str, Any]) -> str:
    import base64

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part({})}.AAAA"


async def test_jwt_for_another_algorithm_than_its_key_is_401(
    database_url: str, provider: Provider
) -> None:
    """Found: an unsigned token whose header said ES256 for the provider's RSA key made
    PyJWT raise TypeError: 500 (and a traceback) for anyone, whenever OIDC was on."""
    async for client in app_client(oidc_settings(database_url, provider.url)):
        assert await status(client, provider.token("k1")) == 200
        for alg in ("ES256", "ES384", "PS256", "HS256", "none"):
            answer = await client.get(
                "/v1/datasets", headers=bearer(_unsigned({"alg": alg, "kid": "k1"}))
            )
            assert answer.status_code == 401, (alg, answer.text)
        # Validly signed with the provider's key, but PS256 where the JWKS says RS256.
        body = {"iss": "https://iam.spd.test", "aud": "eventindex", "sub": "x",
                "exp": int(time.time()) + 60, "scope": "eventindex:read"}  # fmt: skip
        pss = jwt.encode(body, provider.keys["k1"], algorithm="PS256", headers={"kid": "k1"})
        assert await status(client, pss) == 401


async def test_an_empty_key_set_trusts_no_key(database_url: str, provider: Provider) -> None:
    """Found: a JWKS of no keys was taken for a failed fetch, and the old keys stayed
    trusted for up to twice the refresh interval."""
    settings = oidc_settings(database_url, provider.url, oidc_jwks_refresh_cooldown=0)
    async for client in app_client(settings):
        old = provider.token("k1")
        assert await status(client, old) == 200
        signer = provider.keys.pop("k1")
        assert await status(client, provider.token("k9", key=signer)) == 401  # a fetch
        assert await status(client, old) == 401


async def test_concurrent_guesses_are_limited_too(database_url: str) -> None:
    """Found: the address was checked before authentication and charged after it, so
    1,000 guesses sent at once were all checked against the database."""
    async for client, _ in limited_client(limited(database_url), "192.0.2.7"):
        answers = await asyncio.gather(
            *(client.get("/v1/datasets", headers=bearer(f"ei_burst{i}")) for i in range(40))
        )
        codes = [a.status_code for a in answers]
        assert codes.count(401) == 5, codes  # the burst, no more
        assert codes.count(429) == 35, codes


async def test_anonymous_traffic_does_not_lock_out_a_token_holder(database_url: str) -> None:
    """Found: once an address had spent its budget on anonymous requests, a valid token
    from the same address (a NAT, a site proxy) got 429 before it was even checked."""
    token = new_token(database_url, "behind-nat", "read")
    async for client, _ in limited_client(limited(database_url), "192.0.2.8"):
        anonymous = [(await client.get("/v1/datasets")).status_code for _ in range(8)]
        assert anonymous == [401] * 5 + [429] * 3
        holder = [
            (await client.get("/v1/datasets", headers=bearer(token))).status_code for _ in range(5)
        ]
        assert holder == [200] * 5


def test_client_keys_are_bounded_addresses() -> None:
    from eventindex.middleware.ratelimit import client_key

    def key(host: str) -> str:
        return client_key({"client": (host, 1)})

    assert key("192.0.2.1") == "192.0.2.1"
    # One host may hold a whole /64: its addresses share a bucket.
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("::ffff:192.0.2.1") == "192.0.2.1"
    # Whatever a forwarded header or a proxy made of the address: one key, bounded.
    assert key("x" * 60_000) == key("not-an-address") == "unknown"
    assert client_key({}) == "unknown"


def test_forwarded_for_is_trusted_from_configured_proxies_only(database_url: str) -> None:
    """Found: X-Forwarded-For was trusted from 127.0.0.1 by default, so any local process or
    a pass-through proxy got a fresh rate-limit bucket per request (and could grow the
    bucket table with 60 KB keys)."""
    assert Settings(database_url=database_url).forwarded_allow_ips == ""
    limits = {
        "EVENTINDEX_RATE_LIMIT_PER_SECOND": "0.01",
        "EVENTINDEX_RATE_LIMIT_BURST": "3",
        # Buckets live in each worker, and production starts one per CPU.
        "EVENTINDEX_WORKERS": "1",
    }
    with production(database_url, **limits) as server:
        codes = [
            httpx.get(
                server.url + "/v1/datasets", headers={"x-forwarded-for": f"198.51.100.{i}"}
            ).status_code
            for i in range(6)
        ]
    assert codes == [401] * 3 + [429] * 3


def test_embedded_socket_is_its_owners_only(tmp_path: Path) -> None:
    """Found: with a data directory path too long for a socket name, the wheel put the
    trust-authenticated socket in a 0777 directory under /tmp: any local user had a
    superuser session (and, through COPY ... PROGRAM, the server's OS account)."""
    from eventindex import embedded

    data_dir = Path("/tmp") / ("eventindex-long-" + "x" * 100) / tmp_path.name
    try:
        server, url = embedded.start(data_dir)
        try:
            socket_dir = Path(url.split("host=", 1)[1])
            sockets = [p for p in socket_dir.iterdir() if p.name.startswith(".s.PGSQL.")]
            sockets = [p for p in sockets if not p.name.endswith(".lock")]
            assert sockets
            for sock in sockets:
                assert sock.stat().st_mode & 0o077 == 0, oct(sock.stat().st_mode)
        finally:
            server.cleanup()
    finally:
        import shutil

        shutil.rmtree(data_dir.parent, ignore_errors=True)


def test_open_service_refuses_foreign_cors_origins() -> None:
    """Found: EVENTINDEX_CORS_ORIGINS=* let any web site read an open local service."""
    url = "postgresql://unused@127.0.0.1:1/x"
    for origin in ("*", "https://evil.example", "http://localhost.evil.example"):
        with pytest.raises(ValidationError, match="CORS"):
            Settings(database_url=url, cors_origins=[origin])
    Settings(database_url=url, cors_origins=["http://localhost:3000", "http://127.0.0.1:5173"])
    Settings(database_url=url, cors_origins=["*"], mode=Mode.PRODUCTION)


@pytest.mark.parametrize(
    "host", ["[::1]evil.com", "[::1]:80@evil.com", "localhost:evil", "localhost..", "a b"]
)
async def test_malformed_host_headers_are_refused(database_url: str, host: str) -> None:
    async for client in app_client(Settings(database_url=database_url)):
        assert (await client.get("/v1/datasets", headers={"host": host})).status_code == 421


@pytest.mark.parametrize("host", ["foo.localhost", "localhost.", "127.1", "0x7f000001"])
def test_listen_address_must_be_literal_loopback(host: str) -> None:
    with pytest.raises(ValidationError, match="EVENTINDEX_HOST"):
        Settings(database_url="postgresql://unused@127.0.0.1:1/x", host=host)


@pytest.mark.parametrize("claim", ["x\teventindex:admin", "x\u00a0eventindex:admin"])
async def test_scopes_are_split_on_spaces_only(
    database_url: str, provider: Provider, claim: str
) -> None:
    async for client in app_client(oidc_settings(database_url, provider.url)):
        answer = await client.get("/v1/tokens", headers=bearer(provider.token("k1", scope=claim)))
        assert answer.status_code == 403


@pytest.mark.parametrize("expires", ["99999999d", "9999-12-31T23:59:59-12:00", "٣٠d"])
def test_token_expiry_overflow_is_one_line(database_url: str, expires: str) -> None:
    result = eventindex(
        "token", "--database-url", database_url, "create", "--name", "far",
        "--scope", "read", "--expires", expires,
    )  # fmt: skip
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "expiry" in result.stderr
