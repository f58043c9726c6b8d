"""A throwaway grid CA for tests: server and user certificates, and RFC 3820 proxies of them
written as ``voms-proxy-init`` writes them (the proxy, its key, then the chain)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
# ProxyCertInfo ::= SEQUENCE { [pCPathLenConstraint INTEGER,] proxyPolicy SEQUENCE {
#     policyLanguage OID } }, written out in DER for each language the tests use.
INHERIT_ALL = "2b06010505071501"  # 1.3.6.1.5.5.7.21.1
INDEPENDENT = "2b06010505071502"  # 1.3.6.1.5.5.7.21.2
LIMITED = "2b060104019b5001010109"  # 1.3.6.1.4.1.3536.1.1.1.9

Key = ec.EllipticCurvePrivateKey


def proxy_cert_info(policy_oid_hex: str, path_length: int | None = None) -> bytes:
    oid = bytes.fromhex(policy_oid_hex)
    policy = b"\x06" + bytes([len(oid)]) + oid
    body = b"\x30" + bytes([len(policy)]) + policy
    if path_length is not None:
        body = b"\x02\x01" + bytes([path_length]) + body
    return b"\x30" + bytes([len(body)]) + body


def dn(*pairs: tuple[str, str]) -> x509.Name:
    """A name from (type, value) pairs in certificate order: ('C', 'RU') first."""
    oids = {
        "C": NameOID.COUNTRY_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "CN": NameOID.COMMON_NAME,
        "DC": NameOID.DOMAIN_COMPONENT,
        "emailAddress": NameOID.EMAIL_ADDRESS,
    }
    return x509.Name([x509.NameAttribute(oids[t], v) for t, v in pairs])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs,
        content_commitment=False,
        key_encipherment=not sign_certs,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class Issued:
    """A certificate, its key, and the certificates between it and the CA (nearest first)."""

    cert: x509.Certificate
    key: Key
    chain: list[x509.Certificate] = field(default_factory=list)

    @property
    def subject(self) -> x509.Name:
        return self.cert.subject

    def write_pair(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Certificate (with its chain) and key in two files, as usercert.pem/userkey.pem."""
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(_pem(self.cert) + b"".join(_pem(c) for c in self.chain))
        key.write_bytes(_key_pem(self.key))
        return cert, key

    def write_proxy(self, directory: Path, stem: str) -> Path:
        """One file: the certificate, its key, then its chain (X509_USER_PROXY's form)."""
        path = directory / stem
        path.write_bytes(
            _pem(self.cert) + _key_pem(self.key) + b"".join(_pem(c) for c in self.chain)
        )
        path.chmod(0o600)
        return path

    def client_context(self, directory: Path, stem: str, ca: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(self.write_proxy(directory, stem)))
        return context


class TestCA:
    __test__ = False  # not a test class, whatever its name

    def __init__(self, name: str = "EventIndex Test Grid CA") -> None:
        self.now = dt.datetime.now(dt.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = dn(("C", "RU"), ("O", "Test Grid"), ("CN", name))
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(hours=1))
            .not_valid_after(self.now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(sign_certs=True), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def write(self, directory: Path, stem: str = "ca") -> Path:
        path = directory / f"{stem}.pem"
        path.write_bytes(_pem(self.cert))
        return path

    def _issue(
        self,
        subject: x509.Name,
        *,
        server: bool = False,
        valid_for: dt.timedelta = dt.timedelta(days=1),
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(hours=1))
            .not_valid_after(self.now + valid_for)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(sign_certs=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        return Issued(builder.sign(self.key, hashes.SHA256()), key)

    def server(self, directory: Path) -> tuple[Path, Path]:
        return self._issue(dn(("CN", "localhost")), server=True).write_pair(directory, "server")

    def user(self, subject: x509.Name, valid_for: dt.timedelta = dt.timedelta(days=1)) -> Issued:
        return self._issue(subject, valid_for=valid_for)

    def proxy(
        self,
        issuer: Issued,
        *,
        expired: bool = False,
        policy: str = INHERIT_ALL,
        path_length: int | None = None,
    ) -> Issued:
        """An RFC 3820 proxy of ``issuer``: its subject plus CN=<serial>, signed by its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        subject = x509.Name(
            [
                *issuer.subject.rdns,
                x509.RelativeDistinguishedName(
                    [x509.NameAttribute(NameOID.COMMON_NAME, str(serial))]
                ),
            ]
        )
        if expired:
            not_before, not_after = (
                self.now - dt.timedelta(hours=13),
                self.now - dt.timedelta(hours=1),
            )
        else:
            not_before, not_after = (
                self.now - dt.timedelta(minutes=5),
                self.now + dt.timedelta(hours=12),
            )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(
                x509.UnrecognizedExtension(PROXY_CERT_INFO, proxy_cert_info(policy, path_length)),
                critical=True,
            )
            .add_extension(_usage(sign_certs=False), critical=True)
            .sign(issuer.key, hashes.SHA256())
        )
        return Issued(cert, key, [issuer.cert, *issuer.chain])
