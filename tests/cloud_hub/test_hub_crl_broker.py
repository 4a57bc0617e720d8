"""How mosquitto 2.0.x picks up the hub's CRL: read at start; a SIGHUP reload does not re-read it."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hub_devices import write_identity
from rig import Mosquitto
from test_provision_e2e import _connect

from cloud_hub.pki import HubIdentity

pytestmark = pytest.mark.slow


def test_crl_needs_a_broker_restart(hub_identity: HubIdentity, hub_broker: Mosquitto, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = hub_identity.ca.issue(key.public_key(), "dev-crl")
    files = write_identity(tmp_path / "d", key, cert.public_bytes(serialization.Encoding.PEM).decode())
    cafile = hub_identity.paths.ca_cert
    ok = _connect(hub_broker, cafile, files, "dev-crl")
    assert not isinstance(ok, str) and not ok.is_failure, ok
    import datetime as dt

    hub_identity.ca.write_crl(hub_identity.paths.crl, [(cert.serial_number, dt.datetime.now(dt.UTC))])
    hub_broker.reload()  # SIGHUP: mosquitto 2.0.11 reloads ACL/password files, not the listener's TLS/CRL
    after_hup = _connect(hub_broker, cafile, files, "dev-crl")
    assert not isinstance(after_hup, str) and not after_hup.is_failure, after_hup
    hub_broker.restart()
    after_restart = _connect(hub_broker, cafile, files, "dev-crl")
    assert isinstance(after_restart, str), after_restart
