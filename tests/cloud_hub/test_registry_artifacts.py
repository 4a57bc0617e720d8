"""Artifact downloads over the hub's real HTTPS listener: device certificates, Range, ETag, revocation."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from devices_support import client_ssl, provision, write_identity
from hub_support import give_desired
from multidict import CIMultiDict
from rig import TestPKI
from test_hub_api import Api
from test_registry import push, trust_zoo, zoo_tar

from cloud_hub.app import Hub


@pytest.fixture
def api(hub: Hub) -> Api:
    return Api(hub)


def device_ssl(cafile: Path, cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = client_ssl(cafile)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


async def get(
    url: str, ctx: ssl.SSLContext, *, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Mapping[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, ssl=ctx, headers=headers) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def _setup(api: Api, tmp_path: Path) -> tuple[dict[str, Any], bytes, ssl.SSLContext]:
    await trust_zoo(api)
    status, body = await push(api, zoo_tar(tmp_path))
    assert status == 201
    model = body["model"]
    stored = api.hub.identity.paths.data_dir / "artifacts" / model["sha256"][:2] / f"{model['sha256']}.tar"
    claim = await api.claim(uses=2)
    status, prov, key = await provision(api.url, api.cafile, claim["token"], device_id="dev-a")
    assert status == 200, prov
    cert = write_identity(tmp_path / "dev-a", key, prov["certificate_pem"])
    await give_desired(api.hub, "dev-a", model["name"], model["version"])  # devices get what they are given
    return model, stored.read_bytes(), device_ssl(api.cafile, cert)


async def test_device_downloads_whole_ranges_etag_head(api: Api, tmp_path: Path) -> None:
    model, content, ctx = await _setup(api, tmp_path)
    url = f"{api.url}/api/v1/artifacts/{model['sha256']}.tar"
    size = len(content)
    etag = f'"{model["sha256"]}"'

    status, headers, body = await get(url, ctx)
    assert status == 200 and body == content
    assert headers["ETag"] == etag and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "application/x-tar" and int(headers["Content-Length"]) == size

    # An interrupted download resumes where it stopped.
    status, headers, first = await get(url, ctx, headers={"Range": "bytes=0-999"})
    assert status == 206 and headers["Content-Range"] == f"bytes 0-999/{size}" and first == content[:1000]
    status, headers, rest = await get(url, ctx, headers={"Range": "bytes=1000-"})
    assert status == 206 and headers["Content-Range"] == f"bytes 1000-{size - 1}/{size}"
    assert first + rest == content
    status, _, tail = await get(url, ctx, headers={"Range": "bytes=-10"})
    assert status == 206 and tail == content[-10:]
    status, _, clipped = await get(url, ctx, headers={"Range": f"bytes={size - 5}-{size + 100}"})
    assert status == 206 and clipped == content[-5:]

    for bad in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0", "bytes=50-10"):
        status, headers, body = await get(url, ctx, headers={"Range": bad})
        assert status == 416 and headers["Content-Range"] == f"bytes */{size}", bad
    # Several ranges, or another unit: ignored, the whole file.
    status, _, body = await get(url, ctx, headers={"Range": "bytes=0-1,5-6"})
    assert status == 200 and body == content
    # If-Range with another validator: the range is ignored.
    status, _, body = await get(url, ctx, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert status == 200 and body == content
    status, _, body = await get(url, ctx, headers={"Range": "bytes=0-9", "If-Range": etag})
    assert status == 206 and body == content[:10]

    status, headers, body = await get(url, ctx, headers={"If-None-Match": etag})
    assert status == 304 and body == b"" and headers["ETag"] == etag
    status, _, body = await get(url, ctx, headers={"If-None-Match": '"something-else"'})
    assert status == 200 and body == content

    status, headers, body = await get(url, ctx, method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == size

    # An unknown sha: not in the device's desired state, so 403 (no oracle for what exists); the operator: 404.
    status, _, body = await get(f"{api.url}/api/v1/artifacts/{'0' * 64}.tar", ctx)
    assert status == 403 and b"desired state" in body
    bearer = {"Authorization": f"Bearer {api.token}"}
    status, _, body = await get(f"{api.url}/api/v1/artifacts/{'0' * 64}.tar", client_ssl(api.cafile), headers=bearer)
    assert status == 404 and b"error" in body


async def test_who_may_download(api: Api, hub: Hub, tmp_path: Path, mqtt_pki: TestPKI) -> None:
    model, content, ctx = await _setup(api, tmp_path)
    url = f"{api.url}/api/v1/artifacts/{model['sha256']}.tar"

    # No client certificate, no token: 403 with the reason.
    status, _, body = await get(url, client_ssl(api.cafile))
    assert status == 403 and b"device certificate" in body
    # The operator token (the CLI): 200.
    status, _, body = await get(url, client_ssl(api.cafile), headers={"Authorization": f"Bearer {api.token}"})
    assert status == 200 and body == content
    status, _, _ = await get(url, client_ssl(api.cafile), headers={"Authorization": "Bearer wrong"})
    assert status == 401
    # A certificate from the hub CA that is not a device (the hub's own MQTT identity): 403.
    paths = hub.identity.paths
    status, _, body = await get(url, device_ssl(api.cafile, (paths.hub_cert, paths.hub_key)))
    assert status == 403 and b"not provisioned" in body
    # A certificate from another CA with a provisioned device's CN: the handshake fails.
    rogue = device_ssl(api.cafile, mqtt_pki.client("dev-a"))
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        status, _, _ = await get(url, rogue)
        assert status == 403  # TLS 1.3 may report the refusal only on the first read

    # Revoked: 403 from then on.
    assert (await get(url, ctx))[0] == 200
    assert (await api.call("POST", "/api/v1/devices/dev-a/revoke"))[0] == 200
    status, _, body = await get(url, ctx)
    assert status == 403 and b"revoked" in body
