"""The Dockerfile and docker-compose.yml, checked against the project (no Docker engine here)."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventindex.app import create_app
from eventindex.cli import build_parser
from eventindex.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def dockerfile() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    assert action.choices is not None
    return set(action.choices)


def setting_variables() -> set[str]:
    return {"EVENTINDEX_" + name.upper() for name in Settings.model_fields}


def routes() -> set[str]:
    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1:1/x"))
    return set(app.openapi()["paths"])


def eventindex_commands(text: str) -> list[str]:
    words = shlex.split(text.replace("&&", " && "))
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "eventindex"]


def test_compose_service_graph(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"db", "migrate", "api", "demo-data"}
    db = services["db"]
    assert db["image"].startswith("postgres:")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert any(v.startswith("pgdata:") for v in db["volumes"])
    assert "pgdata" in compose["volumes"]
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("api", "demo-data"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
    assert services["demo-data"]["profiles"] == ["demo-data"]
    assert services["api"]["environment"]["EVENTINDEX_PORT"] == "8000"


def test_compose_api_is_production_and_loopback_only(
    compose: dict[str, Any], dockerfile: list[str]
) -> None:
    api = compose["services"]["api"]
    # Production mode (authentication on /v1, JSON logs): the image's default, and the
    # service does not turn it off.
    final = dockerfile[dockerfile.index([s for s in dockerfile if s.startswith("FROM ")][-1]) :]
    image_env = " ".join(line for line in final if line.startswith("ENV "))
    assert re.search(r"\bEVENTINDEX_MODE=production\b", image_env)
    assert api["environment"].get("EVENTINDEX_MODE", "production") == "production"
    assert "EVENTINDEX_AUTH_REQUIRED" not in api["environment"]
    # Plain HTTP on the host's loopback interface only.
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (
                f"{name}: {port} is published on all interfaces"
            )
    # The compose file tells how the first admin token is made, with the CLI's real syntax.
    header = (ROOT / "docker-compose.yml").read_text().split("\nname:", 1)[0]
    match = re.search(r"docker compose run --rm api (token create .*)", header)
    assert match is not None
    args = build_parser().parse_args(shlex.split(match.group(1)))
    assert args.token_command == "create"
    assert args.scope == ["admin"]


def test_compose_names_only_real_commands_and_settings(compose: dict[str, Any]) -> None:
    known = subcommands()
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for var in env:
            if var.startswith("EVENTINDEX_"):
                assert var in setting_variables(), f"{name}: {var} is not a setting"
        command = service.get("command")
        if command is None:
            continue
        entry = service.get("entrypoint")
        if entry == ["sh", "-c"]:
            used = [c for text in command for c in eventindex_commands(text)]
        else:
            used = [command[0]]
        assert used, name
        for sub in used:
            assert sub in known, f"{name}: 'eventindex {sub}' is not a command"
    url = compose["x-database"]["EVENTINDEX_DATABASE_URL"]
    db = compose["services"]["db"]["environment"]
    assert url == (
        f"postgresql://{db['POSTGRES_USER']}:{db['POSTGRES_PASSWORD']}@db:5432/{db['POSTGRES_DB']}"
    )


def test_dockerfile(dockerfile: list[str]) -> None:
    stages = [line for line in dockerfile if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    final = dockerfile[dockerfile.index(stages[-1]) :]
    assert any(re.fullmatch(r"USER (?!root\b)\w+", line) for line in final), "runs as non-root"
    assert not any("gcc" in line or "build-essential" in line for line in final)
    for line in dockerfile:
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
    assert any("-c constraints.txt" in line for line in dockerfile)
    assert 'ENTRYPOINT ["eventindex"]' in final
    cmd = next(line for line in final if line.startswith("CMD "))
    assert cmd == 'CMD ["serve"]'
    assert "serve" in subcommands()
    health = next(line for line in final if line.startswith("HEALTHCHECK"))
    path = re.search(r"'(/[a-z]+)'", health)
    assert path is not None
    assert path.group(1) in routes()
    for line in final:
        for var in re.findall(r"\b(EVENTINDEX_[A-Z_]+)=", line):
            assert var in setting_variables(), var
    expose = next(line for line in final if line.startswith("EXPOSE "))
    assert expose == "EXPOSE 8000"


def test_constraints_pin_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    extras = project["optional-dependencies"]
    for requirement in project["dependencies"] + extras["server"] + extras["generate"]:
        name = re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in constraints.txt"
