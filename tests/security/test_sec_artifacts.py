"""Artifact downloads and device certificates: only provisioned, non-revoked devices (or the operator) get bytes."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import aiohttp
import pytest
from devices_support import provision, write_identity
from hub_support import give_desired
from rig import TestPKI
from sec_support import HubApi, raw_request

from cloud_hub.app import Hub
from models.package import pack_tar
from models.zoo import ZOO_PUBLIC_KEY_FILE, zoo_package_path


async def _pushed(api: HubApi, tmp_path: Path) -> tuple[str, bytes]:
    status, _ = await api.call("POST", "/api/v1/publishers", {"public_key_pem": ZOO_PUBLIC_KEY_FILE.read_text()})
    assert status == 201
    tar = pack_tar(zoo_package_path("tiny-mlp", "1"), tmp_path / "tiny-mlp-1.tar")
    status, raw = await api.request("POST", "/api/v1/models", data=tar.read_bytes())
    assert status == 201, raw
    sha = json.loads(raw)["model"]["sha256"]
    status, content = await api.request("GET", f"/api/v1/artifacts/{sha}.tar")
    assert status == 200
    return sha, content


async def _device(api: HubApi, tmp_path: Path, device_id: str) -> tuple[Path, Path]:
    status, claim = await api.call("POST", "/api/v1/claims", {"uses": 1})
    assert status == 201
    status, body, key = await provision(api.url, api.cafile, claim["token"], device_id=device_id)
    assert status == 200, body
    return write_identity(tmp_path / device_id, key, body["certificate_pem"])


async def test_artifacts_need_a_provisioned_active_device_or_the_operator(
    hub: Hub, api: HubApi, tmp_path: Path, mqtt_pki: TestPKI
) -> None:
    sha, content = await _pushed(api, tmp_path)
    path = f"/api/v1/artifacts/{sha}.tar"
    device = await _device(api, tmp_path, "dev-sec")
    await give_desired(hub, "dev-sec", "tiny-mlp", "1")

    # No certificate and no token.
    for method in ("GET", "HEAD"):
        status, body = await api.request(method, path, token="")
        assert status == 403 and (method == "HEAD" or b"device certificate" in body)
    # A certificate from the hub CA whose CN was never provisioned (stolen CA-signed leaf, the hub's own).
    ghost = (tmp_path / "ghost.pem", tmp_path / "ghost.key")
    hub.identity.issue_keypair("ghost", *ghost, server=False)
    for cert in (ghost, (hub.identity.paths.hub_cert, hub.identity.paths.hub_key)):
        status, body = await api.request("GET", path, token="", cert=cert)
        assert status == 403 and b"not provisioned" in body and content not in body
    # A certificate from another CA carrying the device's own CN: refused in the TLS handshake (or 403).
    for rogue in (mqtt_pki.client("dev-sec"), mqtt_pki.rogue_client("dev-sec")):
        try:
            status, body = await api.request("GET", path, token="", cert=rogue)
        except (aiohttp.ClientError, ssl.SSLError):
            continue
        assert status == 403 and content not in body
    # A wrong token is 401 even with a good certificate (a presented credential must be valid).
    status, _ = await api.request("GET", path, token="wrong-token-0123456789", cert=device)
    assert status == 401
    # The device itself: the bytes.
    status, body = await api.request("GET", path, token="", cert=device)
    assert status == 200 and body == content
    # A device certificate is no operator credential.
    for method, op in (("GET", "/api/v1/devices"), ("POST", "/api/v1/claims"), ("GET", "/api/v1/models")):
        status, _ = await api.request(method, op, token="", cert=device, json={})
        assert status == 401, op
    # Revoked: 403 from the next request on, over the same certificate.
    status, _ = await api.call("POST", "/api/v1/devices/dev-sec/revoke")
    assert status == 200
    for method in ("GET", "HEAD"):
        status, body = await api.request(method, path, token="", cert=device)
        assert status == 403 and (method == "HEAD" or b"revoked" in body)
    # ...and it cannot come back through provisioning with a fresh claim.
    status, claim = await api.call("POST", "/api/v1/claims", {"uses": 1})
    status, body, _ = await provision(api.url, api.cafile, claim["token"], device_id="dev-sec")
    assert status == 403, body


async def test_a_device_gets_only_the_artifacts_of_its_own_desired_state(hub: Hub, api: HubApi, tmp_path: Path) -> None:
    """Issue 15 item 7: knowing a sha is not enough; the device's desired state must name it."""
    sha, content = await _pushed(api, tmp_path)
    tar = pack_tar(zoo_package_path("tiny-cnn", "1"), tmp_path / "tiny-cnn-1.tar")
    status, raw = await api.request("POST", "/api/v1/models", data=tar.read_bytes())
    assert status == 201, raw
    other = json.loads(raw)["model"]["sha256"]
    mine, theirs = await _device(api, tmp_path, "dev-mine"), await _device(api, tmp_path, "dev-theirs")
    await give_desired(hub, "dev-mine", "tiny-mlp", "1")
    await give_desired(hub, "dev-theirs", "tiny-cnn", "1")
    status, body = await api.request("GET", f"/api/v1/artifacts/{sha}.tar", token="", cert=mine)
    assert status == 200 and body == content
    for cert, wanted in ((mine, other), (theirs, sha)):  # each other's package: refused, no byte of it
        status, body = await api.request("GET", f"/api/v1/artifacts/{wanted}.tar", token="", cert=cert)
        assert status == 403 and b"desired state" in body and content not in body
    # The operator (CLI, mirroring) still gets any artifact.
    assert (await api.request("GET", f"/api/v1/artifacts/{other}.tar"))[0] == 200


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/artifacts/../pki/ca.key",
        "/api/v1/artifacts/..%2f..%2fpki%2fca.key",
        "/api/v1/artifacts/%2e%2e/%2e%2e/pki/ca.key",
        "/api/v1/artifacts/../../operator-token",
        "/api/v1/artifacts/" + "0" * 63 + "/.tar",
        "/api/v1/artifacts/" + "A" * 64 + ".tar",
        "/api/v1/artifacts//etc/passwd",
        "/api/v1/models/..%2f..%2fpki/ca.key",
        "/api/v1/models/../../pki/ca.key",
        "/api/v1/models/%2e%2e/%2e%2e",
        "/api/v1/devices/..%2f..%2foperator-token",
        "/api/v1/rollouts/..%2f..%2fhub.db",
        "/../../../etc/passwd",
    ],
)
async def test_traversal_in_hub_paths_reads_no_file(hub: Hub, api: HubApi, target: str) -> None:
    host, port = api.url.removeprefix("https://").rsplit(":", 1)
    secrets = [
        hub.identity.paths.ca_key.read_bytes(),
        hub.identity.paths.operator_token.read_bytes().strip(),
        Path("/etc/passwd").read_bytes()[:64],
    ]
    for auth in ({}, {"Authorization": f"Bearer {api.token}"}):
        status, body = await raw_request(host, int(port), f"GET {target} HTTP/1.1", ctx=api.ssl(), headers=auth)
        assert status in (400, 401, 403, 404), (target, status, body[:200])
        assert set(json.loads(body)) == {"error"}
        assert not any(secret in body for secret in secrets)
