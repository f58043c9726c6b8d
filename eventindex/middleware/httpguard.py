"""Limits on what a client may do before its request reaches the application.

uvicorn's HTTP protocol has none of these: a client may keep a connection open
without sending anything, send its headers one byte a second, or send millions
of headers, and uvicorn keeps the connection and buffers them all. These are
the classic ways to tie up a server's sockets and memory (slow-loris, header
floods), so the service runs uvicorn with this subclass of its httptools
protocol, which

- closes a connection whose request line and headers have not all arrived
  within ``header_timeout`` seconds (408 if part of a request came);
- answers 431 and closes once a request's head passes ``max_header_bytes``
  or ``max_headers`` headers, before buffering more of it;
- answers 503 and closes a new connection when ``max_connections`` are open.

Answers are ``application/problem+json`` like every other error of the service.
Bodies are limited by the application, which knows which requests may be long.

It also tells the application what only the connection knows: its TLS (the ASGI ``tls``
extension, with the verified client certificate chain: ``eventindex/tls.py``) and the
address of the peer that connected (``PEER_KEY``), which uvicorn replaces with the
``X-Forwarded-For`` client behind a trusted proxy.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, cast

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from eventindex.tls import PEER_KEY, ChainMemory, connection_tls

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


_LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class HeadLimits:
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections: int = 2048


def problem_bytes(status: int, kind: str, title: str, detail: str) -> bytes:
    """A whole HTTP/1.1 response with a problem+json body, closing the connection."""
    body = orjson.dumps(
        {
            "type": f"urn:eventindex:problem:{kind}",
            "title": title,
            "status": status,
            "detail": detail,
        }
    )
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: application/problem+json",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    if status == 503:
        head.append(b"retry-after: 1")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`HeadLimits`."""

    def __init__(
        self, *args: Any, limits: HeadLimits, chains: ChainMemory | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._chains = chains if chains is not None else ChainMemory()
        self._tls: dict[str, object] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = 0
        self._parsed_head_bytes = 0
        self._head_count = 0
        self._refused = False
        self._seen_bytes = False

    # The connection as a whole

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(cast(asyncio.Transport, _LingeringClose(transport, self)))
        if len(self.connections) > self._limits.max_connections:
            self._refuse(
                503,
                "too-many-connections",
                "Too many connections",
                f"The service has {self._limits.max_connections} connections open; "
                "try again shortly.",
            )
            return
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._tls = connection_tls(ssl_object, self._chains)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused or cast(_LingeringClose, self.transport).lingering:
            return  # an answer was given and the connection is closing: drop the rest
        self._seen_bytes = True
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Counted after parsing so that body bytes arriving with the head's end don't
        # count; what is buffered is at most the limit plus one read.
        if self._in_head and self._head_bytes > self._limits.max_header_bytes:
            self._too_large(f"more than {self._limits.max_header_bytes} bytes")
            return
        if (
            not self._refused
            and self._head_timer is None
            and self.timeout_keep_alive_task is None
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
        ):
            # Bytes no request will read (the rest of a body its answer did not wait for):
            # uvicorn dropped its keep-alive timer on them and arms none, so a client that
            # sends a byte now and then would hold the connection for ever.
            self._arm_head_timer()

    def send_400_response(self, msg: str) -> None:
        # A refusal raises out of a parser callback; the parser's error must not
        # add a second response behind it.
        if not self._refused:
            super().send_400_response(msg)

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        scope = cast(dict[str, Any], self.scope)
        scope[PEER_KEY] = self.client
        if self._tls is not None:
            scope["extensions"] = {"tls": dict(self._tls)}
        self._in_head = True
        self._head_bytes = 0
        self._parsed_head_bytes = 0
        self._head_count = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._count_parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._head_count += 1
        if self._head_count > self._limits.max_headers:
            self._too_large(f"more than {self._limits.max_headers} header fields")
            # Stops the parser; send_400_response above keeps quiet about it.
            raise _Refused
        self._count_parsed(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def _count_parsed(self, n: int) -> None:
        # The head as the parser sees it, however it arrived: a whole head in one read
        # passes data_received's count (which checks between reads) but not this one.
        self._parsed_head_bytes += n
        if self._parsed_head_bytes > self._limits.max_header_bytes:
            self._too_large(f"more than {self._limits.max_header_bytes} bytes")
            raise _Refused

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    # Helpers

    def _too_large(self, what: str) -> None:
        self._refuse(
            431,
            "header-too-large",
            "Request head too large",
            f"The request line and headers hold {what}; the limit is "
            f"{self._limits.max_header_bytes} bytes and {self._limits.max_headers} fields.",
        )

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self._limits.header_timeout, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._refused or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request behind one still being answered: reading is paused
            # until that answer is done, so its head cannot be late yet.
            self._arm_head_timer()
            return
        if not self._seen_bytes and self.cycle is None:
            # Connected and said nothing: nobody to answer.
            self._refused = True
            self.transport.close()
            return
        self._refuse(
            408,
            "header-timeout",
            "Request head too slow",
            f"The request line and headers did not arrive within "
            f"{self._limits.header_timeout:g} seconds.",
        )

    def _refuse(self, status: int, kind: str, title: str, detail: str) -> None:
        self._refused = True
        self._cancel_head_timer()
        self.logger.warning("refused a connection from %s: %s", self.client, detail)
        if self.transport.is_closing():
            return
        self.transport.write(problem_bytes(status, kind, title, detail))
        if status != 503 and self.transport.can_write_eof():
            # Closing with the client's bytes unread would reset the connection and
            # could destroy the answer before the client reads it: half-close, read
            # and drop what it still sends for a moment, then close.
            self.transport.write_eof()
            self.loop.call_later(_LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


# A write at most this long may wait for the end of the loop's turn (see _LingeringClose).
_HOLD_BYTES = 16 * 1024


class _LingeringClose:
    """The connection's transport, with two changes.

    Closing it while the client is still sending a body the answer did not wait for (a 413
    or 408 from the application, with ``Connection: close``) half-closes, drops what the
    client still sends for a moment, then closes. Closing at once with unread input makes
    the kernel reset the connection, and the reset can destroy the answer before the
    client has read it.

    Small writes made in one turn of the event loop go out together at its end: uvicorn
    writes an answer's head and its body apart, and the second send() was a fifth of the
    CPU of a single-event GET (py-spy under ``wrk``). Larger writes, closing and
    half-closing send what is held first, so the bytes keep their order.
    """

    def __init__(self, transport: asyncio.Transport, protocol: GuardedProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False
        self._held: list[bytes] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def write(self, data: bytes) -> None:
        # Once half-closed nothing more can be sent: an application still answering a
        # request whose connection the server gave up on (a malformed chunk after its
        # headers) is talking to nobody.
        if self.lingering:
            return
        if len(data) > _HOLD_BYTES:
            if self._held:
                self._held.append(data)
                self.flush()
            else:
                self._transport.write(data)
            return
        if not self._held:
            self._protocol.loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        if self.lingering or self._transport.is_closing():
            return
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = []
        self._transport.abort()

    def close(self) -> None:
        if self.lingering or self._transport.is_closing():
            return
        self.flush()
        cycle = self._protocol.cycle
        if cycle is not None and cycle.more_body and self._transport.can_write_eof():
            self.lingering = True
            self._transport.write_eof()
            self._transport.resume_reading()  # drain it rather than let the client block
            self._protocol.loop.call_later(_LINGER_SECONDS, self._transport.close)
            return
        self._transport.close()


def protocol_factory(limits: HeadLimits) -> functools.partial[GuardedProtocol]:
    """What to pass as uvicorn's ``http``: picklable, so worker processes get it too (each
    its own copy of the chain memory, as each has its own TLS session cache)."""
    return functools.partial(GuardedProtocol, limits=limits, chains=ChainMemory())
