"""The device identity directory written by `edge-agent provision` and read by the MQTT link.

Layout (directory 0700):

    device.key      EC P-256 private key, PKCS#8 PEM, 0600 - made on the device, never sent anywhere
    device.crt      the device certificate (CN = device id), signed by the hub CA
    ca.crt          the CA chain to trust for the broker and the hub
    provision.json  the hub's ProvisionResponse without the PEM blobs (device id, broker, prefix, labels)
    signing-keys/<key_id>.pem  model-signing public keys the agent trusts

The directory is replaced as a whole (see provision.py): a reader sees the old or the new identity.
If a crash struck between the two renames of a replacement, only ``<dir>.prev`` exists; `load` uses it.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from edge_agent.fleet.errors import IdentityError
from protocols.messages import SigningKey
from protocols.topics import DEFAULT_PREFIX, check_device_id

KEY_FILE = "device.key"
CERT_FILE = "device.crt"
CA_FILE = "ca.crt"
INFO_FILE = "provision.json"
SIGNING_DIR = "signing-keys"
PREV_SUFFIX = ".prev"
MQTTS_PORT = 8883


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker listens; `tls` is False only for a plain mqtt:// URL (development)."""

    host: str
    port: int
    tls: bool = True

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse `mqtts://host[:port]` (default port 8883) or `mqtt://host[:port]` (1883)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtts", "ssl", "mqtt", "tcp") or not parts.hostname:
            raise IdentityError(f"broker URL {url!r} is not mqtts://host[:port]")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (MQTTS_PORT if tls else 1883)
        except ValueError as exc:
            raise IdentityError(f"broker URL {url!r} has an invalid port") from exc
        return cls(parts.hostname, port, tls)


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """A provisioned device: its id, certificate files, broker and trusted keys."""

    directory: Path
    device_id: str
    broker_url: str
    hub_url: str
    topic_prefix: str
    labels: dict[str, str]
    telemetry_interval_s: float
    signing_keys: tuple[SigningKey, ...]

    @property
    def keyfile(self) -> Path:
        """The device's private key (0600)."""
        return self.directory / KEY_FILE

    @property
    def certfile(self) -> Path:
        """The device certificate."""
        return self.directory / CERT_FILE

    @property
    def cafile(self) -> Path:
        """The CA chain trusted for the broker and the hub."""
        return self.directory / CA_FILE

    @property
    def broker(self) -> BrokerAddress:
        """The broker address from `broker_url`."""
        return BrokerAddress.parse(self.broker_url)

    def ssl_context(self) -> ssl.SSLContext:
        """TLS client context for the broker: trust only the hub CA, present the device certificate."""
        return client_ssl_context(self.cafile, self.certfile, self.keyfile)

    @classmethod
    def load(cls, directory: Path) -> DeviceIdentity:
        """Read an identity directory (falling back to `<dir>.prev` after an interrupted replacement)."""
        if not directory.exists():
            prev = directory.with_name(directory.name + PREV_SUFFIX)
            if prev.exists():
                directory = prev
            else:
                raise IdentityError(f"no identity at {directory}: run `edge-agent provision` first")
        for name in (KEY_FILE, CERT_FILE, CA_FILE, INFO_FILE):
            if not (directory / name).is_file():
                raise IdentityError(f"identity {directory} is incomplete: {name} is missing")
        try:
            info = json.loads((directory / INFO_FILE).read_text())
            keys = tuple(SigningKey.model_validate(k) for k in info.get("signing_keys", ()))
            identity = cls(
                directory=directory,
                device_id=check_device_id(str(info["device_id"])),
                broker_url=str(info["broker_url"]),
                hub_url=str(info.get("hub_url", "")),
                topic_prefix=str(info.get("topic_prefix") or DEFAULT_PREFIX),
                labels={str(k): str(v) for k, v in dict(info.get("labels", {})).items()},
                telemetry_interval_s=float(info.get("telemetry_interval_s", 10.0)),
                signing_keys=keys,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityError(f"identity {directory}: {INFO_FILE} is invalid: {exc}") from exc
        BrokerAddress.parse(identity.broker_url)
        return identity


def client_ssl_context(cafile: Path, certfile: Path | None = None, keyfile: Path | None = None) -> ssl.SSLContext:
    """A TLS >= 1.2 client context trusting only `cafile`, optionally presenting a client certificate."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cafile))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if certfile is not None:
            ctx.load_cert_chain(certfile=str(certfile), keyfile=str(keyfile) if keyfile else None)
    except (OSError, ssl.SSLError) as exc:
        raise IdentityError(f"cannot load TLS material ({cafile}, {certfile}): {exc}") from exc
    return ctx
