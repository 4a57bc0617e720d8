"""The model registry over the real HTTPS API: push (verify, trust, re-sign, idempotent, 409) and list."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from devices_support import client_ssl
from test_hub_api import Api

from cloud_hub.app import Hub
from models import signing
from models.package import file_sha256, open_package, pack_tar, sign_package, verify_package
from models.zoo import ZOO_PUBLIC_KEY_FILE, zoo_package_path
from protocols.manifest import MANIFEST_FILE, SIGNATURE_FILE, Manifest


@pytest.fixture
def api(hub: Hub) -> Api:
    return Api(hub)


async def push(api: Api, tar: Path, *, allow_unsigned: bool = False) -> tuple[int, dict[str, Any]]:
    """POST a package tar as the request body."""
    query = "?allow_unsigned=1" if allow_unsigned else ""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{api.url}/api/v1/models{query}",
            data=tar.read_bytes(),
            headers={"Authorization": f"Bearer {api.token}", "Content-Type": "application/x-tar"},
            ssl=client_ssl(api.cafile),
        ) as resp,
    ):
        return resp.status, await resp.json()


async def trust_zoo(api: Api) -> str:
    status, body = await api.call("POST", "/api/v1/publishers", {"public_key_pem": ZOO_PUBLIC_KEY_FILE.read_text()})
    assert status == 201, body
    return str(body["key_id"])


def zoo_tar(tmp: Path, name: str = "tiny-cnn", version: str = "1") -> Path:
    return pack_tar(zoo_package_path(name, version), tmp / f"{name}-{version}.tar")


def copy_zoo(tmp: Path, name: str = "tiny-cnn", version: str = "1") -> Path:
    target = tmp / f"copy-{name}-{version}"
    shutil.copytree(zoo_package_path(name, version), target)
    return target


async def test_push_needs_a_trusted_publisher_then_is_resigned_and_idempotent(
    api: Api, hub: Hub, tmp_path: Path
) -> None:
    tar = zoo_tar(tmp_path)
    zoo_kid = signing.key_id(signing.load_public_key(ZOO_PUBLIC_KEY_FILE))
    hub_kid = signing.key_id(hub.identity.signing_key.public_key())
    status, body = await push(api, tar)
    assert status == 400
    assert body["error"] == f"package rejected: manifest signed by untrusted key '{zoo_kid}' (trusted: {hub_kid})"

    assert await trust_zoo(api) == zoo_kid
    status, body = await api.call("GET", "/api/v1/publishers")
    assert {p["key_id"]: p["source"] for p in body["publishers"]} == {hub_kid: "hub", zoo_kid: "trusted-publishers"}

    status, body = await push(api, tar)
    assert status == 201 and body["created"] is True, body
    model = body["model"]
    assert (model["name"], model["version"], model["publisher_key_id"]) == ("tiny-cnn", "1", zoo_kid)
    assert model["signature"]["key_id"] == hub_kid
    stored = hub.identity.paths.data_dir / "artifacts" / model["sha256"][:2] / f"{model['sha256']}.tar"
    assert file_sha256(stored) == (model["sha256"], model["size"])
    # The stored tar is the package signed by the hub: it verifies with the hub key alone.
    pkg = open_package(stored, extract_to=tmp_path / "stored")
    verify_package(pkg, {hub_kid: hub.identity.signing_key.public_key()})
    assert pkg.signature is not None and pkg.signature.model_dump() == model["signature"]
    assert pack_tar(pkg.path, tmp_path / "again.tar").read_bytes() == stored.read_bytes()  # deterministic

    # Same content again (here as a directory-made tar, byte-identical): same row, 200.
    status, again = await push(api, tar)
    assert status == 200 and again["created"] is False and again["model"] == model

    status, listed = await api.call("GET", "/api/v1/models")
    assert [(m["name"], m["version"], m["sha256"]) for m in listed["models"]] == [("tiny-cnn", "1", model["sha256"])]
    status, shown = await api.call("GET", "/api/v1/models/tiny-cnn/1")
    assert shown["model"]["url"] == f"{hub.url}/api/v1/artifacts/{model['sha256']}.tar"
    assert shown["model"]["manifest"]["name"] == "tiny-cnn"
    assert (await api.call("GET", "/api/v1/models/tiny-cnn/9"))[0] == 404
    assert (await api.call("GET", "/api/v1/models?name=tiny-mlp"))[1] == {"models": []}


async def test_other_content_under_an_existing_version_is_409(api: Api, tmp_path: Path) -> None:
    await trust_zoo(api)
    assert (await push(api, zoo_tar(tmp_path)))[0] == 201
    # A publisher key of our own, trusted, signs tiny-cnn "1" with other content (version 2's weights).
    key, public = signing.generate_keypair()
    status, _ = await api.call(
        "POST", "/api/v1/publishers", {"public_key_pem": signing.public_key_pem(public).decode()}
    )
    assert status == 201
    other = copy_zoo(tmp_path, "tiny-cnn", "2")
    manifest = Manifest.model_validate_json((other / MANIFEST_FILE).read_bytes())
    (other / MANIFEST_FILE).write_text(json.dumps(manifest.model_copy(update={"version": "1"}).model_dump(mode="json")))
    sign_package(other, key)
    status, body = await push(api, pack_tar(other, tmp_path / "other.tar"))
    assert status == 409
    assert body["error"].startswith("model 'tiny-cnn' version '1' already exists with other content")


async def test_tampered_and_unsigned_packages_are_refused_with_the_reason(api: Api, tmp_path: Path) -> None:
    await trust_zoo(api)
    tampered = copy_zoo(tmp_path)
    manifest = Manifest.model_validate_json((tampered / MANIFEST_FILE).read_bytes())
    model_file = tampered / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[-1] ^= 0xFF
    model_file.write_bytes(bytes(data))
    actual, _ = file_sha256(model_file)
    status, body = await push(api, pack_tar(tampered, tmp_path / "tampered.tar"))
    assert status == 400
    expected = manifest.file("model.onnx").sha256
    assert body["error"] == f"package rejected: file 'model.onnx': manifest sha256 {expected}, actual {actual}"

    unsigned = copy_zoo(tmp_path, "tiny-mlp", "1")
    (unsigned / SIGNATURE_FILE).unlink()
    tar = pack_tar(unsigned, tmp_path / "unsigned.tar")
    status, body = await push(api, tar)
    assert status == 400
    assert body["error"] == "package rejected: package 'tiny-mlp' version '1' has no manifest.sig.json"
    status, body = await push(api, tar, allow_unsigned=True)
    assert status == 201 and body["model"]["publisher_key_id"] is None

    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 10)
    status, body = await push(api, junk)
    assert status == 400 and body["error"].startswith("package rejected:")
    with tarfile.open(tmp_path / "evil.tar", "w") as tar_file:
        info = tarfile.TarInfo("../escape")
        tar_file.addfile(info)
    status, body = await push(api, tmp_path / "evil.tar")
    assert status == 400 and "escapes" in body["error"]
    # Nothing is left behind in the upload area.
    incoming = api.hub.identity.paths.data_dir / "artifacts" / ".incoming"
    assert list(incoming.iterdir()) == []


async def test_push_needs_the_operator_token(api: Api, tmp_path: Path) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api.url}/api/v1/models", data=b"x", ssl=client_ssl(api.cafile)) as resp,
    ):
        assert resp.status == 401
