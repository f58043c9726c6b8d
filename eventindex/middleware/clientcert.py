"""The client certificate a request presents: its subject for the authenticator, or a 401.

The subject comes from one of two places:

- the connection's verified chain (the ASGI ``tls`` extension, ``eventindex/tls.py``): the
  end-entity certificate's subject, behind any RFC 3820 proxies. A chain that may not be
  used now (a certificate in it expired or not yet valid, more proxies than
  ``max_proxies``, a proxy that inherits no rights) is refused with a 401 on every path, as
  the TLS handshake would have refused it;
- the header a trusted reverse proxy that ended TLS names it in (``subject_header``), only
  when the connection comes from an address in ``trusted`` (EVENTINDEX_FORWARDED_ALLOW_IPS):
  from anyone else the header is ignored, and logged. The connection's own address is the
  protocol's (``PEER_KEY``), not the client that uvicorn reads from ``X-Forwarded-For``;
  without it (another server) no header is trusted. A trusted proxy's header wins over the
  connection's own certificate, which is the proxy's.

A certificate is an ambient credential: a browser that holds one presents it to any page's
requests, as it sends cookies. So a request a browser marks as coming from another site's page
(``Sec-Fetch-Site`` other than ``same-origin`` or ``none``; without it, an ``Origin`` other than
the service's own) is not authenticated by its certificate: it is anonymous, and a page
elsewhere cannot act (map a certificate, close a dataset) with a visitor's certificate.
Command-line and grid clients send neither header. A bearer credential is never ambient.

Which principal a subject is (if any) is the authenticator's question (``auth.py``).
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from starlette.types import ASGIApp, Receive, Scope, Send

from eventindex.certs import CertificateError, canonical_dn, read_chain
from eventindex.problems import Problem
from eventindex.tls import PEER_KEY

CERTIFICATE_KEY = "eventindex.certificate"
CROSS_SITE_KEY = "eventindex.certificate_cross_site"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

log = logging.getLogger("eventindex.auth")


def trusted_networks(forwarded_allow_ips: str) -> list[IPNetwork]:
    """The proxies of EVENTINDEX_FORWARDED_ALLOW_IPS as networks ('*' and names are not
    networks: the settings refuse '*' beside a subject header)."""
    networks = []
    for item in forwarded_allow_ips.split(","):
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            continue
    return networks


def presents_certificate(scope: Scope) -> bool:
    """Whether the connection presented a client certificate (for the rate limit)."""
    tls = scope.get("extensions", {}).get("tls") or {}
    return bool(tls.get("client_cert_chain") or tls.get("client_cert_error"))


def certificate_subject(scope: Scope) -> str | None:
    """The canonical subject the request's certificate proves, once this middleware ran."""
    subject: str | None = scope.get(CERTIFICATE_KEY)
    return subject


def certificate_from_another_site(scope: Scope) -> bool:
    """Whether a certificate came with the request but was not used: another site's page."""
    return bool(scope.get(CROSS_SITE_KEY))


def _from_another_site(scope: Scope) -> bool:
    headers = {k: v for k, v in scope.get("headers", []) if k in (b"sec-fetch-site", b"origin")}
    site = headers.get(b"sec-fetch-site")
    if site is not None:
        return site.strip().lower() not in (b"same-origin", b"none")
    origin = headers.get(b"origin")
    if origin is None:
        return False
    host = next((v for k, v in scope.get("headers", []) if k == b"host"), b"")
    scheme = str(scope.get("scheme", "http"))
    return _origin(origin.decode("latin-1")) != _origin(f"{scheme}://{host.decode('latin-1')}")


def _origin(text: str) -> str:
    text = text.strip().lower()
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if text.startswith(scheme) and text.endswith(port):
            return text[: -len(port)]
    return text


def _refused(detail: str) -> Problem:
    return Problem(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="eventindex", error="invalid_token"'},
    )


class ClientCertificates:
    def __init__(
        self,
        app: ASGIApp,
        max_proxies: int,
        subject_header: str | None = None,
        trusted: Sequence[IPNetwork] = (),
    ) -> None:
        self.app = app
        self.max_proxies = max_proxies
        self.header = subject_header.lower().encode("latin-1") if subject_header else None
        self.trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            subject = self._forwarded(scope) or self._presented(scope)
        except Problem as problem:
            client = scope.get("client")
            log.warning(
                "authentication failed from %s: %s", client[0] if client else "?", problem.detail
            )
            await problem.response(scope["path"])(scope, receive, send)
            return
        if subject is not None:
            if _from_another_site(scope):
                scope = {**scope, CROSS_SITE_KEY: True}
            else:
                scope = {**scope, CERTIFICATE_KEY: subject}
        await self.app(scope, receive, send)

    def _presented(self, scope: Scope) -> str | None:
        tls = scope.get("extensions", {}).get("tls") or {}
        error = tls.get("client_cert_error")
        if error:
            raise _refused(str(error))
        chain = tls.get("client_cert_chain")
        if not chain:
            return None
        verified = read_chain(tuple(chain))
        problem = verified.problem(datetime.now(UTC), self.max_proxies)
        if problem is not None:
            raise _refused(problem)
        return verified.subject

    def _forwarded(self, scope: Scope) -> str | None:
        if self.header is None:
            return None
        values = [v for k, v in scope.get("headers", []) if k == self.header]
        if not values:
            return None
        peer = scope.get(PEER_KEY)
        if not self._trusts(peer[0] if peer else None):
            log.warning(
                "ignored the %s header from %s, which is not a trusted proxy "
                "(EVENTINDEX_FORWARDED_ALLOW_IPS)",
                self.header.decode("latin-1"),
                peer[0] if peer else "an unknown peer",
            )
            return None
        if len(values) > 1:
            raise _refused("The trusted proxy sent the certificate subject header twice.")
        text = values[0].decode("utf-8", errors="replace").strip()
        if not text:
            return None
        try:
            return canonical_dn(text)
        except CertificateError as exc:
            raise _refused(
                f"The trusted proxy's certificate subject cannot be read: {exc}."
            ) from None

    def _trusts(self, host: str | None) -> bool:
        try:
            address = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted)
