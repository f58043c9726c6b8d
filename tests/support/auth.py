"""Credentials and TLS for tests: tokens made with the CLI, bearer headers, a throwaway CA,
and servers started with their stderr kept."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from eventindex import tokens


def cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventindex", *args, "--database-url", url]
        if args[0] != "token"
        else [sys.executable, "-m", "eventindex", "token", "--database-url", url, *args[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def new_token(url: str, name: str, *scopes: str, expires: str | None = None) -> str:
    args = ["token", "create", "--name", name]
    for s in scopes:
        args += ["--scope", s]
    if expires:
        args += ["--expires", expires]
    result = cli(*args, url=url)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("ei_")
    return token


async def api_tokens(url: str, **scopes: list[str]) -> dict[str, str]:
    """API tokens made in the catalogue at ``url``, by name (``reader=["read"]``)."""
    conn = await asyncpg.connect(url)
    try:
        return {
            name: (await tokens.create(conn, name, given, None))[0]
            for name, given in scopes.items()
        }
    finally:
        await conn.close()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def make_tls(tmp: Path) -> tuple[Path, Path, Path]:
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("EventIndex test CA"))
        .issuer_name(name("EventIndex test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        env={**os.environ, **env},
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )


def trusting(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


def wait_up(url: str, proc: subprocess.Popen[str], verify: Any = True) -> None:
    for _ in range(150):
        try:
            if httpx.get(url + "/health", timeout=1, verify=verify).status_code == 200:
                return
        except (httpx.TransportError, ssl.SSLError):
            pass
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "server exited"
        time.sleep(0.1)
    raise AssertionError("server did not start")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


class Provider:
    """A local identity provider's key endpoint: keys the test can change (``add``,
    ``rotate``), a switch that makes it hang, and a count of the fetches it served; tokens
    it signs carry ``scope`` unless told otherwise."""

    def __init__(self, scope: str = "eventindex:admin") -> None:
        self.scope = scope
        self.keys: dict[str, rsa.RSAPrivateKey] = {}
        self.hang = threading.Event()
        self.release = threading.Event()
        self.fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                if provider.hang.is_set():
                    provider.release.wait(30)
                body = json.dumps(provider.document()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def rotate(self, kid: str) -> None:
        """The provider drops every key and publishes ``kid`` alone."""
        self.keys.clear()
        self.add(kid)

    def document(self) -> dict[str, Any]:
        out = []
        for kid, key in list(self.keys.items()):
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            out.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def token(self, kid: str, key: rsa.RSAPrivateKey | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": "https://iam.spd.test",
            "aud": "eventindex",
            "sub": "physicist",
            "exp": now + 300,
            "scope": self.scope,
            **claims,
        }
        signer = key or self.keys[kid]
        return jwt.encode(body, signer, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
