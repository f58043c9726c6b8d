"""No secret reaches a log line, an error body or a response header: the database
password, API tokens, JWTs, the metrics token. Real ``eventindex serve`` processes at
debug level with their stderr captured, and the command-line tools."""

from __future__ import annotations

import ast
import base64
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import httpx
import pytest
from pydantic import SecretStr

from eventindex import db
from eventindex.config import Settings
from eventindex.middleware.requestlog import mask_credentials
from tests.support.localpg import free_port

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

PASSWORD = "S3cretPw"
# A password with an unencoded '/': a URL parser reads the text before it as the port
# ("invalid literal for int(): 'S3cret'"), so each piece must stay out of the messages.
SLASHED = ("S3cret", "Pa55word")
METRICS_TOKEN = "metrics-" + secrets.token_urlsafe(16)


def closed_url(password: str = PASSWORD) -> str:
    """A database URL with a password, on a port where nothing listens."""
    return f"postgresql://postgres:{password}@127.0.0.1:{free_port()}/x"


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_up(self) -> None:
        for _ in range(300):
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, "server exited:\n" + self.text()
            time.sleep(0.05)
        raise AssertionError("server did not start:\n" + self.text())


def _environ(database_url: str, port: int, env: dict[str, str]) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("EVENTINDEX_")},
        "EVENTINDEX_DATABASE_URL": database_url,
        "EVENTINDEX_PORT": str(port),
        "EVENTINDEX_LOG_LEVEL": "debug",
        **env,
    }


@contextmanager
def serving(tmp_path: Path, *configs: tuple[str, dict[str, str]]) -> Iterator[list[Served]]:
    """``eventindex serve`` (like conftest.run_server) for each (database URL,
    environment), started together, with stdout and stderr in a file that is complete
    once the block ends (the servers are stopped)."""
    servers = []
    try:
        for database_url, env in configs:
            port = free_port()
            log = tmp_path / f"serve-{port}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "eventindex", "serve"],
                    env=_environ(database_url, port, env),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            servers.append(Served(f"http://127.0.0.1:{port}", proc, log))
        for server in servers:
            server.wait_up()
        yield servers
    finally:
        for server in servers:
            server.proc.terminate()
        for server in servers:
            server.proc.wait(10)


def assert_clean(response: httpx.Response, *secrets_: str) -> None:
    """Neither the body nor any header of ``response`` holds a secret."""
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
    for secret in secrets_:
        assert secret not in response.text, (response.request.url, response.text)
        assert secret not in headers, (response.request.url, headers)


def assert_log_clean(text: str, *secrets_: str) -> None:
    for secret in secrets_:
        leaked = [line for line in text.splitlines() if secret in line]
        assert not leaked, f"{secret!r} logged:\n" + "\n".join(leaked)


def hit_everything(base: str, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    with httpx.Client(base_url=base, headers=headers, timeout=20) as client:
        return [
            client.get("/v1/events/1/1"),
            client.post("/v1/lookup", json={"pairs": [[1, 1], [2, 2]]}),
            client.post(
                "/v1/lookup",
                content=b"1 1\n2 2\n",
                headers={"content-type": "text/plain", "accept": "application/x-ndjson"},
            ),
            client.get("/v1/datasets"),
            client.get("/ready"),
            client.get("/metrics"),
            client.get("/health"),
        ]


# --- (a) the database password, with the database down or its URL unreadable -------

SLASHED_URL = f"postgresql://postgres:{'/'.join(SLASHED)}@127.0.0.1:1/x"


def test_database_password_not_in_responses_or_logs(tmp_path: Path) -> None:
    """The database is down (503 problems) or its URL unreadable (a password with an
    unencoded '/', found out by the first request when no connection is made at start):
    neither responses nor logs show any piece of the password."""
    configs = [(closed_url(), {}), (SLASHED_URL, {"EVENTINDEX_POOL_MIN_SIZE": "0"})]
    with serving(tmp_path, *configs) as (down, unreadable):
        responses = {server.url: hit_everything(server.url) for server in (down, unreadable)}
    for server, secrets_ in ((down, (PASSWORD,)), (unreadable, SLASHED)):
        by_path = {(r.request.method, r.request.url.path): r for r in responses[server.url]}
        problem = by_path[("GET", "/v1/events/1/1")]
        assert problem.status_code == 503
        assert problem.headers["content-type"] == "application/problem+json"
        assert by_path[("GET", "/ready")].status_code == 503
        assert by_path[("GET", "/metrics")].status_code == 200
        lookups = [r for r in responses[server.url] if r.request.url.path == "/v1/lookup"]
        assert [r.status_code for r in lookups] == [503, 503]
        for response in responses[server.url]:
            assert_clean(response, *secrets_)
        text = server.text()
        # The log was captured, at debug level, and tells of the failures ...
        assert "GET /v1/events/{run_number}/{event_number} 503" in text
        assert "database problem on /v1/events/1/1" in text
        # ... without the password.
        assert_log_clean(text, *secrets_)
    assert "database unreachable at start" in down.text()
    assert "cannot be read" in unreadable.text()


# --- (b) credentials in production mode ---------------------------------------------


def _fake_jwt() -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(b'{"alg":"RS256","typ":"JWT","kid":"k1"}')
    claims = part(b'{"sub":"someone","exp":4102444800,"aud":"eventindex"}')
    return f"{header}.{claims}.{part(secrets.token_bytes(64))}"


def test_credentials_not_in_responses_or_logs(database_url: str, tmp_path: Path) -> None:
    # The token is made while the server starts.
    create = ["create", "--name", "secrets-reader", "--scope", "read"]
    token_cli = subprocess.Popen(
        [sys.executable, "-m", "eventindex", "token", "--database-url", database_url, *create],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    env = {"EVENTINDEX_MODE": "production", "EVENTINDEX_METRICS_TOKEN": METRICS_TOKEN}
    bogus = "ei_" + secrets.token_urlsafe(32)
    fake_jwt = _fake_jwt()
    basic = base64.b64encode(f"someone:{PASSWORD}".encode()).decode()
    with serving(tmp_path, (database_url, env)) as (served,):
        out, err = token_cli.communicate(timeout=60)
        assert token_cli.returncode == 0, err
        valid = out.strip().splitlines()[-1]
        assert valid.startswith("ei_")
        assert valid not in err
        refused = [
            *hit_everything(served.url, {"authorization": f"Bearer {bogus}"}),
            *hit_everything(served.url, {"authorization": f"Bearer {fake_jwt}"}),
            *hit_everything(served.url, {"authorization": f"Basic {basic}"}),
            httpx.get(f"{served.url}/v1/events/100/1?access_token={bogus}"),
            httpx.get(f"{served.url}/v1/events/100/1?access_token={valid}"),
            httpx.get(f"{served.url}/v1/datasets", params={"token": fake_jwt}),
            httpx.get(
                f"{served.url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}x"}
            ),
        ]
        with httpx.Client(base_url=served.url, headers={"authorization": f"Bearer {valid}"}) as c:
            accepted = [c.get("/v1/events/100/1"), c.post("/v1/lookup", json={"pairs": [[100, 1]]})]
        accepted.append(
            httpx.get(f"{served.url}/metrics", headers={"authorization": f"Bearer {METRICS_TOKEN}"})
        )
    secret_values = (valid, valid[3:], bogus, bogus[3:], fake_jwt, basic, PASSWORD, METRICS_TOKEN)
    for response in refused:
        path = response.request.url.path
        if path.startswith("/v1") or path == "/metrics":
            assert response.status_code == 401, (response.request.url, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
        assert_clean(response, *secret_values)
    assert [r.status_code for r in accepted] == [200, 200, 200]
    for response in accepted:
        assert_clean(response, *secret_values)
    text = served.text()
    assert "authentication failed" in text  # the refusals are logged, at debug level
    assert '"status": 401' in text
    assert '"status": 200' in text
    assert_log_clean(text, *secret_values)


# --- (c) the command-line tools -------------------------------------------------------

DOWN_URL = closed_url()


def _commands(events: Path) -> dict[str, tuple[str, ...]]:
    """Every command to try, by name: run together, once."""
    commands: dict[str, tuple[str, ...]] = {}
    for kind, url in (("down", DOWN_URL), ("unreadable", SLASHED_URL)):
        commands |= {
            f"{kind}: migrate": ("eventindex", "migrate", "--database-url", url),
            f"{kind}: check": ("eventindex", "check", "--database-url", url),
            f"{kind}: load": ("eventindex", "load", "--database-url", url, str(events)),
        }
    commands |= {
        "down: token list": ("eventindex", "token", "--database-url", DOWN_URL, "list"),
        "down: shards list": ("eventindex", "shards", "--database-url", DOWN_URL, "list"),
        "unreadable: shard": (
            "eventindex",
            "shards",
            "--database-url",
            DOWN_URL,
            "add",
            "s1",
            SLASHED_URL,
        ),
        "unreadable: serve": ("eventindex", "serve", "--database-url", SLASHED_URL),
    }
    return commands


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CompletedProcess[str]]:
    events = tmp_path_factory.mktemp("secrets") / "events.csv"
    events.write_text(
        "run_number,event_number,olt_result,dsid_raw,fuid_raw\n"
        "1,1,0,1,00000000-0000-0000-0000-000000000001\n"
    )
    env = _environ(DOWN_URL, free_port(), {})
    del env["EVENTINDEX_DATABASE_URL"]

    def run(args: tuple[str, ...]) -> CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=env,
        )

    commands = _commands(events)
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(commands, pool.map(run, commands.values()), strict=True))


def _assert_one_clean_line(result: CompletedProcess[str], *secrets_: str) -> None:
    assert result.returncode != 0
    for secret in secrets_:
        assert secret not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0]


@pytest.mark.parametrize(
    "name",
    ["migrate", "check", "load", "token list", "shards list"],
)
def test_cli_with_the_database_down(
    name: str, cli_results: dict[str, CompletedProcess[str]]
) -> None:
    _assert_one_clean_line(cli_results[f"down: {name}"], PASSWORD)


@pytest.mark.parametrize(
    "name",
    [
        "load",
        "shard",
        "migrate",
        "check",
    ],
)
def test_cli_with_an_unreadable_url(
    name: str, cli_results: dict[str, CompletedProcess[str]]
) -> None:
    result = cli_results[f"unreadable: {name}"]
    _assert_one_clean_line(result, *SLASHED)
    assert "percent-encoded" in result.stderr


def test_serve_refuses_an_unreadable_url(cli_results: dict[str, CompletedProcess[str]]) -> None:
    """With a connection made at start (the default), the service refuses to start and
    says why, without the password."""
    result = cli_results["unreadable: serve"]
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "cannot be read" in output
    assert "must be percent-encoded" in output
    assert_log_clean(output, *SLASHED)


# --- (d) settings and the helpers ------------------------------------------------------


_LOG_CALLS = frozenset({"debug", "info", "warning", "error", "exception", "critical", "log"})


def test_settings_are_never_logged() -> None:
    """Nothing logs or prints the settings object (which holds the database URL); single
    settings (host, port, data_dir) are fine."""
    root = Path(__file__).resolve().parents[1]
    for path in sorted((root / "eventindex").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            func = call.func
            is_print = isinstance(func, ast.Name) and func.id == "print"
            if not (is_print or (isinstance(func, ast.Attribute) and func.attr in _LOG_CALLS)):
                continue
            attributes = {id(n.value) for n in ast.walk(call) if isinstance(n, ast.Attribute)}
            for node in ast.walk(call):
                if isinstance(node, ast.Name) and "settings" in node.id.lower():
                    assert id(node) in attributes, f"{path}:{node.lineno} shows the settings"


def test_settings_repr_hides_database_passwords() -> None:
    settings = Settings(
        database_url=f"postgresql://u:{PASSWORD}@db/x",
        read_database_urls=["postgresql://u:R3plicaPw@replica/x"],
        metrics_token=SecretStr(METRICS_TOKEN),
    )
    for shown in (repr(settings), str(settings)):
        for secret in (PASSWORD, "R3plicaPw", METRICS_TOKEN):
            assert secret not in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:S3cret/Pa55word@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://u@h/db?password=pw&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("postgresql://h/db", "postgresql://h/db"),
        ("postgresql://u@h1:1,h2:2/db", "postgresql://u@h1:1,h2:2/db"),
    ],
)
def test_redact(url: str, shown: str) -> None:
    assert db.redact(url) == shown


def test_scrub_masks_every_piece_of_the_password() -> None:
    url = "postgresql://u:S3cret/Pa55word@h/db"
    message = "invalid literal for int() with base 10: 'S3cret' near Pa55word"
    assert db.scrub(message, url) == "invalid literal for int() with base 10: '***' near ***"
    assert db.scrub("host=h password=S3cret user=u") == "host=h password=*** user=u"
    assert db.scrub("see postgresql://a:b@c/d") == "see postgresql://a:***@c/d"


def test_log_lines_mask_credentials() -> None:
    token = "ei_" + secrets.token_urlsafe(32)
    line = mask_credentials(
        f"x Authorization: Bearer {token} postgresql://u:{PASSWORD}@h/db password={PASSWORD} "
        f"{_fake_jwt()}"
    )
    for secret in (token, token[3:], PASSWORD, "eyJ"):
        assert secret not in line
    assert mask_credentials("GET /v1/events/{run_number}/{event_number} 200") == (
        "GET /v1/events/{run_number}/{event_number} 200"
    )
