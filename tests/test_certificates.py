"""Certificate subjects, verified chains and the client's TLS files, without a server (the
real-server tests are in test_certificate_auth.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from pydantic import ValidationError

from eventindex import certs, clienttls
from eventindex.config import Settings
from tests.support.grid import INDEPENDENT, LIMITED, TestCA, dn

ALICE = dn(("C", "RU"), ("O", "JINR"), ("OU", "LIT"), ("CN", "Alice Alexeeva"))
ALICE_DN = "CN=Alice Alexeeva,OU=LIT,O=JINR,C=RU"


# --- subjects ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "CN=Alice Alexeeva,OU=LIT,O=JINR,C=RU",
        "CN=Alice Alexeeva, OU=LIT, O=JINR, C=RU",  # as people type it (RFC 1779)
        "cn=Alice Alexeeva,ou=LIT,o=JINR,c=RU",  # attribute types are case-insensitive
        "/C=RU/O=JINR/OU=LIT/CN=Alice Alexeeva",  # OpenSSL's slash form, most general first
        "subject=/C=RU/O=JINR/OU=LIT/CN=Alice Alexeeva",  # pasted with openssl's label
        "  /C=RU/O=JINR/OU=LIT/CN=Alice Alexeeva\n",
        "2.5.4.3=Alice Alexeeva,2.5.4.11=LIT,2.5.4.10=JINR,2.5.4.6=RU",  # dotted OIDs
    ],
)
def test_both_forms_read_to_one_subject(written: str) -> None:
    assert certs.canonical_dn(written) == ALICE_DN
    # ...which is the certificate's own subject, read from a real certificate.
    assert certs.subject_dn(ALICE) == ALICE_DN


def test_values_keep_their_case_and_specials() -> None:
    assert certs.canonical_dn("CN=alice alexeeva,O=JINR") != certs.canonical_dn(
        "CN=Alice Alexeeva,O=JINR"
    )
    # A slash inside a value (grid host and service certificates) stays in the value.
    assert certs.canonical_dn("/DC=ru/DC=jinr/CN=host/eventindex.jinr.ru") == (
        "CN=host/eventindex.jinr.ru,DC=jinr,DC=ru"
    )
    # Commas and pluses are escaped; escapes and UTF-8 hex pairs are read back.
    assert certs.canonical_dn(r"CN=Ivanov\, Ivan,O=JINR") == r"CN=Ivanov\, Ivan,O=JINR"
    assert certs.canonical_dn(r"CN=Caf\C3\A9,O=X") == "CN=Café,O=X"
    assert certs.canonical_dn(r"/O=X/CN=Caf\xC3\xA9") == "CN=Café,O=X"
    assert certs.canonical_dn("/O=X/CN=a+UID=b") == certs.canonical_dn("CN=a+UID=b,O=X")
    assert certs.canonical_dn("/O=X/emailAddress=a@b.ru") == "emailAddress=a@b.ru,O=X"
    assert certs.canonical_dn("/O=X/CN=#1") == certs.canonical_dn(r"CN=\#1,O=X")
    assert certs.canonical_dn("/O=X/CN=#1") == r"CN=\#1,O=X"
    assert certs.canonical_dn(r"CN=a\ ,O=X") == r"CN=a\ ,O=X"  # an escaped trailing space
    assert certs.canonical_dn("/O=X/E=a@b.ru") == "emailAddress=a@b.ru,O=X"
    subject = dn(("O", "X"), ("CN", "Ivanov, Ivan+1 <x>"), ("emailAddress", "a@b.ru"))
    assert certs.subject_dn(subject) == (r"emailAddress=a@b.ru,CN=Ivanov\, Ivan\+1 \<x\>,O=X")
    assert certs.canonical_dn(certs.subject_dn(subject)) == certs.subject_dn(subject)


@pytest.mark.parametrize(
    ("written", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("C = RU, O = JINR, CN = Alice", "-nameopt RFC2253"),
        ("Alice Alexeeva", "no '='"),
        ("CN=Alice,", "separator"),
        ("CN=Alice,,O=JINR", "no '='"),
        ("XX=1,O=JINR", "unknown attribute type 'XX'"),
        ("/C=RU/FOO=bar", "unknown attribute type 'FOO'"),
        ("CN=", "empty"),
        ("/C=RU/CN=", "empty"),
        ("CN=#04024869", "BER"),
        ("CN=a;b", "must be escaped"),
        (r"CN=\FF\FE", "UTF-8"),
        ("CN=abc\\", "backslash"),
        ("CN=" + "x" * 1100, "longer than 1024"),
    ],
)
def test_unreadable_subjects_say_why(written: str, says: str) -> None:
    with pytest.raises(certs.CertificateError, match=None) as caught:
        certs.canonical_dn(written)
    assert says in str(caught.value)


# --- chains -----------------------------------------------------------------------------------


def pems(*chain: x509.Certificate) -> tuple[str, ...]:
    from cryptography.hazmat.primitives import serialization

    return tuple(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain)


def test_a_proxy_chain_is_its_end_entity() -> None:
    ca = TestCA()
    alice = ca.user(ALICE)
    proxy = ca.proxy(alice)
    second = ca.proxy(proxy)
    for chain, proxies in (
        ((alice.cert, ca.cert), 0),
        ((proxy.cert, alice.cert, ca.cert), 1),
        ((second.cert, proxy.cert, alice.cert, ca.cert), 2),
    ):
        read = certs.read_chain(pems(*chain))
        assert (read.subject, read.proxies) == (ALICE_DN, proxies)
        assert read.problem(ca.now, max_proxies=2) is None
    deep = certs.read_chain(pems(second.cert, proxy.cert, alice.cert, ca.cert))
    assert "2 proxy certificates" in (deep.problem(ca.now, max_proxies=1) or "")
    assert "does not accept proxy" in (deep.problem(ca.now, max_proxies=0) or "")
    # A limited proxy hands on its issuer's rights for what EventIndex does.
    limited = ca.proxy(alice, policy=LIMITED)
    assert certs.read_chain(pems(limited.cert, alice.cert, ca.cert)).problem(ca.now, 5) is None


def test_expired_and_rightless_proxies_identify_nobody() -> None:
    ca = TestCA()
    alice = ca.user(ALICE)
    expired = certs.read_chain(pems(ca.proxy(alice, expired=True).cert, alice.cert, ca.cert))
    assert "the proxy certificate expired at" in (expired.problem(ca.now, 5) or "")
    independent = ca.proxy(alice, policy=INDEPENDENT)
    refused = certs.read_chain(pems(independent.cert, alice.cert, ca.cert))
    assert "1.3.6.1.5.5.7.21.2" in (refused.problem(ca.now, 5) or "")
    # An end-entity certificate that expires while its connection is open: checked per request.
    short = ca.user(ALICE, valid_for=dt.timedelta(minutes=10))
    chain = certs.read_chain(pems(short.cert, ca.cert))
    assert chain.problem(ca.now, 5) is None
    later = ca.now + dt.timedelta(minutes=11)
    assert f"the certificate of '{ALICE_DN}' expired" in (chain.problem(later, 5) or "")
    # The CA's own certificate counts too (it ends after two days, the user's after five).
    outliving = certs.read_chain(pems(ca.user(ALICE, dt.timedelta(days=5)).cert, ca.cert))
    assert "the CA certificate" in (outliving.problem(ca.now + dt.timedelta(days=3), 5) or "")
    assert "not valid yet" in (chain.problem(ca.now - dt.timedelta(days=1), 5) or "")
    # A CA certificate is nobody, even when a client could present it.
    ca_alone = certs.read_chain(pems(ca.cert))
    assert ca_alone.subject is None
    assert ca_alone.problem(ca.now, 5) is not None


def test_proxy_path_length_field_is_skipped_when_reading_the_policy() -> None:
    ca = TestCA()
    alice = ca.user(ALICE)
    proxy = ca.proxy(alice, path_length=3)
    assert certs.read_chain(pems(proxy.cert, alice.cert, ca.cert)).problem(ca.now, 5) is None


# --- settings ---------------------------------------------------------------------------------


def test_the_subject_header_is_believed_only_from_listed_proxies() -> None:
    base: dict[str, Any] = {"database_url": "postgresql://x@127.0.0.1/x", "mode": "production"}
    with pytest.raises(ValidationError, match="needs EVENTINDEX_FORWARDED_ALLOW_IPS"):
        Settings(**base, cert_subject_header="X-SSL-Client-S-DN")
    with pytest.raises(ValidationError, match="anyone claim any certificate subject"):
        Settings(**base, cert_subject_header="X-SSL-Client-S-DN", forwarded_allow_ips="*")
    with pytest.raises(ValidationError, match="header name"):
        Settings(**base, cert_subject_header="X SSL", forwarded_allow_ips="127.0.0.1")
    with pytest.raises(ValidationError, match="cannot be"):
        Settings(**base, cert_subject_header="Authorization", forwarded_allow_ips="127.0.0.1")
    ok = Settings(**base, cert_subject_header="X-SSL-Client-S-DN", forwarded_allow_ips="10.0.0.5")
    assert ok.cert_subject_header == "X-SSL-Client-S-DN"
    assert Settings(**base).cert_max_proxy_depth == 5


# --- the client's files -----------------------------------------------------------------------


def arguments(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    clienttls.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_options_come_before_the_grid_environment() -> None:
    env = {
        "X509_USER_PROXY": "/tmp/x509up_u1000",
        "X509_USER_CERT": "/home/u/.globus/usercert.pem",
        "X509_USER_KEY": "/home/u/.globus/userkey.pem",
        "X509_CERT_DIR": "/etc/grid-security/certificates",
    }
    assert clienttls.from_arguments(arguments(), env) == clienttls.TlsFiles(
        cert="/tmp/x509up_u1000", extra_ca_dir="/etc/grid-security/certificates"
    )
    without_proxy = {k: v for k, v in env.items() if k != "X509_USER_PROXY"}
    assert clienttls.from_arguments(arguments(), without_proxy) == clienttls.TlsFiles(
        cert="/home/u/.globus/usercert.pem",
        key="/home/u/.globus/userkey.pem",
        extra_ca_dir="/etc/grid-security/certificates",
    )
    given = arguments("--cert", "c.pem", "--key", "k.pem", "--ca", "ca.pem")
    assert clienttls.from_arguments(given, env) == clienttls.TlsFiles("c.pem", "k.pem", "ca.pem")
    assert clienttls.from_arguments(arguments(), {}) == clienttls.TlsFiles()
    assert clienttls.TlsFiles().context() is None  # httpx's own defaults


def test_the_client_context_presents_the_proxy_and_trusts_the_ca(tmp_path: Path) -> None:
    ca = TestCA()
    ca_file = ca.write(tmp_path)
    alice = ca.user(ALICE)
    proxy_file = ca.proxy(alice).write_proxy(tmp_path, "x509up_u1000")
    context = clienttls.ssl_context(cert=proxy_file, ca=ca_file)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in context.get_ca_certs()] == [
        (
            (("countryName", "RU"),),
            (("organizationName", "Test Grid"),),
            (("commonName", "EventIndex Test Grid CA"),),
        )
    ]
    cert, key = alice.write_pair(tmp_path, "usercert")
    clienttls.ssl_context(cert=cert, key=key, ca=tmp_path)  # a CA directory
    for files, says in (
        ({"cert": tmp_path / "missing.pem"}, "missing.pem: no such file"),
        ({"cert": cert}, "not a usable certificate and key"),  # the key is elsewhere
        ({"cert": cert, "key": proxy_file}, "not a usable certificate and key"),
        ({"key": key}, "without a certificate"),
        ({"ca": tmp_path / "nowhere"}, "no such CA file or directory"),
        ({"ca": key}, "not a PEM CA bundle"),
        ({"extra_ca_dir": tmp_path / "nowhere"}, "X509_CERT_DIR is not a directory"),
    ):
        with pytest.raises(clienttls.ClientTlsError) as caught:
            clienttls.ssl_context(**files)
        assert says in str(caught.value)


@pytest.mark.parametrize(
    ("scheme", "host", "origin", "another"),
    [
        ("https", "eventindex.jinr.ru", "https://eventindex.jinr.ru", False),
        ("https", "eventindex.jinr.ru:443", "https://EventIndex.jinr.ru", False),
        ("https", "eventindex.jinr.ru", "https://eventindex.jinr.ru:443", False),
        ("http", "127.0.0.1:8000", "http://127.0.0.1:8000", False),
        ("https", "eventindex.jinr.ru", "http://eventindex.jinr.ru", True),
        ("https", "eventindex.jinr.ru", "https://eventindex.jinr.ru.evil.example", True),
        ("https", "eventindex.jinr.ru", "null", True),
    ],
)
def test_the_origin_is_compared_with_the_service_s_own(
    scheme: str, host: str, origin: str, another: bool
) -> None:
    from eventindex.middleware.clientcert import _from_another_site

    scope = {"scheme": scheme, "headers": [(b"host", host.encode()), (b"origin", origin.encode())]}
    assert _from_another_site(scope) is another
