"""`edge-agent provision` against a small HTTPS hub stand-in that signs CSRs with the test CA.

The real hub is cloud_hub's (tested there); here it is the boundary, so a stand-in answers the
documented API: POST /api/v1/provision and, optionally, GET /api/v1/ca.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from fleet_support import HARDWARE, birth_factory
from rig import Mosquitto, TestPKI

from edge_agent.fleet.errors import ProvisionError
from edge_agent.fleet.identity import DeviceIdentity
from edge_agent.fleet.mqtt_link import DeviceLink, LinkSettings
from edge_agent.fleet.provision import cert_fingerprint, provision, provision_main
from protocols.messages import ProvisionRequest, ProvisionResponse, SigningKey

CLAIM = "claim-token-0123456789"
SIGNING = SigningKey(
    key_id="0123456789abcdef", public_key_pem="-----BEGIN PUBLIC KEY-----\nx\n-----END PUBLIC KEY-----\n"
)


class FakeHub:
    def __init__(self, pki: TestPKI, broker_url: str, *, serve_ca: bool) -> None:
        self.pki = pki
        self.broker_url = broker_url
        self.serve_ca = serve_ca
        self.requests: list[ProvisionRequest] = []
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/v1/provision", self.provision)
        if self.serve_ca:
            app.router.add_get("/api/v1/ca", self.ca)
        return app

    async def ca(self, request: web.Request) -> web.Response:
        return web.Response(body=self.pki.cafile.read_bytes(), content_type="application/x-pem-file")

    async def provision(self, request: web.Request) -> web.Response:
        req = ProvisionRequest.model_validate_json(await request.read())
        self.requests.append(req)
        if req.claim_token != CLAIM:
            return web.json_response({"error": "unknown or expired claim"}, status=403)
        device_id = req.device_id or f"dev-{len(self.requests)}"
        csr = x509.load_pem_x509_csr(req.csr_pem.encode())
        ca = self.pki.ca
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(ca.cert.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca.key, hashes.SHA256())
        )
        resp = ProvisionResponse(
            device_id=device_id,
            certificate_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            ca_chain_pem=self.pki.cafile.read_text(),
            broker_url=self.broker_url,
            hub_url=self.url,
            topic_prefix="edgefleet/v1",
            signing_keys=(SIGNING,),
            labels={"site": "plant-a"},
            telemetry_interval_s=5.0,
        )
        return web.Response(body=resp.model_dump_json(), content_type="application/json")


async def _run_hub(hub: FakeHub, certfile: Path, keyfile: Path) -> AsyncIterator[FakeHub]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(certfile), str(keyfile))
    runner = web.AppRunner(hub.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    hub.url = f"https://127.0.0.1:{port}"
    try:
        yield hub
    finally:
        await runner.cleanup()


@pytest.fixture
async def hub(mqtt_pki: TestPKI, mosquitto_mtls: Mosquitto) -> AsyncIterator[FakeHub]:
    """A hub whose TLS certificate is a leaf only; the CA comes from GET /api/v1/ca."""
    fake = FakeHub(mqtt_pki, f"mqtts://127.0.0.1:{mosquitto_mtls.port}", serve_ca=True)
    async for h in _run_hub(fake, mqtt_pki.server_certfile, mqtt_pki.server_keyfile):
        yield h


def _fp(pki: TestPKI) -> str:
    return cert_fingerprint(pki.ca.cert)


async def _provision(hub: FakeHub, pki: TestPKI, directory: Path, **kw: object) -> DeviceIdentity:
    return await asyncio.to_thread(
        provision,
        hub.url,
        str(kw.pop("claim", CLAIM)),
        str(kw.pop("fp", _fp(pki))),
        directory,
        hardware=lambda: HARDWARE,
        **kw,  # type: ignore[arg-type]
    )


async def test_provision_writes_identity_and_the_link_connects_with_it(
    hub: FakeHub, mqtt_pki: TestPKI, mosquitto_mtls: Mosquitto, tmp_path: Path
) -> None:
    directory = tmp_path / "identity"
    identity = await _provision(hub, mqtt_pki, directory, device_id="cam-17")
    assert identity.device_id == "cam-17" and identity.labels == {"site": "plant-a"}
    assert hub.requests[0].hardware == HARDWARE and hub.requests[0].device_id == "cam-17"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "device.key").stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in hub.requests[0].model_dump_json()
    info = json.loads((directory / "provision.json").read_text())
    assert "certificate_pem" not in info and info["device_id"] == "cam-17"
    assert (directory / "signing-keys" / f"{SIGNING.key_id}.pem").read_text() == SIGNING.public_key_pem
    loaded = DeviceIdentity.load(directory)
    async with DeviceLink(LinkSettings.from_identity(loaded), birth_factory("cam-17")) as link:
        await link.wait_connected(10)


async def test_reprovision_rotates_the_key_and_keeps_the_previous_identity(
    hub: FakeHub, mqtt_pki: TestPKI, tmp_path: Path
) -> None:
    directory = tmp_path / "identity"
    await _provision(hub, mqtt_pki, directory, device_id="cam-1")
    old_key = (directory / "device.key").read_bytes()
    await _provision(hub, mqtt_pki, directory, device_id="cam-1")
    assert (directory / "device.key").read_bytes() != old_key
    assert (tmp_path / "identity.prev" / "device.key").read_bytes() == old_key
    assert not list(tmp_path.glob(".identity.tmp-*"))
    # An interrupted replacement (only .prev left) still loads.
    (directory).rename(tmp_path / "gone")
    assert DeviceIdentity.load(directory).directory == tmp_path / "identity.prev"


async def test_wrong_fingerprint_is_refused_before_anything_is_sent(
    hub: FakeHub, mqtt_pki: TestPKI, tmp_path: Path
) -> None:
    rogue = cert_fingerprint(mqtt_pki.rogue_ca.cert)
    with pytest.raises(ProvisionError, match="does not present a CA with fingerprint"):
        await _provision(hub, mqtt_pki, tmp_path / "identity", fp=rogue)
    assert hub.requests == [] and not (tmp_path / "identity").exists()


async def test_bad_claim_is_reported_with_the_hubs_reason(hub: FakeHub, mqtt_pki: TestPKI, tmp_path: Path) -> None:
    argv = [
        "--hub",
        hub.url,
        "--claim",
        "wrong-claim-0123456789",
        "--ca-fingerprint",
        _fp(mqtt_pki),
        "--identity-dir",
        str(tmp_path / "identity"),
    ]
    code = await asyncio.to_thread(provision_main, argv)
    assert code == 1 and not (tmp_path / "identity").exists()
    with pytest.raises(ProvisionError, match="refused the claim: unknown or expired claim"):
        await _provision(hub, mqtt_pki, tmp_path / "identity", claim="wrong-claim-0123456789")
    assert await asyncio.to_thread(provision_main, ["--hub", "http://x"]) == 2


async def test_ca_pinned_from_the_presented_chain(mqtt_pki: TestPKI, tmp_path: Path) -> None:
    """A hub that sends its CA in the TLS chain needs no /api/v1/ca."""
    chain = tmp_path / "chain.pem"
    chain.write_bytes(mqtt_pki.server_certfile.read_bytes() + mqtt_pki.cafile.read_bytes())
    fake = FakeHub(mqtt_pki, "mqtts://127.0.0.1:8883", serve_ca=False)
    async for h in _run_hub(fake, chain, mqtt_pki.server_keyfile):
        identity = await _provision(h, mqtt_pki, tmp_path / "identity")
        assert identity.device_id == "dev-1" and identity.broker.port == 8883
