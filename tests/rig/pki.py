"""A throw-away PKI for broker tests: a CA, a server certificate for loopback, client certificates.

Everything is EC P-256 and written as PEM into one directory. A second, unrelated "rogue" CA issues
certificates that the broker must refuse even when their CN is a valid device or hub name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=30)
# Certificates start a little in the past so a skewed clock does not make them "not yet valid".
BACKDATE = dt.timedelta(hours=1)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class CertificateAuthority:
    """A self-signed EC P-256 CA that issues leaf certificates and CRLs."""

    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    certfile: Path
    issued: dict[str, x509.Certificate] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, directory: Path) -> CertificateAuthority:
        """Make a CA called `name` and write its certificate to `directory/<name>.pem`."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - BACKDATE)
            .not_valid_after(_now() + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256())
        )
        certfile = directory / f"{name}.pem"
        certfile.write_bytes(_cert_pem(cert))
        return cls(name=name, key=key, cert=cert, certfile=certfile)

    def issue(
        self,
        cn: str,
        directory: Path,
        *,
        server: bool = False,
        dns_names: Iterable[str] = (),
        ip_addresses: Iterable[str] = (),
    ) -> tuple[Path, Path]:
        """Issue a leaf certificate for `cn`; return (certfile, keyfile) written under `directory`."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - BACKDATE)
            .not_valid_after(_now() + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        self.issued[cn] = cert
        stem = f"{self.name}--{cn}"
        certfile, keyfile = directory / f"{stem}.pem", directory / f"{stem}.key"
        certfile.write_bytes(_cert_pem(cert))
        _write_private(keyfile, _key_pem(key))
        return certfile, keyfile

    def write_crl(self, path: Path, revoked_cns: Iterable[str] = (), *, next_update: dt.timedelta = VALIDITY) -> Path:
        """Write a PEM CRL that revokes the certificates this CA issued to `revoked_cns`."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - BACKDATE)
            .next_update(now + next_update)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        )
        for cn in revoked_cns:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(self.issued[cn].serial_number)
                .revocation_date(now - BACKDATE)
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        tmp.replace(path)
        return path


class TestPKI:
    """A test CA with a loopback server certificate, client certificates on demand, and a rogue CA."""

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca = CertificateAuthority.create("edgefleet-test-ca", directory)
        self.rogue_ca = CertificateAuthority.create("rogue-ca", directory)
        self.server_certfile, self.server_keyfile = self.ca.issue(
            "localhost", directory, server=True, dns_names=["localhost"], ip_addresses=["127.0.0.1"]
        )
        self._clients: dict[tuple[str, bool], tuple[Path, Path]] = {}

    @property
    def cafile(self) -> Path:
        """The CA certificate the broker trusts (and clients use to check the broker)."""
        return self.ca.certfile

    def client(self, cn: str) -> tuple[Path, Path]:
        """(certfile, keyfile) for a client certificate with CN `cn` from the test CA (cached per CN)."""
        return self._client(cn, rogue=False)

    def rogue_client(self, cn: str) -> tuple[Path, Path]:
        """(certfile, keyfile) for a client certificate with CN `cn` from the rogue CA."""
        return self._client(cn, rogue=True)

    def _client(self, cn: str, *, rogue: bool) -> tuple[Path, Path]:
        if (cn, rogue) not in self._clients:
            ca = self.rogue_ca if rogue else self.ca
            self._clients[cn, rogue] = ca.issue(cn, self.directory)
        return self._clients[cn, rogue]

    def write_crl(self, path: Path, revoked_cns: Iterable[str] = ()) -> Path:
        """Write a CRL from the test CA revoking the client certificates of `revoked_cns`."""
        for cn in revoked_cns:
            self.client(cn)
        return self.ca.write_crl(path, revoked_cns)

    def ssl_context(self, cn: str | None = None, *, rogue: bool = False) -> ssl.SSLContext:
        """A client TLS context trusting the test CA, presenting the certificate for `cn` if given."""
        cert = None if cn is None else self._client(cn, rogue=rogue)
        return client_ssl_context(self.cafile, cert)


def client_ssl_context(cafile: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    """A TLS client context for paho (`client.tls_set_context`): verify the broker, optionally present a cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        ctx.load_cert_chain(certfile=str(cert[0]), keyfile=str(cert[1]))
    return ctx
