"""The README and docs/ stay true: their commands, settings, endpoints and links exist."""

from __future__ import annotations

import re
from pathlib import Path

from eventindex.app import create_app
from eventindex.cli import build_parser
from eventindex.config import Mode, Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
ALL = README + "\n".join(DOCS.values())
CI = (ROOT / ".ci" / "run").read_text()


def test_every_setting_is_documented_and_every_documented_one_exists() -> None:
    fields = {"EVENTINDEX_" + name.upper() for name in Settings.model_fields}
    table = set(re.findall(r"`(EVENTINDEX_[A-Z_]+)`", DOCS["configuration.md"]))
    named = set(re.findall(r"`(EVENTINDEX_[A-Z_]+)`", ALL))
    client_side = {"EVENTINDEX_URL", "EVENTINDEX_TOKEN", "EVENTINDEX_TEST_DATABASE_URL"}
    assert fields - table == set(), "settings missing from docs/configuration.md"
    assert named - fields - client_side == set(), "the docs name settings that do not exist"


def test_documented_endpoints_exist() -> None:
    # Production: every endpoint (an open service has no token endpoints).
    app = create_app(
        Settings(database_url="postgresql://unused@127.0.0.1:1/x", mode=Mode.PRODUCTION)
    )

    def shape(path: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", re.sub(r"\?.*", "", path))

    paths = {shape(p) for p in app.openapi()["paths"]} | {"/", "/docs", "/openapi.json"}
    documented = {shape(p) for p in re.findall(r"\| `(?:GET|POST|DELETE) (/[^`]*)`", ALL)}
    assert len(documented) > 15
    assert documented - paths == set()
    assert {shape(p) for p in app.openapi()["paths"]} - documented - {"/health"} == set()


def test_documented_commands_exist_and_ci_runs_the_test_command() -> None:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    assert action.choices is not None
    documented = set(re.findall(r"`eventindex (\w+)", ALL))
    assert documented <= set(action.choices)
    assert set(action.choices) - documented == set(), "commands missing from the docs"
    assert "./dev test" in README
    assert "./dev run" in README
    assert CI.strip().splitlines()[-1] == "exec ./dev test"


def test_links_between_docs_resolve() -> None:
    for name, text in [("README.md", README), *((f"docs/{n}", t) for n, t in DOCS.items())]:
        base = ROOT if name == "README.md" else ROOT / "docs"
        for target in re.findall(r"\]\(([^)#:]+\.md)(?:#[^)]*)?\)", text):
            assert (base / target).is_file(), f"{name} links to {target}, which is not there"


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= 120
