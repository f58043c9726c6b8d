"""The tests' use of local PostgreSQL 15 servers (tests/support/localpg.py)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.localpg import BINDIR, EXTENSIONS, VERSION, LocalServer, Root

__all__ = ["LocalServer", "Root", "require"]


def require(*, plproxy: bool = False, pgbouncer: bool = False) -> None:
    """Skip (naming what to install) where the system lacks the servers; ``./dev test``
    installs them with apt-get where it can."""
    missing = []
    if not (BINDIR / "initdb").exists():
        missing.append(f"postgresql-{VERSION}")
    if plproxy and not (EXTENSIONS / "plproxy.control").exists():
        missing.append(f"postgresql-{VERSION}-plproxy")
    if pgbouncer and shutil.which("pgbouncer") is None and not shutil.which("/usr/sbin/pgbouncer"):
        missing.append("pgbouncer")
    if missing:
        if os.environ.get("CI"):  # nothing is skipped in CI: ./dev test installs them
            pytest.fail("needs the system packages " + ", ".join(missing))
        pytest.skip("needs the system packages " + ", ".join(missing))
