"""Issue 15 item 4: a leaked claim cannot take over an existing device id by re-provisioning it.

Against a real hub over HTTPS and the production broker with the hub's CRL: re-provisioning `dock-1`
with a new key is refused without proof of its current key; it works with the current certificate
presented in the TLS handshake, or once after an operator approval; each time the replaced certificate
lands on the CRL and, after the broker re-reads it, can no longer connect.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from attack_support import Client, claim, ingesting_hub, operator
from cryptography import x509
from devices_support import HARDWARE, make_csr, write_identity
from test_sec_shared_subscription import hub_ca_broker

from cloud_hub.app import Hub
from cloud_hub.pki import HubIdentity
from protocols.messages import ProvisionRequest

pytestmark = pytest.mark.slow


async def _provision(hub: Hub, token: str, cert: tuple[Path, Path] | None) -> tuple[int, dict[str, Any], Any]:
    """Re-provision dock-1 with a fresh key, presenting `cert` in the TLS handshake if given."""
    key, csr = make_csr()
    body = ProvisionRequest(claim_token=token, csr_pem=csr, hardware=HARDWARE, device_id="dock-1")
    ctx = ssl.create_default_context(cafile=str(hub.identity.paths.ca_cert))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{hub.url}/api/v1/provision", data=body.model_dump_json(), ssl=ctx) as resp,
    ):
        return resp.status, await resp.json(), key


def _crl_serials(hub: Hub) -> set[int]:
    crl = x509.load_pem_x509_crl(hub.identity.paths.crl.read_bytes())
    return {entry.serial_number for entry in crl}


def _serial(cert: tuple[Path, Path]) -> int:
    return x509.load_pem_x509_certificate(cert[0].read_bytes()).serial_number


async def test_reprovisioning_needs_proof_of_key_or_approval_and_retires_the_old_certificate(
    hub_data_dir: Path, hub_identity: HubIdentity, tmp_path: Path, mosquitto_bin: str
) -> None:
    broker = hub_ca_broker(tmp_path, mosquitto_bin, hub_identity, "acl", crl=True)
    try:
        async with ingesting_hub(hub_data_dir, tmp_path / "hub.db", broker) as hub:
            token = await claim(hub, uses=5)
            status, body, key = await _provision(hub, token, None)
            assert status == 200
            first = write_identity(tmp_path / "first", key, body["certificate_pem"])

            # The leaked claim alone: refused, and nothing changed.
            status, body, _ = await _provision(hub, token, None)
            assert status == 403 and "proof of its key" in body["error"]
            _, shown = await operator(hub).call("GET", "/api/v1/devices/dock-1")
            assert int(shown["device"]["cert_serial"], 16) == _serial(first)

            # The device itself, proving its current key: a new certificate, the old one on the CRL.
            status, body, key = await _provision(hub, token, first)
            assert status == 200, body
            second = write_identity(tmp_path / "second", key, body["certificate_pem"])
            assert _serial(first) in _crl_serials(hub) and _serial(second) not in _crl_serials(hub)

            # Operator approval: one re-provisioning without proof, then refused again.
            status, _ = await operator(hub).call("POST", "/api/v1/devices/dock-1/approve-reprovision")
            assert status == 200
            status, body, key = await _provision(hub, token, None)
            assert status == 200, body
            third = write_identity(tmp_path / "third", key, body["certificate_pem"])
            assert (await _provision(hub, token, None))[0] == 403
            assert _serial(second) in _crl_serials(hub)

            broker.reload()  # the operator's `systemctl reload mosquitto` after copying the CRL
            cafile = hub.identity.paths.ca_cert
            for old in (first, second):
                with pytest.raises(TimeoutError):
                    Client(broker, cafile, old, "dock-1")
            Client(broker, cafile, third, "dock-1").close()
    finally:
        broker.stop()
