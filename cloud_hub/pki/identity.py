"""The hub's files in its data dir: CA, HTTPS server certificate, MQTT client identity, model-signing key."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cloud_hub.errors import PKIError
from cloud_hub.files import private_dir, write_atomic
from cloud_hub.pki.ca import SERVER_VALIDITY, HubCA, pem_private_key
from models import signing
from protocols.messages import SigningKey

HUB_CN = "edgefleet-hub"
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class HubPaths:
    """Where the hub keeps its files under the data dir."""

    data_dir: Path
    mqtt_cn: str = "edgefleet-hub"

    @property
    def pki(self) -> Path:
        """Folder of CA and leaf certificates (0700)."""
        return self.data_dir / "pki"

    @property
    def ca_cert(self) -> Path:
        """CA certificate (PEM): what brokers and devices trust."""
        return self.pki / "ca.pem"

    @property
    def ca_key(self) -> Path:
        """CA private key (0600)."""
        return self.pki / "ca.key"

    @property
    def server_cert(self) -> Path:
        """HTTPS server certificate."""
        return self.pki / "server.pem"

    @property
    def server_key(self) -> Path:
        """HTTPS server key (0600)."""
        return self.pki / "server.key"

    @property
    def hub_cert(self) -> Path:
        """This replica's MQTT client certificate (CN `mqtt_cn`; hub-client.pem for edgefleet-hub)."""
        return self.pki / f"{self._hub_client_stem}.pem"

    @property
    def hub_key(self) -> Path:
        """This replica's MQTT client key (0600)."""
        return self.pki / f"{self._hub_client_stem}.key"

    @property
    def _hub_client_stem(self) -> str:
        return "hub-client" if self.mqtt_cn == HUB_CN else f"hub-client-{self.mqtt_cn}"

    @property
    def signing_key(self) -> Path:
        """ed25519 model-signing private key (0600)."""
        return self.data_dir / "signing" / "hub-signing.key"

    @property
    def signing_pub(self) -> Path:
        """ed25519 model-signing public key."""
        return self.data_dir / "signing" / "hub-signing.pub"

    @property
    def crl(self) -> Path:
        """CRL of revoked device certificates (mosquitto `crlfile`)."""
        return self.data_dir / "crl.pem"

    @property
    def operator_token(self) -> Path:
        """The first operator API token, for the CLI on the same host (0600)."""
        return self.data_dir / "operator-token"

    @property
    def hub_info(self) -> Path:
        """JSON with the hub URL, written at `serve`, read by the CLI."""
        return self.data_dir / "hub.json"

    @property
    def database(self) -> Path:
        """Default SQLite file."""
        return self.data_dir / "hub.db"


@dataclass(frozen=True)
class HubIdentity:
    """Everything the hub loads from (or creates in) its data dir at start."""

    paths: HubPaths
    ca: HubCA
    signing_key: signing.Ed25519PrivateKey

    @classmethod
    def bootstrap(cls, data_dir: Path, hosts: tuple[str, ...] | None, mqtt_cn: str = HUB_CN) -> HubIdentity:
        """Load or create the CA, the server (for `hosts`; None = leave as is) and hub-client (CN `mqtt_cn`)
        certificates and the signing key."""
        paths = HubPaths(data_dir, mqtt_cn)
        private_dir(data_dir)
        private_dir(paths.pki)
        ca, _ = HubCA.load_or_create(paths.ca_cert, paths.ca_key)
        if hosts is not None:
            _ensure_leaf(ca, paths.server_cert, paths.server_key, "edgefleet-hub-https", server=True, hosts=hosts)
        _ensure_leaf(ca, paths.hub_cert, paths.hub_key, mqtt_cn, server=False, hosts=())
        if paths.signing_key.exists():
            key = signing.load_private_key(paths.signing_key)
        else:
            private_dir(paths.signing_key.parent)
            key, public = signing.generate_keypair()
            signing.save_private_key(key, paths.signing_key)
            signing.save_public_key(public, paths.signing_pub)
        return cls(paths, ca, key)

    def signing_keys(self) -> tuple[SigningKey, ...]:
        """The model-signing public keys devices must trust."""
        public = self.signing_key.public_key()
        pem = signing.public_key_pem(public).decode("ascii")
        return (SigningKey(key_id=signing.key_id(public), public_key_pem=pem),)

    def server_ssl_context(self) -> ssl.SSLContext:
        """TLS server context for the HTTPS listener.

        It asks for an optional client certificate from the hub CA: devices present theirs to download
        artifacts (the handler checks CN = a provisioned, non-revoked device), while provisioning and the
        operator API work without one. A certificate from another CA fails the handshake.
        """
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.paths.server_cert), str(self.paths.server_key))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(cafile=str(self.paths.ca_cert))
        return ctx

    def mqtt_ssl_context(self, cafile: Path | None = None, cn: str | None = None) -> ssl.SSLContext:
        """TLS client context for the broker: trust `cafile` (default the hub CA), present the hub identity
        (or the one for `cn`, issued on first use: another replica on the same data dir)."""
        paths = self.paths if cn is None or cn == self.paths.mqtt_cn else HubPaths(self.paths.data_dir, cn)
        if paths is not self.paths:
            _ensure_leaf(self.ca, paths.hub_cert, paths.hub_key, cn or HUB_CN, server=False, hosts=())
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile or self.paths.ca_cert))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(paths.hub_cert), str(paths.hub_key))
        return ctx

    def issue_keypair(
        self, cn: str, cert_path: Path, key_path: Path, *, server: bool, hosts: tuple[str, ...] = ()
    ) -> None:
        """Issue a fresh key + certificate from the CA to files (e.g. the broker's server certificate)."""
        issue_keypair(self.ca, cn, cert_path, key_path, server=server, hosts=hosts)


def issue_keypair(ca: HubCA, cn: str, cert_path: Path, key_path: Path, *, server: bool, hosts: tuple[str, ...]) -> None:
    """Make an EC key, have the CA certify it for `cn`, and write both files (key 0600, key first)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue(key.public_key(), cn, server=server, client=not server, validity=SERVER_VALIDITY, hosts=hosts)
    write_atomic(key_path, pem_private_key(key), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _ensure_leaf(ca: HubCA, cert_path: Path, key_path: Path, cn: str, *, server: bool, hosts: tuple[str, ...]) -> None:
    """Keep a valid leaf from this CA with these hosts, or issue a new one."""
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError as exc:
            raise PKIError(f"{cert_path} is not a PEM certificate: {exc}") from exc
        fresh = cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > RENEW_BEFORE
        if fresh and cert.issuer == ca.cert.subject and _sans(cert) == _wanted(hosts):
            try:
                cert.verify_directly_issued_by(ca.cert)
            except (ValueError, TypeError):
                pass
            else:
                return
    issue_keypair(ca, cn, cert_path, key_path, server=server, hosts=hosts)


def _wanted(hosts: tuple[str, ...]) -> set[str]:
    return {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in hosts}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n.value) for n in ext if isinstance(n, x509.DNSName | x509.IPAddress)}


def replica_cn(data_dir: Path, configured: str, client_id: str | None) -> str:
    """The MQTT certificate CN of a hub process: the configured `mqtt_identity`, except that with the
    default one, the process that took client-id slot k > 0 of a shared data dir (`mqtt-client-id.k`)
    is `edgefleet-hub-{k+1}`: the broker makes the CN the client id, so replicas need distinct CNs."""
    if configured != HUB_CN or client_id is None:
        return configured
    for slot in range(1, 64):
        path = data_dir / f"mqtt-client-id.{slot}"
        if not path.exists():
            break
        if path.read_text(encoding="ascii").strip() == client_id:
            return f"{HUB_CN}-{slot + 1}"
    return configured
