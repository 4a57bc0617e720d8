"""The HTTPS API of a real hub server: operator auth, claims, provisioning, devices, revocation + CRL."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from devices_support import client_ssl, make_csr, provision

from cloud_hub.app import Hub
from cloud_hub.pki.ca import ca_fingerprint
from protocols.messages import ProvisionResponse


class Api:
    """Operator calls against a running hub."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.url = hub.url
        self.cafile = hub.identity.paths.ca_cert
        self.token = hub.identity.paths.operator_token.read_text().strip()

    async def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"} if token != "" else {}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, json=body, headers=headers, ssl=client_ssl(self.cafile)) as r,
        ):
            return r.status, await r.json()

    async def claim(self, uses: int = 5, labels: dict[str, str] | None = None, expires: float = 3600) -> dict[str, Any]:
        status, body = await self.call(
            "POST", "/api/v1/claims", {"labels": labels or {}, "uses": uses, "expires_in_s": expires}
        )
        assert status == 201, body
        return body  # type: ignore[no-any-return]


@pytest.fixture
def api(hub: Hub) -> Api:
    return Api(hub)


async def test_first_start_creates_ca_token_and_keys_with_private_modes(hub: Hub) -> None:
    paths = hub.identity.paths
    for private in (paths.ca_key, paths.server_key, paths.hub_key, paths.signing_key, paths.operator_token):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    hub_cert = x509.load_pem_x509_certificate(paths.hub_cert.read_bytes())
    assert hub_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edgefleet-hub"
    assert paths.crl.exists()


async def test_operator_api_needs_a_valid_bearer_token(api: Api) -> None:
    for token in ("", "wrong-token"):
        for method, path in (("GET", "/api/v1/claims"), ("POST", "/api/v1/claims"), ("GET", "/api/v1/devices")):
            status, body = await api.call(method, path, {}, token=token)
            assert status == 401 and "error" in body, (method, path, token)
    status, _ = await api.call("GET", "/api/v1/claims")
    assert status == 200


async def test_claim_create_returns_join_line_and_stores_only_a_hash(api: Api, hub: Hub) -> None:
    created = await api.claim(uses=3, labels={"site": "plant-a"})
    fingerprint = ca_fingerprint(x509.load_pem_x509_certificate(api.cafile.read_bytes()))
    assert created["ca_fingerprint"] == fingerprint
    assert created["join_command"] == (
        f"edge-agent provision --hub {hub.url} --claim {created['token']} --ca-fingerprint {fingerprint}"
    )
    status, listed = await api.call("GET", "/api/v1/claims")
    assert status == 200
    assert [c["uses_left"] for c in listed["claims"]] == [3]
    assert created["token"] not in str(listed)
    for bad in ({"uses": 0}, {"labels": {"bad key!": "x"}}, {"expires_in_s": -1}, {"uses": "many"}):
        status, body = await api.call("POST", "/api/v1/claims", bad)
        assert status == 400 and "error" in body, bad


async def test_provision_issues_a_client_certificate_from_the_hub_ca(api: Api, hub: Hub) -> None:
    token = (await api.claim(labels={"site": "plant-a"}))["token"]
    status, body, key = await provision(api.url, api.cafile, token, device_id="cam-01")
    assert status == 200, body
    response = ProvisionResponse.model_validate(body)
    assert response.device_id == "cam-01" and response.labels == {"site": "plant-a"}
    assert response.hub_url == hub.url and response.topic_prefix == "edgefleet/v1"
    assert response.signing_keys == hub.identity.signing_keys()
    cert = x509.load_pem_x509_certificate(response.certificate_pem.encode())
    ca = x509.load_pem_x509_certificate(response.ca_chain_pem.encode())
    cert.verify_directly_issued_by(ca)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-01"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=364) < life < dt.timedelta(days=367)
    status, listed = await api.call("GET", "/api/v1/devices")
    assert [d["id"] for d in listed["devices"]] == ["cam-01"]
    assert listed["devices"][0]["cert_serial"] == format(cert.serial_number, "x")
    assert listed["devices"][0]["hardware"]["platform"] == "x86_64-cpu"
    status, shown = await api.call("GET", "/api/v1/devices/cam-01")
    assert status == 200 and shown["device"]["labels"] == {"site": "plant-a"}
    # Without a requested id the hub assigns one.
    status, body, _ = await provision(api.url, api.cafile, token)
    assert status == 200 and body["device_id"].startswith("dev-")


async def test_claim_errors_401_403(api: Api) -> None:
    status, body, _ = await provision(api.url, api.cafile, "efc_unknown_token_0123456789")
    assert status == 401 and "unknown" in body["error"]
    one = (await api.claim(uses=1))["token"]
    assert (await provision(api.url, api.cafile, one))[0] == 200
    status, body, _ = await provision(api.url, api.cafile, one)
    assert status == 403 and "no uses left" in body["error"]
    expired = (await api.claim(expires=0.2))["token"]
    await asyncio.sleep(0.3)
    status, body, _ = await provision(api.url, api.cafile, expired)
    assert status == 403 and "expired" in body["error"]
    claim = await api.claim()
    assert (await api.call("POST", f"/api/v1/claims/{claim['claim']['id']}/revoke"))[0] == 200
    status, body, _ = await provision(api.url, api.cafile, claim["token"])
    assert status == 403 and "revoked" in body["error"]


async def test_concurrent_provisioning_respects_uses(api: Api) -> None:
    token = (await api.claim(uses=3))["token"]
    results = await asyncio.gather(*(provision(api.url, api.cafile, token) for _ in range(8)))
    assert sorted(r[0] for r in results) == [200] * 3 + [403] * 5


def _tampered_csr() -> str:
    _, pem = make_csr()
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    csr = x509.load_der_x509_csr(bytes(der))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _csr_for(key: Any) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        ("not a csr", "not a PEM"),
        ("tampered", "signature is invalid"),
        ("rsa1024", "at least 2048"),
        ("ed25519", "not supported"),
    ],
)
async def test_bad_csrs_are_refused_and_do_not_use_the_claim(api: Api, csr: str, message: str) -> None:
    pem = {
        "not a csr": lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "tampered": _tampered_csr,
        "rsa1024": lambda: _csr_for(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "ed25519": lambda: _csr_for(ed25519.Ed25519PrivateKey.generate()),
    }[csr]()
    token = (await api.claim(uses=1))["token"]
    status, body, _ = await provision(api.url, api.cafile, token, csr_pem=pem)
    assert status == 400 and message in body["error"], body
    assert (await provision(api.url, api.cafile, token))[0] == 200


async def test_malformed_provision_bodies_are_400(api: Api) -> None:
    async with aiohttp.ClientSession() as session:
        for data in (b"{", b'{"v": 1}', b"[]"):
            async with session.post(f"{api.url}/api/v1/provision", data=data, ssl=client_ssl(api.cafile)) as r:
                assert r.status == 400 and "error" in await r.json()


async def test_reprovisioning_needs_the_same_claim(api: Api) -> None:
    first = (await api.claim(uses=3))["token"]
    other = (await api.claim(uses=3))["token"]
    status, body, _ = await provision(api.url, api.cafile, first, device_id="gw-1")
    serial = body["certificate_pem"]
    # Re-provisioning also needs proof of the current key or an operator approval (tests/security).
    assert (await api.call("POST", "/api/v1/devices/gw-1/approve-reprovision"))[0] == 200
    status, body, _ = await provision(api.url, api.cafile, first, device_id="gw-1")
    assert status == 200 and body["certificate_pem"] != serial
    status, body, _ = await provision(api.url, api.cafile, other, device_id="gw-1")
    assert status == 409 and "another claim" in body["error"]
    # The refused attempt gave its use back.
    _, listed = await api.call("GET", "/api/v1/claims")
    assert sorted(c["uses_left"] for c in listed["claims"]) == [1, 3]


async def test_revoke_writes_a_crl_and_blocks_reprovisioning(api: Api, hub: Hub) -> None:
    token = (await api.claim(uses=5))["token"]
    serials = {}
    for device_id in ("a", "b", "c"):
        _, body, _ = await provision(api.url, api.cafile, token, device_id=device_id)
        serials[device_id] = x509.load_pem_x509_certificate(body["certificate_pem"].encode()).serial_number
    for device_id in ("a", "c"):
        status, body = await api.call("POST", f"/api/v1/devices/{device_id}/revoke")
        assert status == 200 and body["device"]["status"] == "revoked"
    crl = x509.load_pem_x509_crl(hub.identity.paths.crl.read_bytes())
    ca = x509.load_pem_x509_certificate(api.cafile.read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert {r.serial_number for r in crl} == {serials["a"], serials["c"]}
    assert crl.next_update_utc is not None and crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=300)
    status, body, _ = await provision(api.url, api.cafile, token, device_id="a")
    assert status == 403 and "revoked" in body["error"]
    assert (await api.call("POST", "/api/v1/devices/nope/revoke"))[0] == 404
    assert (await api.call("GET", "/api/v1/devices/nope"))[0] == 404


async def test_metrics_and_ca_are_public(api: Api) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{api.url}/metrics", ssl=client_ssl(api.cafile)) as r:
            assert r.status == 200 and "edgefleet_hub_ingest_dropped_total" in await r.text()
        async with session.get(f"{api.url}/api/v1/ca.pem", ssl=client_ssl(api.cafile)) as r:
            assert (await r.read()) == api.cafile.read_bytes()


async def test_restart_keeps_ca_token_and_devices(api: Api, hub: Hub, tmp_path: Path) -> None:
    # A second Hub on the same data dir loads what the first created.
    from cloud_hub.app import Hub as HubClass

    again = HubClass(hub.config, ingest=False)
    assert again.identity.ca.fingerprint == hub.identity.ca.fingerprint
    assert again.identity.signing_keys() == hub.identity.signing_keys()
