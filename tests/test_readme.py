"""The README stays true: its commands, settings and endpoints exist."""

from __future__ import annotations

import re
from pathlib import Path

from eventindex.app import create_app
from eventindex.cli import build_parser
from eventindex.config import Mode, Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
CI = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def test_every_setting_is_documented_and_every_documented_one_exists() -> None:
    fields = {"EVENTINDEX_" + name.upper() for name in Settings.model_fields}
    named = set(re.findall(r"`(EVENTINDEX_[A-Z_]+)`", README))
    client_side = {"EVENTINDEX_URL", "EVENTINDEX_TOKEN", "EVENTINDEX_TEST_DATABASE_URL"}
    assert fields - named == set(), "settings missing from the README"
    assert named - fields - client_side == set(), "the README names settings that do not exist"


def test_documented_endpoints_exist() -> None:
    # Production: every endpoint (an open service has no token endpoints).
    app = create_app(
        Settings(database_url="postgresql://unused@127.0.0.1:1/x", mode=Mode.PRODUCTION)
    )

    def shape(path: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", re.sub(r"\?.*", "", path))

    paths = {shape(p) for p in app.openapi()["paths"]} | {"/", "/docs", "/openapi.json"}
    documented = {shape(p) for p in re.findall(r"\| `(?:GET|POST|DELETE) (/[^`]*)`", README)}
    assert len(documented) > 15
    assert documented - paths == set()


def test_documented_commands_exist_and_ci_runs_the_test_command() -> None:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    assert action.choices is not None
    documented = set(re.findall(r"`eventindex (\w+)", README))
    assert documented <= set(action.choices)
    assert "./dev test" in README
    assert CI.strip().splitlines()[-1] == "exec ./dev test"
