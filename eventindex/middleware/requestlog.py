"""One log line per request (with a request id) and the request metrics."""

from __future__ import annotations

import itertools
import json
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventindex import metrics as metrics_module
from eventindex.metrics import Metrics

log = logging.getLogger("eventindex.access")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestLog:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Ids unique across the service's processes and restarts: a random prefix of the
        # process and a count (a uuid4 per request cost 4% of a single-event GET).
        self._id_prefix = secrets.token_hex(8)
        self._ids = itertools.count(1)
        # The metrics' children by label values (prometheus_client's labels() builds and
        # locks on each call).
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        request_id = (
            given
            if given and _REQUEST_ID.fullmatch(given)
            else f"{self._id_prefix}{next(self._ids):016x}"
        )
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [
                    *(h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"),
                    (b"x-request-id", request_id.encode()),
                ]
                message = {**message, "headers": headers}
            await send(message)

        token = metrics_module.current.set(self.metrics)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics_module.current.reset(token)
            duration = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self._count(method, route, status).inc()
            self._time(method, route).observe(duration)
            if log.isEnabledFor(logging.INFO):  # (else gathering the fields is wasted)
                client = scope.get("client")
                log.info(
                    "%s %s %s %.1f ms",
                    method,
                    route,
                    status,
                    duration * 1000,
                    extra={
                        "method": method,
                        "route": route,
                        "path": scope.get("path"),
                        "status": status,
                        "duration_ms": round(duration * 1000, 2),
                        "pairs": state.get("pairs"),
                        "client": client[0] if client else None,
                        "request_id": request_id,
                    },
                )

    def _count(self, method: str, route: str, status: int) -> Any:
        key = (method, route, status)
        child = self._counted.get(key)
        if child is None:
            child = self._counted[key] = self.metrics.requests.labels(method, route, str(status))
        return child

    def _time(self, method: str, route: str) -> Any:
        key = (method, route)
        child = self._timed.get(key)
        if child is None:
            child = self._timed[key] = self.metrics.latency.labels(method, route)
        return child


_FIELDS = ("method", "route", "path", "status", "duration_ms", "pairs", "client", "request_id")

# Nothing here logs credentials; should a message or traceback ever hold one anyway
# (a URL with its password, a bearer token, an API token, a JWT), the line masks it.
_CREDENTIALS = (
    (re.compile(r"(\w://[^\s/@:'\"]*):[^\s@'\"]*@"), r"\1:***@"),
    (
        re.compile(r"(?i)((?:^|[?&\s])(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&#\s'\"]*)"),
        r"\1***",
    ),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    (re.compile(r"\b(Basic)\s+[A-Za-z0-9+/]{8,}={0,2}"), r"\1 ***"),
    (re.compile(r"\bei_[A-Za-z0-9_-]{8,}"), "ei_***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "***"),
)


def mask_credentials(line: str) -> str:
    for pattern, replacement in _CREDENTIALS:
        line = pattern.sub(replacement, line)
    return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: machine-readable logs for production."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return mask_credentials(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = getattr(record, "pairs", None)
        request_id = getattr(record, "request_id", None)
        if pairs is not None:
            line += f" pairs={pairs}"
        if request_id is not None:
            line += f" id={request_id}"
        return mask_credentials(line)


def configure_logging(level: str, json_format: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
