"""The service's container image, built from the Dockerfile and run for real with podman.

No Docker engine runs here and no registry image can be pulled, so the base image is made
with debootstrap (Debian bookworm with its python3) and passed as the Dockerfile's BASE; it
is made once and cached (podman's storage, plus a tarball under CACHE keyed by a hash of its
recipe). The project's image is built from a copy of the files on disk (tracked and untracked,
not ignored), so a run tests the working tree; then it migrates and serves a real PostgreSQL,
with nothing set but EVENTINDEX_DATABASE_URL: the image's defaults must make a production
service (health, an unprivileged user, JSON logs, no anonymous access to /v1).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.support.catalogue import create_database, drop_database
from tests.support.localpg import free_port
from tests.support.pgcluster import LocalServer, Root, require

# Slow tier: real servers, many requests or many examples (./dev check skips it).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("EVENTINDEX_IMAGE_CACHE", "/var/tmp/eventindex-image-cache"))
SUITE = "bookworm"
INCLUDE = "python3,python3-venv,python3-pip,ca-certificates,curl"
BASE_NAME = f"eventindex-base:{SUITE}"
BASE_REF = f"localhost/{BASE_NAME}"  # the name `podman import` gives it
BASE_LABEL = "org.eventindex.base-recipe"
IMAGE = "localhost/eventindex:test"
# What makes the base image; its hash names the cached tarball and labels the image, so a
# change here makes a new base.
RECIPE = json.dumps(
    {
        "debootstrap": ["--variant=minbase", f"--include={INCLUDE}", SUITE],
        "python": "ln -sf /usr/bin/python3 /usr/local/bin/python",
        # No apt sources, lists or debootstrap's log in the image: they would name the mirror.
        "emptied": ["etc/apt/sources.list"],
        "removed": ["var/lib/apt/lists/*", "var/cache/apt/archives/*.deb", "var/log/bootstrap.log"],
    },
    sort_keys=True,
)
RECIPE_KEY = hashlib.sha256(RECIPE.encode()).hexdigest()[:16]

# runc and cgroupfs: crun fails on these machines' hybrid cgroup setup; the sandbox refuses
# the default rlimits.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def tool(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def require_tools() -> None:
    missing = [name for name in ("podman", "runc", "debootstrap") if tool(name) is None]
    if not missing:
        return
    message = f"needs {', '.join(missing)} (apt-get install podman runc debootstrap)"
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip(message)
    pytest.fail(message + "; ./dev test installs them")


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A podman command that must succeed; its output on failure."""
    result = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, cwd="/tmp"
    )
    if result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:2])} exited {result.returncode}:\n"
            f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def podman_quiet(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, cwd="/tmp", check=False
    )


@contextmanager
def exclusive(deadline_seconds: float = 1200) -> Iterator[None]:
    """One image test at a time on a machine: the base, the image's tag and port 8000."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        deadline = time.monotonic() + deadline_seconds
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another run held {CACHE / 'lock'} for {deadline_seconds} s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def debian_mirror() -> str:
    """The system's Debian mirror, read from its apt sources each time (never stored)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if not sources.exists():
        pytest.skip(f"no {sources} to take a Debian mirror from")
    for stanza in sources.read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith("#"):
                fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
            return fields["uris"].split()[0]
    pytest.skip(f"{sources} names no mirror for {SUITE}")


def make_base_tarball(tarball: Path) -> None:
    debootstrap = tool("debootstrap")
    assert debootstrap is not None
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = [debootstrap, "--variant=minbase", f"--include={INCLUDE}", SUITE]
        result = subprocess.run(
            [*command, str(rootfs), debian_mirror()],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-3000:]}"
        python = rootfs / "usr/local/bin/python"
        python.unlink(missing_ok=True)
        python.symlink_to("/usr/bin/python3")
        for name in json.loads(RECIPE)["emptied"]:
            (rootfs / name).write_text("")
        for pattern in json.loads(RECIPE)["removed"]:
            for path in rootfs.glob(pattern):
                if path.is_file():
                    path.unlink()
        partial = tarball.with_name(tarball.name + ".partial")
        subprocess.run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            check=True,
            timeout=600,
        )
        partial.rename(tarball)


def ensure_base() -> None:
    """``eventindex-base:bookworm``, from podman's storage, else the cached tarball, else
    debootstrap (about a minute)."""
    if podman_quiet("image", "exists", BASE_REF).returncode == 0:
        label = podman(
            "image", "inspect", "--format", f'{{{{index .Labels "{BASE_LABEL}"}}}}', BASE_REF
        )
        if label.stdout.strip() == RECIPE_KEY:
            return
    before = image_id(BASE_REF)
    tarball = CACHE / f"base-{SUITE}-{RECIPE_KEY}.tar"
    if not tarball.exists():
        if os.geteuid() != 0:
            pytest.skip("making the base image with debootstrap needs root")
        for old in CACHE.glob(f"base-{SUITE}-*.tar"):
            old.unlink()
        make_base_tarball(tarball)
    podman("import", "--change", f"LABEL {BASE_LABEL}={RECIPE_KEY}", str(tarball), BASE_NAME)
    if before is not None:
        podman_quiet("rmi", before)  # made by an older recipe


def copy_work_tree(dest: Path) -> None:
    """The project's files as they are on disk (tracked or new, not ignored): what a build
    from this checkout would see, uncommitted changes included."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_symlink() or not source.is_file():
            continue  # deleted in the work tree, or a link out of the project
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)


def image_id(name: str) -> str | None:
    found = podman_quiet("image", "inspect", "--format", "{{.Id}}", name)
    return found.stdout.strip() if found.returncode == 0 else None


def build_image() -> None:
    before = image_id(IMAGE)
    with tempfile.TemporaryDirectory(prefix="eventindex-context-") as context:
        copy_work_tree(Path(context))
        certs = []
        if Path("/etc/ssl/certs/ca-certificates.crt").exists():
            # pip inside the build trusts what the host trusts.
            certs = [
                "-v", "/etc/ssl/certs:/etc/ssl/certs:ro",
                "--env", "PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            ]  # fmt: skip
        podman(
            "build",
            "--format", "docker",  # keeps the HEALTHCHECK
            "--network", "host",
            *LIMITS,
            *certs,
            "--build-arg", f"BASE={BASE_REF}",
            "-t", IMAGE,
            context,
            timeout=1200,
        )  # fmt: skip
    if before is not None and before != image_id(IMAGE):
        # The previous build, now untagged (its layers still used by this one stay).
        podman_quiet("rmi", before)


def is_tcp(url: str) -> bool:
    parts = urlsplit(url)
    hosts = parse_qs(parts.query).get("host", [])
    return bool(parts.hostname) and not any(h.startswith("/") for h in hosts)


@contextmanager
def postgres() -> Iterator[str]:
    """A database the container reaches over TCP (its network is the host's)."""
    configured = os.environ.get("EVENTINDEX_TEST_DATABASE_URL")
    if configured and is_tcp(configured):
        name = f"eventindex_image_{os.getpid()}"
        url = asyncio.run(create_database(configured, name))
        try:
            yield url
        finally:
            asyncio.run(drop_database(configured, name))
        return
    require()
    root = Root()
    server = LocalServer(root, "image")
    try:
        server.init().start()
        yield server.url()
    finally:
        server.stop("immediate")
        root.remove()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def logs(name: str) -> str:
    result = podman_quiet("logs", name)
    return result.stdout + result.stderr


def wait_healthy(name: str, base_url: str, deadline_seconds: float = 90) -> None:
    deadline = time.monotonic() + deadline_seconds
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(base_url + "/health", timeout=2)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.TransportError as exc:
            last = repr(exc)
        state = podman_quiet("inspect", "--format", "{{.State.Running}}", name).stdout.strip()
        if state != "true":
            raise AssertionError(f"the container stopped:\n{logs(name)[-4000:]}")
        time.sleep(0.25)
    raise AssertionError(f"/health: {last} after {deadline_seconds} s\n{logs(name)[-4000:]}")


@dataclass
class Service:
    container: str
    base_url: str
    database_url: str


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    require_tools()
    with ExitStack() as stack:
        stack.enter_context(exclusive())
        ensure_base()
        build_image()
        url = stack.enter_context(postgres())
        env = ["-e", f"EVENTINDEX_DATABASE_URL={url}"]
        podman("run", "--rm", "--network", "host", *LIMITS, *env, IMAGE, "migrate")
        port = 8000
        if not port_is_free(port):
            # Port 8000 is taken on this host (the container shares the host's network):
            # the service listens on a free port instead, its one other setting.
            port = free_port()
            env += ["-e", f"EVENTINDEX_PORT={port}"]
        name = f"eventindex-test-{uuid.uuid4().hex[:12]}"
        try:
            podman(
                "run", "-d", "--name", name, "--network", "host", "--log-driver", "k8s-file",
                *LIMITS, *env, IMAGE,
            )  # fmt: skip
            base_url = f"http://127.0.0.1:{port}"
            wait_healthy(name, base_url)
            yield Service(name, base_url, url)
        finally:
            podman_quiet("stop", "-t", "10", name)
            podman_quiet("rm", "-f", name)


def test_health(service: Service) -> None:
    answer = httpx.get(service.base_url + "/health", timeout=5)
    assert answer.status_code == 200
    assert isinstance(answer.json(), dict)
    # The image's HEALTHCHECK survived the build and passes.
    configured = podman("image", "inspect", "--format", "{{json .HealthCheck}}", IMAGE)
    assert "/health" in configured.stdout
    podman("healthcheck", "run", service.container, timeout=30)


def test_runs_as_an_unprivileged_user(service: Service) -> None:
    uid = podman("exec", service.container, "id", "-u").stdout.strip()
    assert uid.isdigit()
    assert uid != "0"
    users = podman("top", service.container, "user", "huser", "args").stdout.splitlines()[1:]
    assert users, "no processes listed"
    for line in users:
        user, huser = line.split()[:2]
        assert "root" not in (user, huser), line
        assert "0" not in (user, huser), line


def sample(schema: dict[str, Any]) -> str:
    """A plausible value for a path or query parameter."""
    for key in ("examples", "example"):
        if key in schema:
            value = schema[key]
            return str(value[0] if key == "examples" else value)
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    if schema.get("type") == "integer":
        return "1"
    if schema.get("type") == "boolean":
        return "false"
    if "enum" in schema:
        return str(schema["enum"][0])
    return "anyone"


def resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return schema
    node: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    assert isinstance(node, dict)
    return node


def bodies(doc: dict[str, Any], operation: dict[str, Any]) -> list[tuple[str, bytes] | None]:
    """One minimal body per media type the operation accepts (None: no body)."""
    request = operation.get("requestBody")
    if not request:
        return [None]
    found: list[tuple[str, bytes] | None] = []
    for media, spec in request["content"].items():
        schema = resolve(doc, spec.get("schema", {}))
        if "example" in spec:
            example = spec["example"]
        elif schema.get("examples"):
            example = schema["examples"][0]
        else:
            example = {} if "json" in media else "1 1\n"
        data = example.encode() if isinstance(example, str) else json.dumps(example).encode()
        found.append((media, data))
    return found


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete", "head"):
                yield method.upper(), path, operation


def openapi(service: Service) -> dict[str, Any]:
    answer = httpx.get(service.base_url + "/openapi.json", timeout=10)
    if answer.status_code == 200:
        served: dict[str, Any] = answer.json()
        return served
    # Not served (EVENTINDEX_DOCS_ENABLED=false): the same application's document.
    from eventindex.app import create_app
    from eventindex.config import Settings

    return create_app(Settings(database_url=service.database_url)).openapi()


def test_anonymous_requests_to_v1_are_refused(service: Service) -> None:
    doc = openapi(service)
    wrong = []
    seen = set()
    with httpx.Client(base_url=service.base_url, timeout=10) as client:
        for method, path, operation in operations(doc):
            seen.add((method, path))
            url = path
            params: dict[str, str] = {}
            for parameter in operation.get("parameters", []):
                value = sample(parameter.get("schema", {}))
                if parameter["in"] == "path":
                    url = url.replace("{" + parameter["name"] + "}", value)
                elif parameter["in"] == "query" and parameter.get("required"):
                    params[parameter["name"]] = value
            for body in bodies(doc, operation):
                headers, content = {}, None
                if body is not None:
                    headers["Content-Type"], content = body
                answer = client.request(
                    method, url, params=params, headers=headers, content=content
                )
                kind = answer.headers.get("content-type", "")
                if answer.status_code != 401 or not kind.startswith("application/problem+json"):
                    media = body[0] if body else "no body"
                    wrong.append(f"{method} {url} ({media}): {answer.status_code} {kind}")
    assert ("GET", "/v1/events/{run_number}/{event_number}") in seen
    assert ("POST", "/v1/tokens") in seen
    assert not wrong, "anonymous requests not refused with a 401 problem:\n" + "\n".join(wrong)


def test_nobody_makes_themselves_an_admin(service: Service) -> None:
    answer = httpx.post(
        service.base_url + "/v1/tokens",
        json={"name": "anyone", "scopes": ["admin"]},
        timeout=10,
    )
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    listed = subprocess.run(
        [sys.executable, "-m", "eventindex", "token", "list"],
        env={**os.environ, "EVENTINDEX_DATABASE_URL": service.database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "anyone" not in listed.stdout


def test_every_log_line_is_json(service: Service) -> None:
    """Last in this module: it stops the container to see its shutdown's lines too."""
    httpx.get(service.base_url + "/health", timeout=5)
    httpx.get(service.base_url + "/v1/runs", timeout=5)
    podman("stop", "-t", "20", service.container, timeout=60)
    lines = [line for line in logs(service.container).splitlines() if line.strip()]
    assert lines, "the container wrote nothing"
    wrong = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            wrong.append(line)
    assert not wrong, f"{len(wrong)} of {len(lines)} log lines are not JSON objects:\n" + "\n".join(
        wrong[:20]
    )
