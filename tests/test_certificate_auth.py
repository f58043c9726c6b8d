"""Grid certificates as identities, against a real uvicorn over TLS: mapped user certificates
and their RFC 3820 proxies, refusals, scopes (reading, writing, administering), the bearer
beside a certificate, the subject header of a trusted proxy, the rate limit, and the client side
(EventIndexClient, eventindex pick and datasets)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from eventindex.client import EventIndexClient, ProblemError
from tests.support.auth import bearer, new_token, start, stop, trusting, wait_up
from tests.support.catalogue import fuid_of
from tests.support.grid import INDEPENDENT, Issued, TestCA, dn
from tests.support.localpg import free_port

# Slow tier: real servers (./dev check skips it).
pytestmark = pytest.mark.slow

HEADER = "X-SSL-Client-S-DN"


@dataclass
class Grid:
    """A CA, the service's TLS files, and a directory for the clients' files."""

    ca: TestCA
    ca_file: Path
    cert: Path
    key: Path
    files: Path

    def user(self, cn: str) -> Issued:
        return self.ca.user(dn(("C", "RU"), ("O", "JINR"), ("OU", "LIT"), ("CN", cn)))

    def context(self, who: Issued, stem: str) -> ssl.SSLContext:
        return who.client_context(self.files, stem, self.ca_file)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    tmp = tmp_path_factory.mktemp("grid")
    ca = TestCA()
    cert, key = ca.server(tmp)
    files = tmp / "clients"
    files.mkdir()
    return Grid(ca, ca.write(tmp), cert, key, files)


@dataclass
class Service:
    url: str
    log: str = ""  # the server's stderr, once it has stopped


@contextmanager
def serve(
    database_url: str, grid: Grid, tls: bool = True, extra: dict[str, str] | None = None
) -> Iterator[Service]:
    """A production ``eventindex serve``, over TLS verifying clients against the test CA."""
    port = free_port()
    env = {
        "EVENTINDEX_DATABASE_URL": database_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_MODE": "production",
        # One process: rate-limit buckets and TLS session caches are each worker's own.
        "EVENTINDEX_WORKERS": "1",
        "EVENTINDEX_CERT_MAX_PROXY_DEPTH": "2",
        **(extra or {}),
    }
    if tls:
        env["EVENTINDEX_SSL_CERTFILE"] = str(grid.cert)
        env["EVENTINDEX_SSL_KEYFILE"] = str(grid.key)
        env["EVENTINDEX_SSL_CA_CERTS"] = str(grid.ca_file)
    proc = start([sys.executable, "-m", "eventindex", "serve"], env)
    service = Service(f"{'https' if tls else 'http'}://127.0.0.1:{port}")
    try:
        wait_up(service.url, proc, verify=trusting(grid.ca_file))
        yield service
    finally:
        service.log = stop(proc)


@pytest.fixture(scope="module")
def service(database_url: str, grid: Grid) -> Iterator[Service]:
    with serve(database_url, grid) as running:
        yield running


def cert_cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventindex", "cert", "--database-url", database_url, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cert_add(database_url: str, name: str, subject: str, *scopes: str) -> str:
    args = ["add", "--dn", subject, "--name", name]
    for s in scopes:
        args += ["--scope", s]
    result = cert_cli(database_url, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def get(
    url: str,
    context: ssl.SSLContext,
    path: str = "/v1/events/100/1",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    with httpx.Client(base_url=url, verify=context, timeout=10) as client:
        return client.get(path, headers=headers)


def refused(response: httpx.Response, says: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert says in response.json()["detail"], response.json()


# --- certificates and proxies -----------------------------------------------------------------


def test_a_mapped_user_and_its_proxies_read_as_the_user(
    database_url: str, grid: Grid, service: Service
) -> None:
    alice = grid.user("Alice Alexeeva")
    # Mapped in the slash form a user copies from grid tools; the service reads the
    # certificate's subject in RFC 4514 order.
    out = cert_add(database_url, "alice", "/C=RU/O=JINR/OU=LIT/CN=Alice Alexeeva", "read")
    assert "CN=Alice Alexeeva,OU=LIT,O=JINR,C=RU" in out
    proxy = grid.ca.proxy(alice)
    for who, stem in ((alice, "alice"), (proxy, "alice-proxy"), (grid.ca.proxy(proxy), "p2")):
        answer = get(service.url, grid.context(who, stem))
        assert answer.status_code == 200, answer.text
        assert answer.json()["fuid_raw"] == str(fuid_of(100, 1))
    listed = cert_cli(database_url, "list")
    line = next(x for x in listed.stdout.splitlines() if x.startswith("alice\t"))
    assert "last used never" not in line  # the proxies' use was the user's


def test_read_scope_cannot_administer(database_url: str, grid: Grid, service: Service) -> None:
    reader = grid.user("Rita Readonly")
    cert_add(database_url, "rita", "CN=Rita Readonly,OU=LIT,O=JINR,C=RU", "read")
    context = grid.context(grid.ca.proxy(reader), "rita-proxy")
    with httpx.Client(base_url=service.url, verify=context, timeout=10) as client:
        assert client.get("/v1/events/100/1").status_code == 200
        for method, path in (("GET", "/v1/tokens"), ("GET", "/v1/certificates")):
            denied = client.request(method, path)
            assert denied.status_code == 403, denied.text
            assert "'rita' lacks the 'admin' scope" in denied.json()["detail"]
        made = client.post("/v1/tokens", json={"name": "rita-made", "scopes": ["admin"]})
        assert made.status_code == 403


def test_refusals_are_401_problems(database_url: str, grid: Grid, service: Service) -> None:
    bob = grid.user("Bob Unmapped")
    refused(get(service.url, grid.context(bob, "bob")), "'CN=Bob Unmapped,OU=LIT,O=JINR,C=RU'")
    # A proxy of an unmapped user is the unmapped user, never its own subject.
    answer = get(service.url, grid.context(grid.ca.proxy(bob), "bob-proxy"))
    refused(answer, "'CN=Bob Unmapped,OU=LIT,O=JINR,C=RU' has no live mapping")
    assert "CN=Bob Unmapped,OU=LIT,O=JINR,C=RU'" in answer.json()["detail"]

    carol = grid.user("Carol Mapped")
    cert_add(database_url, "carol", "CN=Carol Mapped,OU=LIT,O=JINR,C=RU", "read")
    assert get(service.url, grid.context(carol, "carol")).status_code == 200
    expired = grid.ca.proxy(carol, expired=True)
    refused(get(service.url, grid.context(expired, "carol-old")), "the proxy certificate expired")
    independent = grid.ca.proxy(carol, policy=INDEPENDENT)
    refused(get(service.url, grid.context(independent, "carol-ind")), "hands on no rights")
    three = grid.ca.proxy(grid.ca.proxy(grid.ca.proxy(carol)))
    refused(
        get(service.url, grid.context(three, "carol-deep")),
        "holds 3 proxy certificates; this service accepts at most 2",
    )
    # Refused on every path, as the handshake would have been.
    refused(get(service.url, grid.context(expired, "carol-old"), "/health"), "expired")


def test_revoked_and_expired_mappings_are_refused(
    database_url: str, grid: Grid, service: Service
) -> None:
    admin = new_token(database_url, "cert-admin", "admin")
    dave, erin = grid.user("Dave Revoked"), grid.user("Erin Expired")
    with httpx.Client(base_url=service.url, verify=trusting(grid.ca_file), timeout=10) as api:
        for name, cn in (("dave", "Dave Revoked"), ("erin", "Erin Expired")):
            made = api.post(
                "/v1/certificates",
                json={"dn": f"/C=RU/O=JINR/OU=LIT/CN={cn}", "name": name, "scopes": ["read"]},
                headers=bearer(admin),
            )
            assert made.status_code == 201, made.text
            assert made.json()["dn"] == f"CN={cn},OU=LIT,O=JINR,C=RU"
        assert get(service.url, grid.context(dave, "dave")).status_code == 200
        assert api.delete("/v1/certificates/dave", headers=bearer(admin)).status_code == 204
        assert api.delete("/v1/certificates/dave", headers=bearer(admin)).status_code == 404
        states = {
            r["name"]: r["state"] for r in api.get("/v1/certificates", headers=bearer(admin)).json()
        }
        assert states["dave"] == "revoked"
    refused(get(service.url, grid.context(dave, "dave")), "unmapped, expired or revoked")

    async def expire() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "UPDATE certificate_principals SET expires_at = now() - interval '1 second' "
                "WHERE name = 'erin'"
            )
        finally:
            await conn.close()

    asyncio.run(expire())
    refused(get(service.url, grid.context(erin, "erin")), "unmapped, expired or revoked")


def test_another_cas_certificate_is_refused_in_the_handshake(
    database_url: str, grid: Grid, service: Service, tmp_path: Path
) -> None:
    """Python's ssl verifies in the handshake and has no callback: a chain no configured CA
    signed never becomes an HTTP request (a TLS alert, not a 401)."""
    other = TestCA("Some Other CA")
    impostor = other.user(dn(("C", "RU"), ("O", "JINR"), ("OU", "LIT"), ("CN", "Alice Alexeeva")))
    context = impostor.client_context(tmp_path, "impostor", grid.ca_file)
    with pytest.raises(httpx.TransportError):
        get(service.url, context)
    assert get(service.url, trusting(grid.ca_file), "/health").status_code == 200


def test_the_bearer_decides(database_url: str, grid: Grid, service: Service) -> None:
    frank = grid.user("Frank Both")
    cert_add(database_url, "frank", "CN=Frank Both,OU=LIT,O=JINR,C=RU", "read", "admin")
    token = new_token(database_url, "frank-token", "read")
    context = grid.context(frank, "frank")
    assert get(service.url, context, "/v1/tokens").status_code == 200  # the certificate: admin
    # With a bearer, the bearer alone: read only, and a bad one is a 401 whatever the
    # certificate.
    assert get(service.url, context, "/v1/tokens", headers=bearer(token)).status_code == 403
    refused(get(service.url, context, headers=bearer("ei_guess")), "unknown, expired or revoked")


def test_admin_endpoints_check_what_they_are_given(
    database_url: str, grid: Grid, service: Service
) -> None:
    admin = new_token(database_url, "cert-admin-2", "admin")
    with httpx.Client(base_url=service.url, verify=trusting(grid.ca_file), timeout=10) as api:

        def post(body: object) -> httpx.Response:
            return api.post("/v1/certificates", json=body, headers=bearer(admin))

        ok = {"dn": "CN=Gina,O=JINR,C=RU", "name": "gina", "scopes": ["read"]}
        assert post(ok).status_code == 201
        again = post({**ok, "name": "gina-2"})
        assert again.status_code == 409
        assert "mapped already (to 'gina')" in again.json()["detail"]
        assert post({**ok, "dn": "CN=Other,O=JINR,C=RU"}).status_code == 409  # the name
        bad = post({**ok, "name": "gina-3", "dn": "C = RU, O = JINR, CN = Gina"})
        assert bad.status_code == 422
        assert bad.headers["content-type"].startswith("application/problem+json")
        assert "-nameopt RFC2253" in bad.json()["detail"]
        for body in (
            {**ok, "name": "gina-4", "scopes": []},
            {**ok, "name": "gina 5"},
            {**ok, "name": "gina-6", "expires_at": "2001-01-01T00:00:00Z"},
            {**ok, "name": "gina-7", "dn": ""},
        ):
            assert post(body).status_code == 422, body
        assert api.get("/v1/certificates").status_code == 401  # no credential


def test_a_resumed_tls12_session_keeps_its_identity(
    database_url: str, grid: Grid, service: Service
) -> None:
    """A resumed session carries no chain: the service recalls the one it verified."""
    hana = grid.user("Hana Resumed")
    cert_add(database_url, "hana", "CN=Hana Resumed,OU=LIT,O=JINR,C=RU", "read")
    context = grid.context(grid.ca.proxy(hana), "hana-proxy")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    port = int(service.url.rsplit(":", 1)[1])
    session = None
    for attempt in range(2):
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            tls.sendall(
                b"GET /v1/events/100/1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            assert tls.session_reused == (attempt == 1)
            session = tls.session
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


# --- the subject header of a trusted proxy ----------------------------------------------------


def test_the_subject_header_counts_only_from_a_trusted_proxy(database_url: str, grid: Grid) -> None:
    cert_add(database_url, "ivan", "CN=Ivan Forwarded,OU=LIT,O=JINR,C=RU", "read")
    rfc = {HEADER: "CN=Ivan Forwarded,OU=LIT,O=JINR,C=RU"}  # nginx's $ssl_client_s_dn
    slash = {HEADER: "/C=RU/O=JINR/OU=LIT/CN=Ivan Forwarded"}  # HAProxy's default
    env = {"EVENTINDEX_FORWARDED_ALLOW_IPS": "127.0.0.2", "EVENTINDEX_CERT_SUBJECT_HEADER": HEADER}
    with serve(database_url, grid, tls=False, extra=env) as service:
        proxy = httpx.Client(
            base_url=service.url,
            transport=httpx.HTTPTransport(local_address="127.0.0.2"),
            timeout=10,
        )
        anyone = httpx.Client(base_url=service.url, timeout=10)
        with proxy, anyone:
            for headers in (rfc, slash):
                answer = proxy.get("/v1/events/100/1", headers=headers)
                assert answer.status_code == 200, answer.text
            # From an address that is not a listed proxy, the header is nobody's word.
            refused(anyone.get("/v1/events/100/1", headers=rfc), "needs a credential")
            # ...nor behind a forged X-Forwarded-For.
            forged = {**rfc, "X-Forwarded-For": "127.0.0.2"}
            refused(anyone.get("/v1/events/100/1", headers=forged), "needs a credential")
            unmapped = {HEADER: "CN=Nobody,O=JINR,C=RU"}
            refused(proxy.get("/v1/events/100/1", headers=unmapped), "'CN=Nobody,O=JINR,C=RU'")
            garbled = {HEADER: "not a subject"}
            refused(proxy.get("/v1/events/100/1", headers=garbled), "cannot be read")
    assert "ignored the x-ssl-client-s-dn header from 127.0.0.1" in service.log


# --- the rate limit ---------------------------------------------------------------------------


def test_a_certificate_principal_is_charged_like_a_token(database_url: str, grid: Grid) -> None:
    """Its budget is the principal's, whichever host it comes from; anonymous requests from
    the same host do not spend it (burst 3, refilled once in 1000 s)."""
    kim = grid.user("Kim Limited")
    cert_add(database_url, "kim", "CN=Kim Limited,OU=LIT,O=JINR,C=RU", "read")
    context = grid.context(kim, "kim")
    env = {"EVENTINDEX_RATE_LIMIT_PER_SECOND": "0.001", "EVENTINDEX_RATE_LIMIT_BURST": "3"}
    with serve(database_url, grid, extra=env) as service:

        def client(address: str, verify: ssl.SSLContext) -> httpx.Client:
            transport = httpx.HTTPTransport(local_address=address, verify=verify)
            return httpx.Client(base_url=service.url, transport=transport, timeout=10)

        with (
            client("127.0.0.1", context) as first,
            client("127.0.0.3", context) as second,
            client("127.0.0.3", trusting(grid.ca_file)) as anonymous,
        ):
            statuses = [c.get("/v1/events/100/1").status_code for c in (first, first, second)]
            assert statuses == [200, 200, 200]
            limited = second.get("/v1/events/100/1")
            assert limited.status_code == 429
            assert "retry-after" in limited.headers
            # The host's own budget is untouched: an anonymous request is judged, not limited.
            assert anonymous.get("/v1/events/100/1").status_code == 401


# --- the client side --------------------------------------------------------------------------


async def test_the_python_client_presents_a_grid_proxy(
    database_url: str, grid: Grid, service: Service
) -> None:
    lena = grid.user("Lena Client")
    cert_add(database_url, "lena", "CN=Lena Client,OU=LIT,O=JINR,C=RU", "read")
    proxy_file = grid.ca.proxy(lena).write_proxy(grid.files, "x509up_lena")
    async with EventIndexClient(service.url, cert=proxy_file, ca=grid.ca_file) as client:
        event = await client.get_event(100, 1)
        assert event is not None
        assert str(event.fuid_raw) == str(fuid_of(100, 1))
    async with EventIndexClient(service.url, ca=grid.ca_file) as anonymous:
        with pytest.raises(ProblemError) as caught:
            await anonymous.get_event(100, 1)
        assert caught.value.status == 401


def test_pick_uses_x509_user_proxy(database_url: str, grid: Grid, service: Service) -> None:
    mila = grid.user("Mila Picker")
    cert_add(database_url, "mila", "CN=Mila Picker,OU=LIT,O=JINR,C=RU", "read")
    proxy_file = grid.ca.proxy(mila).write_proxy(grid.files, "x509up_mila")
    hashed = grid.files / "certificates"  # X509_CERT_DIR: CA certificates by subject hash
    hashed.mkdir(exist_ok=True)
    subject_hash = subprocess.run(
        ["openssl", "x509", "-noout", "-subject_hash", "-in", str(grid.ca_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (hashed / f"{subject_hash}.0").write_bytes(grid.ca_file.read_bytes())

    def pick(*options: str, **env: str) -> subprocess.CompletedProcess[str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("X509_") and k != "EVENTINDEX_TOKEN"
        }
        return subprocess.run(
            [sys.executable, "-m", "eventindex", "pick", "--url", service.url, *options],
            input="100 1\n100 2\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**clean, **env},
        )

    by_env = pick(X509_USER_PROXY=str(proxy_file), X509_CERT_DIR=str(hashed))
    assert by_env.returncode == 0, by_env.stderr
    assert [json.loads(line)["fuid_raw"] for line in by_env.stdout.splitlines()] == [
        str(fuid_of(100, 1)),
        str(fuid_of(100, 2)),
    ]
    by_option = pick("--cert", str(proxy_file), "--ca", str(grid.ca_file))
    assert by_option.returncode == 0, by_option.stderr
    untrusted = pick("--cert", str(proxy_file))  # the test CA is not a default CA
    assert untrusted.returncode == 1
    # At once, not after retries: no retry mends a certificate.
    assert untrusted.stderr.count("\n") == 1, untrusted.stderr
    assert "the server's certificate is not trusted here" in untrusted.stderr
    missing = pick("--cert", str(grid.files / "nothing.pem"), "--ca", str(grid.ca_file))
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"eventindex: error: {grid.files / 'nothing.pem'}: no such file"
    ]


def test_the_cert_command_says_what_is_wrong_in_one_line(database_url: str) -> None:
    def fails(*args: str) -> str:
        result = cert_cli(database_url, *args)
        assert result.returncode == 1, result
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        return result.stderr

    assert "'nonsense' in the subject has no '='" in fails(
        "add", "--dn", "nonsense", "--name", "nonsense", "--scope", "read"
    )
    assert "not in the future" in fails(
        "add",
        "--dn",
        "CN=Olga,O=JINR",
        "--name",
        "olga",
        "--scope",
        "read",
        "--expires",
        "2001-01-01",
    )
    assert "1-100 letters" in fails(
        "add", "--dn", "CN=Olga,O=JINR", "--name", "o g", "--scope", "read"
    )
    assert "no active certificate principal named 'ghost'" in fails("revoke", "ghost")
    made = cert_add(database_url, "olga", "CN=Olga,O=JINR", "read", "write")
    assert made.startswith("mapped CN=Olga,O=JINR to olga (scopes read,write; expires never)")
    assert "mapped already (to 'olga')" in fails(
        "add", "--dn", "/O=JINR/CN=Olga", "--name", "olga-2", "--scope", "read"
    )
    assert cert_cli(database_url, "revoke", "olga").stdout == "revoked certificate principal olga\n"
    line = next(
        x for x in cert_cli(database_url, "list").stdout.splitlines() if x.startswith("olga\t")
    )
    assert line.split("\t")[:3] == ["olga", "read,write", "revoked"]
    assert line.endswith("\tCN=Olga,O=JINR")
    # Revoked, the subject may be mapped again (under a new name).
    cert_add(database_url, "olga-2", "/O=JINR/CN=Olga", "read")


def test_writing_takes_the_write_scope_and_datasets_present_the_proxy(
    catalogue: str, grid: Grid
) -> None:
    """A read-scoped certificate cannot write (403); a production robot's proxy, mapped with
    write, registers a dataset through ``eventindex datasets`` (the upload commands' options)."""
    cert_add(catalogue, "petr", "CN=Petr Reader,OU=LIT,O=JINR,C=RU", "read")
    cert_add(catalogue, "spd-robot", "/C=RU/O=JINR/OU=robots/CN=spd-production", "read", "write")
    reader = grid.user("Petr Reader")
    robot = grid.ca.user(dn(("C", "RU"), ("O", "JINR"), ("OU", "robots"), ("CN", "spd-production")))
    with serve(catalogue, grid) as service:
        context = grid.context(grid.ca.proxy(reader), "petr-proxy")
        with httpx.Client(base_url=service.url, verify=context, timeout=10) as client:
            put = client.put(
                f"/v1/files/{fuid_of(100, 1)}",
                content=b"run_number,event_number,olt_result\n100,1,1\n",
                headers={"content-type": "text/csv"},
            )
            assert put.status_code == 403, put.text
            assert "'petr' lacks the 'write' scope" in put.json()["detail"]
            made = client.post("/v1/datasets", json={"name": "spd.petr"})
            assert made.status_code == 403, made.text

        def datasets(proxy: Path, *args: str) -> subprocess.CompletedProcess[str]:
            clean = {
                k: v for k, v in os.environ.items() if not k.startswith(("X509_", "EVENTINDEX_"))
            }
            return subprocess.run(
                [sys.executable, "-m", "eventindex", "datasets", *args],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                env={**clean, "X509_USER_PROXY": str(proxy)},
            )

        service_options = ("--url", service.url, "--ca", str(grid.ca_file))
        robot_proxy = grid.ca.proxy(robot).write_proxy(grid.files, "x509up_robot")
        created = datasets(robot_proxy, "create", "spd.certs.test", *service_options)
        assert created.returncode == 0, created.stderr
        assert "spd.certs.test" in created.stdout
        reader_proxy = grid.ca.proxy(reader).write_proxy(grid.files, "x509up_petr")
        refused = datasets(reader_proxy, "create", "spd.petr", *service_options)
        assert refused.returncode == 1
        assert "'petr' lacks the 'write' scope" in refused.stderr
        shown = datasets(reader_proxy, "show", "spd.certs.test", *service_options)
        assert shown.returncode == 0, shown.stderr


def test_another_sites_page_cannot_use_a_visitors_certificate(
    database_url: str, grid: Grid, service: Service
) -> None:
    """A browser presents its certificate to every page's requests, as it sends cookies: a
    request it marks as another site's is anonymous (no CSRF with a visitor's certificate)."""
    quinn = grid.user("Quinn Browser")
    cert_add(database_url, "quinn", "CN=Quinn Browser,OU=LIT,O=JINR,C=RU", "read")
    token = new_token(database_url, "quinn-token", "read")
    context = grid.context(quinn, "quinn")
    for headers, status in (
        ({}, 200),
        ({"sec-fetch-site": "same-origin"}, 200),
        ({"sec-fetch-site": "none"}, 200),  # typed in the address bar
        ({"origin": service.url}, 200),
        ({"sec-fetch-site": "cross-site"}, 401),
        ({"sec-fetch-site": "same-site"}, 401),
        ({"sec-fetch-site": "cross-site", "origin": service.url}, 401),
        ({"origin": "https://evil.example"}, 401),
        ({"origin": "null"}, 401),
    ):
        answer = get(service.url, context, headers=headers)
        assert answer.status_code == status, (headers, answer.text)
        if status == 401:
            refused(answer, "another site's page")
    # A bearer credential is not ambient: it is taken from any page.
    crossing = {"sec-fetch-site": "cross-site", **bearer(token)}
    assert get(service.url, context, headers=crossing).status_code == 200
