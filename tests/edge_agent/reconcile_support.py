"""Helpers of the reconciler's tests: hub-signed artifacts, a broken model, an mTLS artifact server, a link."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel
from rig.onnx_models import broken_onnx

from models.package import build_package, pack_tar, sign_package
from models.signing import Ed25519PrivateKey, generate_keypair, key_id, public_key_pem
from models.zoo import zoo_package_path
from protocols.manifest import MANIFEST_FILE, SIGNATURE_FILE, TensorSpec
from protocols.messages import DesiredModel, DesiredState, SigningKey
from protocols.signature import ManifestSignature


@dataclass
class HubKey:
    """The hub's model-signing key and its pinned form."""

    private: Ed25519PrivateKey
    pinned: SigningKey

    @classmethod
    def generate(cls) -> HubKey:
        """A fresh key."""
        private, public = generate_keypair()
        return cls(private, SigningKey(key_id=key_id(public), public_key_pem=public_key_pem(public).decode()))


@dataclass
class Artifact:
    """A hub-signed package tar and the desired entry that names it."""

    tar: Path
    name: str
    version: str
    sha256: str
    size: int
    signature: ManifestSignature

    def desired(self, base_url: str) -> DesiredModel:
        """The DesiredModel for this artifact served at `base_url`."""
        return DesiredModel(
            name=self.name,
            version=self.version,
            sha256=self.sha256,
            size=self.size,
            url=f"{base_url}/api/v1/artifacts/{self.sha256}.tar",
            signature=self.signature,
        )


def _tar_of(pkg_dir: Path, out: Path, key: Ed25519PrivateKey) -> Artifact:
    pkg = sign_package(pkg_dir, key)
    assert pkg.signature is not None
    pack_tar(pkg_dir, out)
    data = out.read_bytes()
    return Artifact(
        out,
        pkg.manifest.name,
        pkg.manifest.version,
        hashlib.sha256(data).hexdigest(),
        len(data),
        pkg.signature,
    )


def hub_artifact(name: str, version: str, work: Path, key: HubKey, *, padding_bytes: int = 0) -> Artifact:
    """A zoo package re-signed by the hub key (optionally with a padding file to make it large), as a tar."""
    src = zoo_package_path(name, version)
    pkg_dir = work / f"pkg-{name}-{version}-{padding_bytes}"
    shutil.rmtree(pkg_dir, ignore_errors=True)
    if padding_bytes:
        from models.package import read_manifest

        manifest, _ = read_manifest(src)
        pad = work / "padding.bin"
        pad.write_bytes(hashlib.shake_256(b"pad").digest(padding_bytes))
        build_package(
            [src / manifest.model_file, pad],
            pkg_dir,
            name=name,
            version=version,
            inputs=manifest.inputs,
            outputs=manifest.outputs,
            max_batch_size=manifest.max_batch_size,
        )
    else:
        shutil.copytree(src, pkg_dir)
        (pkg_dir / SIGNATURE_FILE).unlink(missing_ok=True)
    return _tar_of(pkg_dir, work / f"{name}-{version}-{padding_bytes}.tar", key.private)


def broken_artifact(name: str, version: str, work: Path, key: HubKey) -> Artifact:
    """A signed package with tiny-cnn's metadata whose model fails at its first run (warm-up)."""
    onnx_file = work / "model.onnx"
    broken_onnx(onnx_file)
    pkg_dir = work / f"pkg-broken-{name}-{version}"
    shutil.rmtree(pkg_dir, ignore_errors=True)
    build_package(
        onnx_file,
        pkg_dir,
        name=name,
        version=version,
        inputs=(TensorSpec(name="input", datatype="FP32", shape=(-1, 3, 64, 64)),),
        outputs=(TensorSpec(name="scores", datatype="FP32", shape=(-1, 4)),),
        max_batch_size=8,
    )
    assert (pkg_dir / MANIFEST_FILE).is_file()
    return _tar_of(pkg_dir, work / f"broken-{name}-{version}.tar", key.private)


# --- an artifact server with the hub's download semantics, over mTLS ----------------------------------------


@dataclass
class ArtifactServer:
    """Serves `files` (sha -> path) like the hub: Range, ETag/If-Range, client certificate required."""

    files: dict[str, Path] = field(default_factory=dict)
    drop_after: dict[str, int] = field(default_factory=dict)  # sha -> bytes sent before cutting, once
    ignore_range: bool = False
    status: int | None = None  # answer every request with this status
    delay_s: float = 0.0  # pause between 16 KiB chunks (slow link)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (sha, Range header)
    peers: list[str | None] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /api/v1/artifacts/{sha}.tar."""
        sha = request.match_info["sha"]
        self.requests.append((sha, request.headers.get("Range")))
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        cert = ssl_object.getpeercert() if ssl_object else None
        self.peers.append(dict(x[0] for x in cert["subject"]).get("commonName") if cert else None)
        if self.status is not None:
            return web.json_response({"error": "refused"}, status=self.status)
        path = self.files.get(sha)
        if path is None:
            return web.json_response({"error": "unknown"}, status=404)
        data = path.read_bytes()
        start = 0
        header = request.headers.get("Range")
        etag = f'"{sha}"'
        status = 200
        headers = {"ETag": etag, "Accept-Ranges": "bytes"}
        if header and not self.ignore_range and request.headers.get("If-Range", etag) == etag:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{len(data)}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data) - start
        await response.prepare(request)
        cut = self.drop_after.pop(sha, None)
        pos = start
        while pos < len(data):
            end = min(len(data), pos + 16384)
            if cut is not None and end > cut:
                await response.write(data[pos:cut])
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.close()  # a dropped connection mid-body
                return response
            await response.write(data[pos:end])
            pos = end
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        await response.write_eof()
        return response


async def start_artifact_server(
    server: ArtifactServer, certfile: Path, keyfile: Path, cafile: Path
) -> Callable[[], Awaitable[None]]:
    """Run `server` on a free loopback port with mTLS; returns the coroutine function that stops it."""
    app = web.Application()
    app.router.add_get("/api/v1/artifacts/{sha}.tar", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(cafile))
    ctx.load_cert_chain(str(certfile), str(keyfile))
    ctx.verify_mode = ssl.CERT_REQUIRED
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"https://127.0.0.1:{port}"
    return runner.cleanup


# --- a link that records what the reporter publishes --------------------------------------------------------


@dataclass
class RecordingLink:
    """The reporter's link boundary: always connected, keeps every publish."""

    published: list[tuple[str, bytes, int, bool]] = field(default_factory=list)
    connected: bool = True

    async def publish(
        self,
        topic: str,
        payload: bytes | str | BaseModel,
        *,
        qos: Literal[0, 1] = 0,
        retain: bool = False,
        timeout_s: float | None = None,
    ) -> None:
        data = payload.model_dump_json().encode() if isinstance(payload, BaseModel) else payload
        self.published.append((topic, data.encode() if isinstance(data, str) else data, qos, retain))

    def on_connected(self, callback: Callable[[], Awaitable[None]]) -> None:
        pass

    def payloads(self, suffix: str) -> list[dict[str, Any]]:
        """Decoded payloads published on topics ending with `suffix`."""
        import json

        return [json.loads(p) for t, p, _q, _r in self.published if t.endswith(suffix)]


def desired_state(device_id: str, revision: int, *models: DesiredModel, **extra: Any) -> DesiredState:
    """A DesiredState for tests."""
    return DesiredState(device_id=device_id, revision=revision, issued_at=0.0, models=models, **extra)
