"""What the wheel installs, and the tool modules of a checkout (issue 17)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

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
