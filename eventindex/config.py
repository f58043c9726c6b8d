"""Service settings, read from ``EVENTINDEX_*`` environment variables."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from eventindex.pairs import MAX_EVENT_NUMBER as MAX_EVENT_NUMBER
from eventindex.pairs import MAX_RUN_NUMBER as MAX_RUN_NUMBER


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Mode(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


def _default_scope_map() -> dict[str, list[str]]:
    return {
        "eventindex:read": ["read"],
        "eventindex:write": ["read", "write"],
        "eventindex:admin": ["read", "write", "admin"],
    }


class Settings(BaseSettings):
    """Every setting has an ``EVENTINDEX_`` environment variable of the same name."""

    model_config = SettingsConfigDict(env_prefix="EVENTINDEX_", frozen=True, extra="ignore")

    database_url: str | None = Field(
        default=None,
        repr=False,  # may hold a password
        description="PostgreSQL URL; unset means an embedded server under data_dir",
    )
    read_database_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="read-only PostgreSQL URLs (streaming replicas), comma-separated: "
        "lookups and catalogue queries go there, writes to database_url; when none "
        "answers, reads fall back to database_url",
    )
    statement_cache_size: Annotated[int, Field(ge=0)] = Field(
        default=1024,
        description="prepared statements cached per connection; 0 behind pgbouncer in "
        "transaction mode",
    )
    data_dir: Path = Field(
        default=Path(".eventindex"),
        description="Where the embedded PostgreSQL keeps its data when database_url is unset",
    )
    mode: Mode = Field(
        default=Mode.DEVELOPMENT,
        description="production: authentication required, JSON logs; development: open",
    )
    auth_required: bool | None = Field(
        default=None, description="require a credential on /v1 (default: in production mode)"
    )
    allow_open_service: bool = Field(
        default=False,
        description="let a service without authentication listen on a network address, "
        "answer any Host, or run in production mode; without it an open service serves "
        "only its own machine (docs/security.md)",
    )
    docs_enabled: bool = Field(default=True, description="serve /docs and /openapi.json")
    oidc_issuer: str | None = Field(default=None, description="JWT issuer (iss) to accept")
    oidc_audience: str | None = Field(default=None, description="JWT audience (aud) to accept")
    oidc_jwks_url: str | None = Field(
        default=None, description="where the issuer's keys are (https)"
    )
    oidc_allow_http_jwks: bool = Field(
        default=False, description="accept a plain-http JWKS URL (for a test provider only)"
    )
    oidc_scope_claim: str = Field(default="scope", description="claim holding scopes or groups")
    oidc_jwks_refresh_cooldown: Annotated[float, Field(ge=0)] = Field(
        default=30.0,
        description="least seconds between two fetches of the keys caused by unknown key "
        "ids or failed fetches",
    )
    oidc_jwks_refresh_minutes: Annotated[float, Field(gt=0)] = Field(
        default=10.0,
        description="the keys are fetched again at least this often; a key gone from the "
        "latest fetch is refused from then on",
    )
    oidc_jwks_timeout: Annotated[float, Field(gt=0, le=60)] = Field(
        default=5.0, description="seconds one fetch of the keys may take"
    )
    oidc_leeway_seconds: Annotated[int, Field(ge=0, le=600)] = Field(
        default=30, description="clock skew allowed when checking a JWT's exp and nbf"
    )
    oidc_scope_map: dict[str, list[str]] = Field(
        default_factory=_default_scope_map,
        description="claim value -> EventIndex scopes (read, write, admin)",
    )
    ssl_certfile: Path | None = Field(default=None, description="serve HTTPS with this cert")
    ssl_keyfile: Path | None = Field(default=None, description="the certificate's key")
    ssl_ca_certs: Path | None = Field(
        default=None,
        description="CA bundle (or a directory of hashed CA certificates) to verify client "
        "certificates against",
    )
    ssl_client_cert_required: bool = False
    forwarded_allow_ips: str = Field(
        default="",
        description="addresses of the reverse proxies whose X-Forwarded-For/-Proto headers "
        "are trusted (comma-separated); none by default, so that no client can forge its "
        "address",
    )
    workers: Annotated[int | None, Field(ge=1, le=64)] = Field(
        default=None,
        description="worker processes; default: one per CPU in production, one in development",
    )
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    pool_min_size: Annotated[int, Field(ge=0)] = 1
    pool_max_size: Annotated[int, Field(ge=1)] = 10
    pool_acquire_timeout: Annotated[float, Field(gt=0)] = 10.0
    bulk_connections: Annotated[int, Field(ge=1)] = Field(
        default=2,
        description="connections of each worker's pool that bulk work (streamed lookups, "
        "cursors, lookups whose body is over 32 kB) may hold at once (at most the pool's "
        "size less one), and the bulk requests each worker serves at once: the rest serve "
        "single events, page-sized lookups and catalogue queries at once, and a database "
        "kept from running more bulk queries than it has cores answers those quickly",
    )
    bulk_queue: Annotated[int, Field(ge=0)] = Field(
        default=1000,
        description="bulk requests each worker lets wait for their turn (beyond "
        "bulk_connections served at once), holding nothing but their sockets; more are "
        "answered 503 with Retry-After at once",
    )
    bulk_queue_timeout: Annotated[float, Field(gt=0)] = Field(
        default=120.0,
        description="seconds a bulk request waits for its turn before it is answered 503 "
        "with Retry-After (a reverse proxy in front must wait as long for an answer to start)",
    )
    statement_timeout_ms: Annotated[int, Field(ge=0)] = 60_000
    max_json_pairs: Annotated[int, Field(ge=1)] = 100_000
    max_body_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    max_stream_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024**3
    header_timeout: Annotated[float, Field(gt=0)] = Field(
        default=10.0,
        description="seconds a client has to send a request's line and headers (else 408 "
        "and the connection is closed; a silent connection is closed)",
    )
    max_header_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=64 * 1024, description="largest request line and headers (else 431)"
    )
    max_headers: Annotated[int, Field(ge=10)] = Field(
        default=100, description="most header fields in a request (else 431)"
    )
    max_connections: Annotated[int, Field(ge=1)] = Field(
        default=2048,
        description="open client connections per worker; more are answered 503 and closed",
    )
    keepalive_timeout: Annotated[float, Field(gt=0)] = Field(
        default=5.0, description="seconds an idle keep-alive connection stays open"
    )
    body_timeout: Annotated[float, Field(gt=0)] = Field(
        default=60.0,
        description="seconds a client has to send a body the service reads whole (JSON "
        "lookups, tokens); else 408",
    )
    stream_idle_timeout: Annotated[float, Field(gt=0)] = Field(
        default=60.0,
        description="seconds a streamed lookup waits for more of its body before it ends "
        "with a 408 problem",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="origins (comma-separated) whose web pages may call the API from a "
        "browser; none by default",
    )
    lookup_batch_size: Annotated[int, Field(ge=1, le=100_000)] = 20_000
    stream_connections: Annotated[int, Field(ge=1, le=16)] = 2
    spool_memory_bytes: Annotated[int, Field(ge=64 * 1024)] = 8 * 1024 * 1024
    rate_limit_per_second: Annotated[float, Field(ge=0)] = Field(
        default=0.0, description="Requests per second per client (0: no limit)"
    )
    rate_limit_burst: Annotated[int, Field(ge=1)] = 20
    log_level: LogLevel = LogLevel.INFO
    log_format: Literal["text", "json"] | None = Field(
        default=None,
        description="text for people, json (one object per line) for machines "
        "(default: json in production)",
    )
    metrics_enabled: bool = Field(default=True, description="serve Prometheus metrics at /metrics")
    metrics_token: SecretStr | None = Field(
        default=None, description="if set, /metrics wants 'Authorization: Bearer <token>'"
    )
    shutdown_grace_seconds: Annotated[int, Field(ge=0)] = Field(
        default=30, description="on SIGTERM, how long running requests may take to finish"
    )
    upload_max_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=1024**3,
        description="largest uploaded file body, as sent and decompressed (PUT /v1/files); "
        "else 413",
    )
    upload_memory_bytes: Annotated[int, Field(ge=1024 * 1024)] = Field(
        default=64 * 1024 * 1024,
        description="memory all uploads in flight may hold their rows in; beyond it they "
        "wait in temporary files",
    )
    upload_group_rows: Annotated[int, Field(ge=1)] = Field(
        default=200_000,
        description="events one group commit writes at most; a file larger than this is "
        "committed alone",
    )
    upload_committers: Annotated[int, Field(ge=1, le=16)] = Field(
        default=2, description="group commits that may run at once (each holds a connection)"
    )
    upload_max_events: Annotated[int, Field(ge=1)] = Field(
        default=2_000_000,
        description="most events one uploaded file may hold (raw files hold 1,000-10,000); "
        "else 413",
    )
    upload_timeout: Annotated[float, Field(gt=0)] = Field(
        default=900.0,
        description="seconds a client has to send a whole upload body (besides "
        "stream_idle_timeout between its pieces); else 408",
    )
    cert_max_proxy_depth: Annotated[int, Field(ge=0, le=100)] = Field(
        default=5,
        description="most RFC 3820 proxy certificates a client certificate chain may hold "
        "before its end-entity certificate (0: proxies refused)",
    )
    cert_subject_header: str | None = Field(
        default=None,
        description="request header in which a reverse proxy that ended TLS names the "
        "verified client certificate's subject; believed only from the addresses in "
        "forwarded_allow_ips, ignored from anyone else",
    )

    @field_validator("read_database_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        # A URL may itself hold commas (several hosts): split only before a scheme.
        if isinstance(value, str):
            return [u.strip() for u in re.split(r",\s*(?=postgres(?:ql)?://)", value) if u.strip()]
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @property
    def worker_count(self) -> int:
        """Processes to serve with: one per CPU in production (one process runs one
        core's worth of Python), one in development (reload, debugging, tests)."""
        if self.workers is not None:
            return self.workers
        return (os.cpu_count() or 1) if self.mode is Mode.PRODUCTION else 1

    @property
    def auth_enabled(self) -> bool:
        if self.auth_required is not None:
            return self.auth_required
        return self.mode == Mode.PRODUCTION

    @property
    def json_logs(self) -> bool:
        if self.log_format is not None:
            return self.log_format == "json"
        return self.mode == Mode.PRODUCTION

    @property
    def oidc_enabled(self) -> bool:
        return self.oidc_jwks_url is not None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        oidc = (self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url)
        if any(oidc) and not all(oidc):
            raise ValueError("oidc_issuer, oidc_audience and oidc_jwks_url go together")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together")
        for scopes in self.oidc_scope_map.values():
            if not set(scopes) <= {"read", "write", "admin"}:
                raise ValueError("oidc_scope_map maps to the scopes read, write and admin")
        if self.oidc_jwks_url is not None:
            scheme = self.oidc_jwks_url.split(":", 1)[0].lower()
            if scheme != "https" and not (scheme == "http" and self.oidc_allow_http_jwks):
                raise ValueError(
                    "oidc_jwks_url must be an https URL (EVENTINDEX_OIDC_ALLOW_HTTP_JWKS=true "
                    "allows http for a test provider)"
                )
        self._open_service_allowed()
        self._subject_header_trusted()
        return self._pool_sizes()

    def _subject_header_trusted(self) -> None:
        if self.cert_subject_header is None:
            return
        if not re.fullmatch(r"[A-Za-z0-9-]{1,100}", self.cert_subject_header):
            raise ValueError("cert_subject_header must be a header name (letters, digits, -)")
        if self.cert_subject_header.lower() in ("authorization", "x-forwarded-for", "host"):
            raise ValueError(f"cert_subject_header cannot be {self.cert_subject_header!r}")
        proxies = [p.strip() for p in self.forwarded_allow_ips.split(",") if p.strip()]
        if not proxies:
            raise ValueError(
                "cert_subject_header needs EVENTINDEX_FORWARDED_ALLOW_IPS: the header is "
                "believed only from the reverse proxies listed there"
            )
        if "*" in proxies:
            raise ValueError(
                "cert_subject_header with EVENTINDEX_FORWARDED_ALLOW_IPS='*' would let anyone "
                "claim any certificate subject: list the proxies' addresses"
            )

    def _open_service_allowed(self) -> None:
        if self.auth_enabled or self.allow_open_service:
            return
        if self.mode == Mode.PRODUCTION:
            raise ValueError(
                "production mode with authentication off would serve everyone: unset "
                "EVENTINDEX_AUTH_REQUIRED, or set EVENTINDEX_ALLOW_OPEN_SERVICE=true if an "
                "open service is really wanted"
            )
        for origin in self.cors_origins:
            if not is_loopback_host(urlsplit(origin).hostname or ""):
                raise ValueError(
                    f"EVENTINDEX_CORS_ORIGINS {origin!r} would let that site's pages read a "
                    f"service without authentication; list only http://localhost origins, or "
                    f"turn authentication on"
                )
        if not is_loopback_listener(self.host):
            raise ValueError(
                f"EVENTINDEX_HOST {self.host!r} is a network address, and without "
                f"authentication the service serves only this machine (use 127.0.0.1, "
                f"production mode, or EVENTINDEX_ALLOW_OPEN_SERVICE=true for an open "
                f"network service)"
            )

    @property
    def loopback_only(self) -> bool:
        """An open service answers only requests addressed to this machine."""
        return not self.auth_enabled and not self.allow_open_service

    def open_surfaces(self) -> list[str]:
        """What this configuration leaves open to anyone who reaches it, one line each."""
        surfaces = []
        if not self.auth_enabled:
            surfaces.append(
                "authentication is off: anyone who reaches the service may read the catalogue"
            )
        if self.docs_enabled:
            surfaces.append(
                "the API documentation (/docs, /openapi.json) is served to anyone "
                "(EVENTINDEX_DOCS_ENABLED=false turns it off)"
            )
        if self.metrics_enabled and self.metrics_token is None:
            surfaces.append(
                "/metrics is served without a token (set EVENTINDEX_METRICS_TOKEN, or "
                "EVENTINDEX_METRICS_ENABLED=false)"
            )
        return surfaces

    def _pool_sizes(self) -> Settings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        if self.stream_connections > self.pool_max_size:
            raise ValueError("stream_connections must not exceed pool_max_size")
        return self


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or address as a Host header or an origin has it, without a
    port) names this machine's loopback: ``localhost``, ``*.localhost`` (which browsers
    resolve to loopback themselves), 127.0.0.0/8, ``[::1]``."""
    name = host.lower()
    name = name[:-1] if name.endswith(".") else name
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name == "localhost" or name.endswith(".localhost") or _loopback_address(name)


def is_loopback_listener(host: str) -> bool:
    """Whether the service listening on ``host`` is reachable from this machine only: a
    loopback address, or ``localhost`` (other names are resolved through DNS)."""
    return host == "localhost" or _loopback_address(host)


@functools.lru_cache(maxsize=256)  # asked of every request's Host header in development
def _loopback_address(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad setting by its environment variable."""
    parts = []
    for err in exc.errors():
        loc = "_".join(str(p) for p in err["loc"]).upper()
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"EVENTINDEX_{loc}: {message}" if loc else message)
    return "invalid settings: " + "; ".join(parts)
