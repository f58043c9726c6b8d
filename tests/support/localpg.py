"""Local PostgreSQL servers of the system's installation (Debian's postgresql-15), for the
tests and benchmarks that need several servers, a streaming replica or PL/Proxy: initdb in
a temporary directory, on a spare port. As root the servers run as the ``postgres`` user."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

VERSION = "15"
BINDIR = Path(f"/usr/lib/postgresql/{VERSION}/bin")
EXTENSIONS = Path(f"/usr/share/postgresql/{VERSION}/extension")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _as_owner() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class Root:
    """A temporary directory the servers' user may write to."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="eventindex-pg-", dir="/tmp"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.path, pw.pw_uid, pw.pw_gid)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class LocalServer:
    def __init__(self, root: Root, name: str) -> None:
        self.name = name
        self.datadir = root.path / name
        self.port = free_port()

    def _run(self, *args: str | Path) -> None:
        subprocess.run(
            [*_as_owner(), *(str(a) for a in args)],
            check=True,
            capture_output=True,
            timeout=120,
            cwd="/tmp",
        )

    def init(self, **settings: str) -> LocalServer:
        """initdb; ``settings`` are added to postgresql.conf."""
        self._run(
            BINDIR / "initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust", "--no-sync"
        )
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_prepared_transactions = 20\nmax_connections = 60\n"
                "shared_buffers = 32MB\nwal_level = replica\nmax_wal_senders = 4\n"
            )
            conf.writelines(f"{key} = '{value}'\n" for key, value in settings.items())
        return self

    def replica_of(self, primary: LocalServer) -> LocalServer:
        """A streaming replica: a base backup of ``primary`` that follows it."""
        self._run(
            BINDIR / "pg_basebackup",
            "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
            "-D", self.datadir, "-R", "-X", "stream", "--no-sync", "--checkpoint=fast",
        )  # fmt: skip
        return self

    def start(self) -> LocalServer:
        self._run(
            BINDIR / "pg_ctl", "-D", self.datadir, "-w", "-t", "60",
            "-l", self.datadir / "server.log",
            "-o", f"-p {self.port} -k {self.datadir} -c listen_addresses=127.0.0.1",
            "start",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run(BINDIR / "pg_ctl", "-D", self.datadir, "-w", "-m", mode, "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> None:
        self._run(
            BINDIR / "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.url(database), "-c", sql
        )
