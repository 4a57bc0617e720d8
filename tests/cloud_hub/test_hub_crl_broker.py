"""How mosquitto 2.0.11 picks up the hub's CRL: at start, and again on SIGHUP (`systemctl reload`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from devices_support import write_identity
from rig import Mosquitto
from test_provision_e2e import _connect

from cloud_hub.pki import HubIdentity

pytestmark = pytest.mark.slow


def _device(identity: HubIdentity, directory: Path, cn: str) -> tuple[tuple[Path, Path], int]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = identity.ca.issue(key.public_key(), cn)
    return write_identity(
        directory / cn, key, cert.public_bytes(serialization.Encoding.PEM).decode()
    ), cert.serial_number


def _accepted(result: object) -> bool:
    return not isinstance(result, str) and not result.is_failure  # type: ignore[attr-defined]


def test_sighup_reloads_the_crl(hub_identity: HubIdentity, hub_broker: Mosquitto, tmp_path: Path) -> None:
    cafile = hub_identity.paths.ca_cert
    (revoked, serial), (kept, _) = _device(hub_identity, tmp_path, "dev-x"), _device(hub_identity, tmp_path, "dev-y")
    assert _accepted(_connect(hub_broker, cafile, revoked, "dev-x"))
    hub_identity.ca.write_crl(hub_identity.paths.crl, [(serial, dt.datetime.now(dt.UTC))])
    # Not re-read by itself: the running broker still accepts the certificate.
    assert _accepted(_connect(hub_broker, cafile, revoked, "dev-x"))
    hub_broker.reload()  # SIGHUP
    assert not _accepted(_connect(hub_broker, cafile, revoked, "dev-x"))
    assert _accepted(_connect(hub_broker, cafile, kept, "dev-y"))
