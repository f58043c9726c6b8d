"""An open (unauthenticated) service answers only requests addressed to this machine.

A web page the developer visits can make the browser send requests to
``127.0.0.1:8000`` under a name the attacker controls (DNS rebinding): the
browser then treats the answers as the attacker's origin. Such requests carry
the attacker's name in ``Host``; a service without authentication refuses every
``Host`` that is not a loopback name or address. On when authentication is off
and ``EVENTINDEX_ALLOW_OPEN_SERVICE`` is not set.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

from eventindex.config import is_loopback_host
from eventindex.problems import Problem

# RFC 9110's Host: a name or an IPv4 address, or an IPv6 address in brackets; a port.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?")


def host_name(header: str) -> str:
    """The name in a Host header without its port (``[::1]:8000`` -> ``[::1]``); empty
    when the header is not a host at all."""
    match = _HOST.fullmatch(header)
    return match.group(1) if match else ""


class LoopbackHostsOnly:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1")
                break
        if is_loopback_host(host_name(host)):
            await self.app(scope, receive, send)
            return
        shown = host if host.isprintable() and len(host) <= 100 else "(unprintable)"
        problem = Problem(
            421,
            "host-not-allowed",
            "Request not for this service",
            f"This service runs without authentication and answers only requests "
            f"addressed to this machine (localhost, 127.0.0.1, [::1]); Host {shown!r} "
            f"is refused (docs/security.md).",
        )
        await problem.response(scope.get("path"))(scope, receive, send)
