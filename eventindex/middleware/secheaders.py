"""Security headers on every response.

The web page and the API docs (Swagger UI, routes/apidocs.py) run only the service's
own script and style files (no inline script, no CDN), so one policy forbids everything
else on every page.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

_COMMON = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_STRICT = [*_COMMON, (b"content-security-policy", CONTENT_SECURITY_POLICY.encode())]
# Over HTTPS (served directly, or behind a trusted proxy that says so): browsers must
# not fall back to plain http for a year.
_HSTS = [(b"strict-transport-security", b"max-age=31536000")]
_NAMES = {name for name, _ in _STRICT} | {_HSTS[0][0]}


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _STRICT
        if scope.get("scheme") == "https":
            extra = extra + _HSTS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in _NAMES]
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)
