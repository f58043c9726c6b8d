"""The server's TLS: its context (client certificates, RFC 3820 proxies), and what each
connection's TLS tells the application, as the ASGI ``tls`` extension.

Python's ``ssl`` verifies a client's chain in the handshake and has no verification callback,
so what it refuses never reaches the application (a certificate of another CA is a TLS alert,
not an HTTP answer). Two flags move decisions to where they can be answered in HTTP:

- ``VERIFY_ALLOW_PROXY_CERTS``: OpenSSL verifies RFC 3820 proxy chains (signatures, the
  proxy naming rule, path length constraints) instead of refusing them;
- ``X509_V_FLAG_NO_CHECK_TIME``: OpenSSL does not check validity times; the application
  checks every certificate of the chain at every request (``certs.ClientChain.problem``),
  which also refuses a proxy that expires while its connection is open, and answers an
  expired proxy with a 401 that says so rather than an opaque alert.

The identity of a proxy's holder is in the chain, not in the leaf, so the application needs
the verified chain: ``SSLObject.get_verified_chain()`` from Python 3.13, the same method of
the underlying ``_ssl`` object on 3.11 and 3.12. A resumed TLS session has no chain (OpenSSL
keeps only the leaf), so the server issues no TLS 1.3 tickets, and for TLS 1.2 sessions
resumed by id the chain of a full handshake is recalled by the leaf (``ChainMemory``).
"""

from __future__ import annotations

import _ssl
import hashlib
import os
import ssl
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cryptography import x509

from eventindex.certs import subject_dn

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (1.1.0 and later); Python has no name for it.
X509_V_FLAG_NO_CHECK_TIME = 0x200000

# The scope key of the connected peer's (host, port), which the server's protocol sets: the
# proxy's address behind a proxy, where uvicorn's scope["client"] is the forwarded client's.
PEER_KEY = "eventindex.peer"

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def server_context(
    config: Any, default: Callable[[], ssl.SSLContext], *, ca: str | None, required: bool
) -> ssl.SSLContext:
    """uvicorn's ``ssl_context_factory``: its context for the server's certificate, and, with
    ``ca`` (a bundle file, or a directory of hashed CA certificates such as
    ``/etc/grid-security/certificates``), client certificates verified against it."""
    context = default()
    if ca is None:
        return context
    if os.path.isdir(ca):
        context.load_verify_locations(capath=ca)
    else:
        context.load_verify_locations(cafile=ca)
    context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    context.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS | X509_V_FLAG_NO_CHECK_TIME
    # A resumed session carries no chain to read the identity from (module docstring).
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    return context


class ChainMemory:
    """Verified chains by their leaf certificate, for TLS 1.2 sessions resumed by id (which
    OpenSSL only resumes for a client that completed a verified handshake with this
    process, within its session timeout). Bounded: past ``size`` the oldest is forgotten,
    and a client resuming a forgotten session is asked to connect again."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._chains: OrderedDict[bytes, tuple[str, ...]] = OrderedDict()

    def remember(self, leaf: bytes, chain: tuple[str, ...]) -> None:
        key = hashlib.sha256(leaf).digest()
        self._chains[key] = chain
        self._chains.move_to_end(key)
        while len(self._chains) > self.size:
            self._chains.popitem(last=False)

    def recall(self, leaf: bytes) -> tuple[str, ...] | None:
        key = hashlib.sha256(leaf).digest()
        chain = self._chains.get(key)
        if chain is not None:
            self._chains.move_to_end(key)
        return chain


def connection_tls(ssl_object: Any, memory: ChainMemory) -> dict[str, object]:
    """The ASGI ``tls`` extension of a connection. ``client_cert_chain`` is the chain as
    verified (the client's certificate first, the trust anchor last), in PEM."""
    info: dict[str, object] = {
        "server_cert": None,
        "client_cert_chain": [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": None,
    }
    leaf = ssl_object.getpeercert(binary_form=True)
    if not leaf:
        return info
    chain = tuple(ssl.DER_cert_to_PEM_cert(der) for der in _verified_chain(ssl_object))
    if chain:
        memory.remember(leaf, chain)
    else:
        recalled = memory.recall(leaf)
        if recalled is None:
            info["client_cert_error"] = (
                "This TLS session was resumed and its certificate chain is no longer known "
                "here; connect again without resuming the session."
            )
            return info
        chain = recalled
    info["client_cert_chain"] = list(chain)
    try:
        info["client_cert_name"] = subject_dn(x509.load_der_x509_certificate(leaf).subject)
    except ValueError:
        info["client_cert_error"] = "The client's certificate cannot be read."
    return info


def _verified_chain(ssl_object: Any) -> list[bytes]:
    public = getattr(ssl_object, "get_verified_chain", None)
    if public is not None:  # Python 3.13 and later: DER bytes
        return list(public() or [])
    certificates = ssl_object._sslobj.get_verified_chain() or []
    return [c.public_bytes(_ssl.ENCODING_DER) for c in certificates]
