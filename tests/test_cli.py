"""The eventindex command: help, migrate, and one clear line for each error."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventindex", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.parametrize("args", [["--help"], ["migrate", "--help"], ["serve", "--help"]])
def test_help(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 0
    assert "usage: eventindex" in result.stdout


def test_version() -> None:
    import eventindex

    result = run("--version")
    assert (result.returncode, result.stdout) == (0, f"eventindex {eventindex.__version__}\n")


@pytest.mark.parametrize(
    "command", ["serve", "migrate", "pick", "check", "token", "shards", "generate", "load"]
)
def test_every_help_names_eventindex_and_only_helps(command: str) -> None:
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: eventindex {command}"), result.stdout[:100]
    assert "python -m" not in result.stdout
    assert result.stderr == ""  # no embedded server started, nothing said about one


def test_migrate_applies_then_is_a_no_op(scratch_database: str) -> None:
    first = run("migrate", "--database-url", scratch_database)
    assert first.returncode == 0, first.stderr
    assert "0001_core_schema" in first.stdout
    again = run("migrate", "--database-url", scratch_database)
    assert again.returncode == 0
    assert again.stdout.strip() == "database is up to date"


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"EVENTINDEX_PORT": "eighty"}, "EVENTINDEX_PORT"),
        ({"EVENTINDEX_POOL_MAX_SIZE": "0"}, "EVENTINDEX_POOL_MAX_SIZE"),
        ({"EVENTINDEX_LOG_LEVEL": "loud"}, "EVENTINDEX_LOG_LEVEL"),
        ({"EVENTINDEX_POOL_MIN_SIZE": "50"}, "pool_min_size must not exceed pool_max_size"),
    ],
)
def test_invalid_settings_fail_with_one_line(env: dict[str, str], needle: str) -> None:
    result = run("serve", **env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("eventindex: error: invalid settings")
    assert needle in lines[0]


def test_unreachable_database_is_one_line() -> None:
    result = run("migrate", "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot connect to the database" in lines[0]


def test_unknown_command_is_usage_error() -> None:
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["init", "--shard", "a"], 2, "--shard 'a': expected NAME=URL"),
        (["init", "--shard", "A b=postgresql://h/db"], 1, "shard name 'A b': use 1-40 of"),
        (["init", "--shard", "a=mysql://x/y"], 1, "shard a: 'mysql://x/y' is not a postgresql"),
        (["init", "--shard", "a=postgresql://h/db", "--slots", "12"], 1, "power of two, not 12"),
        (["list"], 1, "not a coordinator (run 'shards init')"),
        (["add", "d", "postgresql://127.0.0.1:1/x"], 1, "not a coordinator"),
    ],
)
def test_shards_errors_are_one_line(
    catalogue: str, args: list[str], code: int, needle: str
) -> None:
    result = run("shards", "--database-url", catalogue, *args)
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_shards_init_refuses_a_catalogue_that_holds_events(database_url: str) -> None:
    result = run("shards", "--database-url", database_url, "init", "--shard", "a=" + database_url)
    assert result.returncode == 1
    assert "the coordinator holds events" in result.stderr
