"""The client side of TLS: a certificate (or grid proxy) to present and the CAs to trust, for
``EventIndexClient`` and every command that talks to the service (``eventindex pick``, ...).

    ssl_context(cert="/tmp/x509up_u1000")                  # a grid proxy: cert, key, chain
    ssl_context(cert="usercert.pem", key="userkey.pem", ca="/etc/grid-security/certificates")

A command adds the options with :func:`add_arguments` and reads them back, with the grid's
environment variables, with :func:`from_arguments`:

- ``--cert FILE`` (PEM; with ``--key FILE`` unless the key is in the same file); without it
  ``X509_USER_PROXY`` (a proxy file: the proxy, its key, then the chain, as
  ``voms-proxy-init`` writes it), else ``X509_USER_CERT`` and ``X509_USER_KEY``;
- ``--ca FILE|DIR``: trust only these CAs (a bundle, or a directory of hashed certificates);
  without it the default CAs are trusted, plus the grid's CAs in ``X509_CERT_DIR`` when set.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx


class ClientTlsError(ValueError):
    """A certificate, key or CA that cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None
    extra_ca_dir: str | None = None  # X509_CERT_DIR: trusted besides the default CAs

    def context(self) -> ssl.SSLContext | None:
        """The context to connect with, or None for httpx's default (nothing was set)."""
        if self.cert is None and self.ca is None and self.extra_ca_dir is None:
            return None
        return ssl_context(self.cert, self.key, self.ca, self.extra_ca_dir)


def ssl_context(
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    ca: str | os.PathLike[str] | None = None,
    extra_ca_dir: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A client context that verifies the server (against ``ca`` only, when given; else
    httpx's default CAs plus ``extra_ca_dir``) and presents ``cert`` (with ``key``, or the
    key in the same file). A key protected by a pass phrase is asked for on the terminal."""
    if key is not None and cert is None:
        raise ClientTlsError("a key was given without a certificate (--cert)")
    if ca is not None:
        location = Path(ca)
        if location.is_dir():
            context = ssl.create_default_context(capath=str(location))
        elif location.is_file():
            try:
                context = ssl.create_default_context(cafile=str(location))
            except ssl.SSLError as exc:
                raise ClientTlsError(
                    f"{location}: not a PEM CA bundle ({exc.reason or exc})"
                ) from None
        else:
            raise ClientTlsError(f"{location}: no such CA file or directory")
    else:
        context = httpx.create_ssl_context()
        if extra_ca_dir is not None:
            if not Path(extra_ca_dir).is_dir():
                raise ClientTlsError(f"{extra_ca_dir}: X509_CERT_DIR is not a directory")
            context.load_verify_locations(capath=str(extra_ca_dir))
    if cert is not None:
        for path in (cert, key):
            if path is not None and not Path(path).is_file():
                raise ClientTlsError(f"{path}: no such file")
        try:
            context.load_cert_chain(str(cert), None if key is None else str(key))
        except ssl.SSLError as exc:
            what = f"{cert}" + (f" with key {key}" if key is not None else "")
            raise ClientTlsError(
                f"{what}: not a usable certificate and key ({exc.reason or exc})"
            ) from None
        except OSError as exc:
            raise ClientTlsError(f"{cert}: {exc.strerror or exc}") from None
    return context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cert",
        help="client certificate or grid proxy (PEM) to present (default: X509_USER_PROXY, "
        "else X509_USER_CERT)",
    )
    p.add_argument(
        "--key", help="the certificate's private key, if not in the same file (X509_USER_KEY)"
    )
    p.add_argument(
        "--ca",
        help="trust only these CAs: a PEM bundle or a directory of hashed certificates "
        "(default: the usual CAs, plus X509_CERT_DIR when set)",
    )


def from_arguments(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> TlsFiles:
    """The options of :func:`add_arguments`, completed from the grid's environment."""
    cert, key = args.cert, args.key
    if cert is None:
        if environ.get("X509_USER_PROXY"):
            cert, key = environ["X509_USER_PROXY"], None
        elif environ.get("X509_USER_CERT"):
            cert, key = environ["X509_USER_CERT"], environ.get("X509_USER_KEY") or key
    extra = None if args.ca is not None else (environ.get("X509_CERT_DIR") or None)
    return TlsFiles(cert=cert, key=key, ca=args.ca, extra_ca_dir=extra)
