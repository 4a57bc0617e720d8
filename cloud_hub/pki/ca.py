"""The hub CA (EC P-256): created once, kept 0600 in the data dir; issues leaf certificates and CRLs."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud_hub.errors import PKIError
from cloud_hub.files import write_atomic

CA_VALIDITY = dt.timedelta(days=3650)
DEVICE_VALIDITY = dt.timedelta(days=365)
SERVER_VALIDITY = dt.timedelta(days=825)
# The CRL is rewritten at every hub start and revoke; a far nextUpdate keeps OpenSSL from calling it expired.
CRL_VALIDITY = dt.timedelta(days=365)
# Certificates start a little in the past so a device with a skewed clock does not see "not yet valid".
BACKDATE = dt.timedelta(hours=1)

LeafKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def ca_fingerprint(cert: x509.Certificate) -> str:
    """sha256 of the certificate's DER, lowercase hex: what `edge-agent provision --ca-fingerprint` pins."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_fingerprint(cert: x509.Certificate) -> str:
    """sha256 of a certificate's DER, lowercase hex."""
    return ca_fingerprint(cert)


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class HubCA:
    """The CA's key and certificate."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str = "edgefleet hub CA") -> HubCA:
        """A fresh self-signed CA."""
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
            .not_valid_after(_now() + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load_or_create(cls, cert_path: Path, key_path: Path) -> tuple[HubCA, bool]:
        """Load the CA from its files, or create and write them (key 0600); True if created."""
        if cert_path.exists() != key_path.exists():
            raise PKIError(f"CA files incomplete: need both {cert_path} and {key_path}")
        if not cert_path.exists():
            ca = cls.create()
            # Key first: a crash between the two writes leaves no certificate without its key.
            write_atomic(key_path, pem_private_key(ca.key), 0o600)
            write_atomic(cert_path, ca.cert_pem(), 0o644)
            return ca, True
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise PKIError(f"cannot load CA from {cert_path}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{key_path} is not an EC private key")
        if cert.public_key() != key.public_key():
            raise PKIError(f"{cert_path} does not belong to the key in {key_path}")
        return cls(key, cert), False

    def cert_pem(self) -> bytes:
        """The CA certificate in PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """sha256 hex of the CA certificate's DER."""
        return ca_fingerprint(self.cert)

    def issue(
        self,
        public_key: LeafKey,
        cn: str,
        *,
        server: bool = False,
        client: bool = True,
        validity: dt.timedelta = DEVICE_VALIDITY,
        hosts: Iterable[str] = (),
    ) -> x509.Certificate:
        """Sign a leaf certificate for `public_key` with subject CN=`cn` and the given EKUs and SANs."""
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
        usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + validity, self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        sans = [_san(h) for h in hosts]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def crl(self, revoked: Iterable[tuple[int, dt.datetime]]) -> x509.CertificateRevocationList:
        """A CRL listing `(serial, revoked_at)` pairs, signed by the CA."""
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - BACKDATE)
            .next_update(now + CRL_VALIDITY)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
        )
        for serial, at in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build()
            )
        return builder.sign(self.key, hashes.SHA256())

    def write_crl(self, path: Path, revoked: Iterable[tuple[int, dt.datetime]]) -> None:
        """Write the CRL as PEM, atomically (mosquitto's `crlfile`)."""
        write_atomic(path, self.crl(revoked).public_bytes(serialization.Encoding.PEM), 0o644)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
