"""What the wheel installs (the light client install among it), and the tool modules of a
checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.catalogue import DATASETS, dsid_of, fuid_of, olt_of
from tests.support.servers import run_server

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_only_the_eventindex_package(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
         str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("eventindex-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"eventindex"}
    assert "eventindex/py.typed" in names
    assert "eventindex/apidocs/swagger-init.js" in names  # the API docs start-up
    assert "eventindex/_migrations/0001_core_schema.sql" in names
    assert not [n for n in names if n.startswith(("tools/", "bench/", "tests/"))]
    metadata = (
        zipfile.ZipFile(wheel)
        .read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    import eventindex

    assert f"Version: {eventindex.__version__}" in metadata  # one version source
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    numpy = [line for line in requires if line.split()[1].startswith("numpy")]
    assert numpy
    assert all("extra ==" in line for line in numpy), numpy  # only with an extra


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ([sys.executable, "-m", "tools.gen_data", "--help"], "usage: eventindex generate"),
        ([sys.executable, "-m", "tools.store_events", "--help"], "usage: eventindex load"),
        ([sys.executable, "-m", "eventindex", "generate", "--help"], "usage: eventindex generate"),
        ([sys.executable, "-m", "eventindex", "load", "--help"], "usage: eventindex load"),
    ],
)
def test_tool_entry_points_name_eventindex(command: list[str], usage: str) -> None:
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage), result.stdout[:200]
    assert result.stderr == ""  # no embedded server started to print help


@pytest.mark.slow
def test_the_client_install_is_light_and_picks_from_a_running_service(
    tmp_path: Path, database_url: str
) -> None:
    # A real `pip install` of the built wheel, with no extra, into a fresh venv.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("eventindex-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-c", str(ROOT / "constraints.txt"), str(wheel)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format", "freeze", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    names = {line.split("==")[0].lower() for line in listed.stdout.split()}
    # httpx and what httpx itself needs, nothing of the service's.
    assert names - {"pip", "setuptools", "eventindex"} <= {
        "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio", "typing-extensions",
        "typing_extensions",
    }, names  # fmt: skip
    for module in ("fastapi", "pydantic", "orjson", "asyncpg", "uvicorn"):
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60)
        assert probe.returncode != 0, f"{module} is installed by the client install"

    eventindex = str(venv / "bin" / "eventindex")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [eventindex, *args], input=stdin, capture_output=True, text=True, timeout=120,
            check=False, cwd=tmp_path,
        )  # fmt: skip

    import eventindex as package

    assert run("--version").stdout == f"eventindex {package.__version__}\n"
    for command in ("serve", "migrate", "load", "check"):
        refused = run(command)
        assert refused.returncode == 1
        assert refused.stdout == ""
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"eventindex: error: eventindex {command} needs the service")
        assert line.endswith("pip install 'eventindex[server]'")

    # The service from this checkout's own environment, picked from the light one.
    with run_server(database_url) as server:
        picked = run("pick", "--url", server.url, "--format", "csv", stdin="100 1\n5 5\nx y\n")
        assert picked.returncode == 1  # a bad line, by default
        # Text and JSON lines, read with the standard library's json here (no orjson).
        skipped = run(
            "pick", "--url", server.url, "--format", "csv", "--skip-invalid",
            stdin='100 1\n5 5\nx y\n[100, 2]\n{"run_number": 100, "event_number": 3}\n'
            '{"run_number": 1\n',
        )  # fmt: skip
        script = (
            "from eventindex.client import SyncEventIndexClient as C\n"
            f"with C({server.url!r}) as c:\n"
            "    print(c.get_event(100, 1).fuid_raw, c.lookup([(5, 5)]).summary.missing)\n"
        )
        client = subprocess.run(
            [python, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
    assert skipped.returncode == 3, skipped.stderr
    rows = skipped.stdout.splitlines()[1:]
    assert rows[:2] == [
        f"100,1,true,{fuid_of(100, 1)},{dsid_of(100)},{olt_of(1)},{DATASETS[dsid_of(100)]},"
        "minimum_bias",
        "5,5,false,,,,,",
    ]
    assert [row.split(",")[:4] for row in rows[2:]] == [
        ["100", "2", "true", fuid_of(100, 2)],
        ["100", "3", "true", fuid_of(100, 3)],
    ]
    errors = skipped.stderr.splitlines()
    assert errors[0] == "eventindex: stdin: line 3: run_number 'x' is not a whole number (skipped)"
    assert errors[1].startswith("eventindex: stdin: line 6: not valid JSON (")
    assert errors[2:] == ["eventindex: 4 pairs: 3 found, 1 missing; 2 bad lines skipped"]
    assert client.returncode == 0, client.stderr
    assert client.stdout == f"{fuid_of(100, 1)} 1\n"
