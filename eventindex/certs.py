"""Certificate principals: X.509 subjects mapped to names and scopes, and who a client's
verified certificate chain says it is.

A subject is a distinguished name (DN). Administrators write it in either of the forms people
copy: RFC 4514 (``CN=Ivan Ivanov,O=JINR,C=RU``, most specific first, as ``openssl x509
-nameopt RFC2253`` and nginx print it) or OpenSSL's slash form (``/C=RU/O=JINR/CN=Ivan
Ivanov``, as grid tools and ``openssl x509 -nameopt compat`` print it). Both are read into one
canonical RFC 4514 string, the form stored and compared: attribute types by their short names
(or dotted OIDs), values exactly as issued (case included), specials escaped one way.

A client's identity is the subject of its end-entity certificate: the first certificate of
the verified chain that is not an RFC 3820 proxy. A proxy's own subject (its issuer's plus
``CN=<serial>``) never identifies anyone. The TLS layer has verified the chain's signatures,
proxy rules and trust; validity times are checked here, per request (see ``tls.py``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from eventindex.db import Connection
from eventindex.tokens import NAME_PATTERN, SCOPES

# --- SQL (bound parameters only; tests/test_sql_safety.py) ---

ADD_MAPPING = """
INSERT INTO certificate_principals (name, dn, scopes, expires_at)
VALUES ($1, $2, $3, $4)
RETURNING name, dn, scopes, created_at, expires_at
"""

# The mapping of a subject if it may be used now; marks it used (at most once a minute).
USE_MAPPING = """
WITH found AS (
    SELECT id, name, scopes, last_used_at FROM certificate_principals
    WHERE dn = $1 AND revoked_at IS NULL
      AND (expires_at IS NULL OR expires_at > now())
), touched AS (
    UPDATE certificate_principals AS c SET last_used_at = now()
    FROM found AS f
    WHERE c.id = f.id AND (f.last_used_at IS NULL OR f.last_used_at < now() - interval '1 minute')
)
SELECT name, scopes FROM found
"""

LIST_MAPPINGS = """
SELECT name, dn, scopes, created_at, expires_at, last_used_at, revoked_at,
       CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
            WHEN expires_at <= now() THEN 'expired'
            ELSE 'active' END AS state
FROM certificate_principals ORDER BY name
"""

REVOKE_MAPPING = """
UPDATE certificate_principals SET revoked_at = now()
WHERE name = $1 AND revoked_at IS NULL RETURNING name
"""

MAPPED_NAME = "SELECT name FROM certificate_principals WHERE dn = $1 AND revoked_at IS NULL"


MAX_DN_LENGTH = 1024

# RFC 3820 ProxyCertInfo, and the proxy policy languages that hand the issuer's rights on:
# inheritAll (RFC 3820) and Globus's "limited proxy" (rights for data access, not for
# starting jobs elsewhere, which EventIndex does not do). ``independent`` proxies inherit no
# rights, and a policy in an unknown language cannot be honoured: both identify nobody.
PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
_INHERITING_POLICIES = {
    "1.3.6.1.5.5.7.21.1": "inheritAll",
    "1.3.6.1.4.1.3536.1.1.1.9": "limited",
}

# Attribute types by name, for reading DNs (case-insensitive) and writing them (the first
# name of each OID). RFC 4514 names first, then those common in grid subjects.
_TYPES: tuple[tuple[str, str], ...] = (
    ("CN", "2.5.4.3"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("C", "2.5.4.6"),
    ("STREET", "2.5.4.9"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("emailAddress", "1.2.840.113549.1.9.1"),
    ("E", "1.2.840.113549.1.9.1"),
    ("Email", "1.2.840.113549.1.9.1"),
    ("serialNumber", "2.5.4.5"),
    ("SN", "2.5.4.4"),
    ("GN", "2.5.4.42"),
    ("givenName", "2.5.4.42"),
    ("surname", "2.5.4.4"),
    ("title", "2.5.4.12"),
    ("initials", "2.5.4.43"),
    ("pseudonym", "2.5.4.65"),
    ("generationQualifier", "2.5.4.44"),
    ("dnQualifier", "2.5.4.46"),
    ("postalCode", "2.5.4.17"),
    ("name", "2.5.4.41"),
    ("userId", "0.9.2342.19200300.100.1.1"),
)
_OID_BY_NAME = {name.lower(): oid for name, oid in _TYPES}
_NAME_BY_OID = {oid: name for name, oid in reversed(_TYPES)}  # the first name of each
_DOTTED = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_SLASH_SPLIT = re.compile(r"/(?=[A-Za-z][A-Za-z0-9.-]*=)")
_SLASH_PLUS = re.compile(r"\+(?=[A-Za-z][A-Za-z0-9.-]*=)")
_ONELINE = re.compile(r"^[A-Za-z][A-Za-z0-9.-]* = ")


class CertificateError(ValueError):
    """A subject or a mapping request that cannot be used (say what and where)."""


class MappingExists(CertificateError):
    pass


Rdn = list[tuple[str, str]]  # (OID, value) pairs of one relative distinguished name


def canonical_dn(text: str) -> str:
    """The canonical RFC 4514 form of a DN written in RFC 4514 or OpenSSL's slash form."""
    text = text.strip()
    if text.startswith("subject="):
        text = text.removeprefix("subject=").strip()
    if not text:
        raise CertificateError("the subject is empty")
    if text.startswith("/"):
        rdns = _read_slash(text)
    elif _ONELINE.match(text):
        raise CertificateError(
            "this looks like OpenSSL's default output ('C = RU, O = ...'), which is "
            "ambiguous; print the subject with 'openssl x509 -noout -subject -nameopt "
            "RFC2253' (or '-nameopt compat' for the /C=.../CN=... form)"
        )
    else:
        rdns = list(reversed(_read_rfc4514(text)))
    dn = _write(rdns)
    if len(dn) > MAX_DN_LENGTH:
        raise CertificateError(f"the subject is longer than {MAX_DN_LENGTH} characters")
    return dn


def subject_dn(name: x509.Name) -> str:
    """The canonical form of a certificate's subject (or issuer)."""
    rdns = []
    for rdn in name.rdns:
        rdns.append([(a.oid.dotted_string, _value(a.value)) for a in rdn])
    return _write(rdns)


def _value(value: str | bytes) -> str:
    # Bit-string attributes (x500UniqueIdentifier) are not text: their bytes in hex after a
    # '#' (escaped on writing like any leading '#', so that they match only themselves).
    return value if isinstance(value, str) else "#" + value.hex()


def _write(rdns: Sequence[Rdn]) -> str:
    """RFC 4514: the most specific RDN first; the attributes of a multi-valued RDN sorted."""
    parts = []
    for rdn in reversed(rdns):
        attributes = sorted(f"{_NAME_BY_OID.get(oid, oid)}={_escape(v)}" for oid, v in rdn)
        parts.append("+".join(attributes))
    return ",".join(parts)


def _escape(value: str) -> str:
    out = []
    for ch in value:
        if ch in ',+"\\<>;':
            out.append("\\" + ch)
        elif ch == "\x00":
            out.append("\\00")
        else:
            out.append(ch)
    text = "".join(out)
    if text.startswith((" ", "#")):
        text = "\\" + text
    if text.endswith(" ") and not text.endswith("\\ "):
        text = text[:-1] + "\\ "
    return text


def _oid(name: str, where: str) -> str:
    oid = _OID_BY_NAME.get(name.strip().lower())
    if oid is not None:
        return oid
    if _DOTTED.match(name.strip()):
        return name.strip()
    raise CertificateError(f"unknown attribute type {name.strip()!r} in {where}")


def _read_slash(text: str) -> list[Rdn]:
    """``/C=RU/O=JINR/CN=host/name.jinr.ru``: a slash starts an RDN only before ``type=``,
    so values may hold slashes; ``\\xHH`` (how OpenSSL writes bytes outside ASCII) are
    UTF-8 bytes."""
    rdns: list[Rdn] = []
    for part in _SLASH_SPLIT.split(text[1:]):
        rdn: Rdn = []
        for attribute in _SLASH_PLUS.split(part):
            name, sep, raw = attribute.partition("=")
            if not sep or not name:
                raise CertificateError(f"{attribute!r} is not TYPE=VALUE")
            value = _slash_value(raw, attribute)
            rdn.append((_oid(name, repr(attribute)), value))
        rdns.append(rdn)
    return rdns


def _slash_value(raw: str, where: str) -> str:
    data = bytearray()
    i = 0
    while i < len(raw):
        if raw.startswith("\\x", i) and re.fullmatch(r"[0-9A-Fa-f]{2}", raw[i + 2 : i + 4]):
            data.append(int(raw[i + 2 : i + 4], 16))
            i += 4
        else:
            data += raw[i].encode()
            i += 1
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CertificateError(f"{where!r}: the escaped bytes are not UTF-8") from None
    if not value:
        raise CertificateError(f"{where!r} has an empty value")
    return value


def _read_rfc4514(text: str) -> list[Rdn]:
    """RFC 4514 (most specific first), with hex-pair and character escapes; spaces after a
    separating comma (RFC 1779 style, as people type) are allowed."""
    rdns: list[Rdn] = []
    rdn: Rdn = []
    i, n = 0, len(text)
    while True:
        start = i
        while i < n and text[i] != "=":
            if text[i] in ",+":
                raise CertificateError(f"{text[start : i + 1]!r} in the subject has no '='")
            i += 1
        if i >= n:
            raise CertificateError(f"{text[start:]!r} in the subject has no '='")
        oid = _oid(text[start:i], repr(text[start : i + 1]))
        i += 1
        value, i = _rfc4514_value(text, i)
        rdn.append((oid, value))
        if i >= n:
            rdns.append(rdn)
            return rdns
        separator = text[i]
        i += 1
        if separator == ",":
            rdns.append(rdn)
            rdn = []
            while i < n and text[i] == " ":
                i += 1
        if i >= n:
            raise CertificateError("the subject ends with a separator")


def _rfc4514_value(text: str, i: int) -> tuple[str, int]:
    if text.startswith("#", i):
        raise CertificateError("BER-encoded (#...) attribute values are not supported")
    data = bytearray()
    n = len(text)
    while i < n and text[i] not in ",+":
        ch = text[i]
        if ch == "\\":
            pair = text[i + 1 : i + 3]
            if re.fullmatch(r"[0-9A-Fa-f]{2}", pair):
                data.append(int(pair, 16))
                i += 3
                continue
            if i + 1 >= n:
                raise CertificateError("the subject ends with a lone backslash")
            data += text[i + 1].encode()
            i += 2
            continue
        if ch in '"<>;':
            raise CertificateError(f"{ch!r} must be escaped in an RFC 4514 subject")
        data += ch.encode()
        i += 1
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CertificateError("the subject's escaped bytes are not UTF-8") from None
    if not value:
        raise CertificateError("the subject has an empty attribute value")
    return value, i


# --- what a verified chain says ---------------------------------------------------------------


@dataclass(frozen=True)
class Validity:
    what: str
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True)
class ClientChain:
    """A verified client chain, read once: whose it is, how many proxies stand before the
    end-entity certificate, the validity of each certificate (checked at each request, since
    a connection may outlive a proxy), and a reason it identifies nobody, if there is one."""

    subject: str | None
    proxies: int
    validity: tuple[Validity, ...]
    refusal: str | None = None

    def problem(self, now: datetime, max_proxies: int) -> str | None:
        """Why this chain may not be used now, or None."""
        if self.refusal is not None:
            return self.refusal
        if self.proxies > max_proxies:
            if max_proxies == 0:
                return "This service does not accept proxy certificates."
            return (
                f"The client's certificate chain holds {self.proxies} proxy certificates; "
                f"this service accepts at most {max_proxies}."
            )
        for v in self.validity:
            if now > v.not_after:
                hint = " (make a new proxy)" if v.what.startswith("the proxy") else ""
                return f"The client's certificate chain is expired: {v.what} expired at " + (
                    f"{v.not_after.isoformat()}{hint}."
                )
            if now < v.not_before:
                return (
                    f"The client's certificate chain is not valid yet: {v.what} is valid "
                    f"from {v.not_before.isoformat()}."
                )
        return None


@functools.lru_cache(maxsize=512)
def read_chain(pems: tuple[str, ...]) -> ClientChain:
    """The chain as the TLS layer verified it: the client's certificate first, the trust
    anchor last. Cached: a connection sends many requests, and clients come back."""
    try:
        certs = [x509.load_pem_x509_certificate(p.encode()) for p in pems]
    except ValueError:
        return ClientChain(None, 0, (), "The client's certificate chain cannot be read.")
    proxies = 0
    while proxies < len(certs) and _is_proxy(certs[proxies]):
        proxies += 1
    validity = []
    for i, cert in enumerate(certs):
        if i < proxies:
            what = "the proxy certificate" if proxies == 1 else f"proxy certificate {i + 1}"
        elif i == proxies:
            what = f"the certificate of '{subject_dn(cert.subject)}'"
        else:
            what = f"the CA certificate '{subject_dn(cert.subject)}'"
        validity.append(Validity(what, cert.not_valid_before_utc, cert.not_valid_after_utc))
    if proxies == len(certs):
        return ClientChain(
            None, proxies, tuple(validity), "The chain holds no end-entity certificate."
        )
    for cert in certs[:proxies]:
        policy = _proxy_policy(cert)
        if policy not in _INHERITING_POLICIES:
            return ClientChain(
                None,
                proxies,
                tuple(validity),
                f"A proxy certificate in the chain has the policy {policy}, which hands on "
                "no rights of its issuer; use a proxy that inherits them (RFC 3820 "
                "inheritAll, or a limited proxy).",
            )
    end_entity = certs[proxies]
    if _is_ca(end_entity):
        return ClientChain(
            None, proxies, tuple(validity), "A CA certificate does not identify a client."
        )
    return ClientChain(subject_dn(end_entity.subject), proxies, tuple(validity))


def _is_proxy(cert: x509.Certificate) -> bool:
    try:
        cert.extensions.get_extension_for_oid(PROXY_CERT_INFO)
    except x509.ExtensionNotFound:
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _proxy_policy(cert: x509.Certificate) -> str:
    """The policy language of a ProxyCertInfo extension (a dotted OID), or 'unreadable'.

    ProxyCertInfo ::= SEQUENCE { pCPathLenConstraint INTEGER OPTIONAL,
                                 proxyPolicy SEQUENCE { policyLanguage OID, policy OCTET
                                 STRING OPTIONAL } }
    The TLS layer has parsed and enforced it already; this reads the one field it leaves to
    the application."""
    extension = cert.extensions.get_extension_for_oid(PROXY_CERT_INFO).value
    data = extension.value if isinstance(extension, x509.UnrecognizedExtension) else b""
    try:
        body, _ = _der(data, 0, 0x30)
        tag_at = body[0]
        if data[tag_at] == 0x02:  # the path length constraint
            _, tag_at = _der(data, tag_at, 0x02)
        policy, _ = _der(data, tag_at, 0x30)
        oid, _ = _der(data, policy[0], 0x06)
        return _dotted(data[oid[0] : oid[1]])
    except (IndexError, ValueError):
        return "unreadable"


def _der(data: bytes, at: int, tag: int) -> tuple[tuple[int, int], int]:
    """The content span of the DER element at ``at`` (which must have ``tag``) and the
    position after it."""
    if data[at] != tag:
        raise ValueError("unexpected tag")
    length = data[at + 1]
    start = at + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4:
            raise ValueError("bad length")
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    end = start + length
    if end > len(data):
        raise ValueError("truncated")
    return (start, end), end


def _dotted(content: bytes) -> str:
    if not content:
        raise ValueError("empty OID")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


# --- the mappings -----------------------------------------------------------------------------


async def add(
    conn: Connection, name: str, dn: str, scopes: Sequence[str], expires_at: datetime | None
) -> dict[str, Any]:
    """Map a subject (either form) to a principal; its record."""
    unknown = set(scopes) - set(SCOPES)
    if not scopes or unknown:
        raise CertificateError(f"scopes must be some of {', '.join(SCOPES)}")
    if not re.fullmatch(NAME_PATTERN, name):
        raise CertificateError("a principal name is 1-100 letters, digits and . _ @ -")
    subject = canonical_dn(dn)
    try:
        row = await conn.fetchrow(ADD_MAPPING, name, subject, sorted(set(scopes)), expires_at)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "certificate_principals_dn":
            holder = await conn.fetchval(MAPPED_NAME, subject)
            raise MappingExists(
                f"the subject {subject!r} is mapped already (to {holder!r}); revoke that "
                "mapping first"
            ) from None
        raise MappingExists(f"a certificate principal named {name!r} exists already") from None
    assert row is not None
    return dict(row)


async def list_all(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(LIST_MAPPINGS)]


async def revoke(conn: Connection, name: str) -> bool:
    return await conn.fetchval(REVOKE_MAPPING, name) is not None


def describe(records: Iterable[dict[str, Any]]) -> list[str]:
    """``cert list``: one line per mapping."""
    lines = []
    for r in records:
        until = r["expires_at"].isoformat() if r["expires_at"] else "never"
        used = r["last_used_at"].isoformat() if r["last_used_at"] else "never"
        lines.append(
            f"{r['name']}\t{','.join(r['scopes'])}\t{r['state']}\texpires {until}\t"
            f"last used {used}\t{r['dn']}"
        )
    return lines
