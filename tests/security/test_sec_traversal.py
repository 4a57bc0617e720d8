"""Path traversal: package members pushed to the hub, model names in hub and agent URLs, desired state."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from agent_support import standalone_config
from pydantic import ValidationError
from sec_support import HubApi

from cloud_hub.app import Hub
from edge_agent.app import Agent
from edge_agent.reconcile.download import Downloader
from edge_agent.reconcile.errors import DownloadError
from models.zoo import ZOO_PUBLIC_KEY_FILE, zoo_package_path
from protocols.messages import DesiredModel, DesiredState

_EVIL = [
    ("../escaped", tarfile.REGTYPE, ""),
    ("a/../../escaped", tarfile.REGTYPE, ""),
    ("/tmp/escaped-abs", tarfile.REGTYPE, ""),
    ("./../escaped", tarfile.REGTYPE, ""),
    ("link", tarfile.SYMTYPE, "/etc/passwd"),
    ("dir-link", tarfile.SYMTYPE, ".."),
    ("hard", tarfile.LNKTYPE, "/etc/passwd"),
    ("fifo", tarfile.FIFOTYPE, ""),
]


def _evil_tar(path: Path, name: str, kind: bytes, linkname: str) -> bytes:
    """The zoo's tiny-mlp package as a tar, plus one hostile member (placed first and last)."""
    pkg = zoo_package_path("tiny-mlp", "1")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for where in ("first", "files", "last"):
            if where == "files":
                for f in sorted(pkg.iterdir()):
                    tar.add(f, arcname=f.name)
                continue
            info = tarfile.TarInfo(name if where == "first" else f"{name}-2")
            info.type, info.linkname = kind, linkname
            data = b"pwned" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _all_files(root: Path) -> set[str]:
    return {str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files}


@pytest.mark.parametrize("evil", _EVIL, ids=[e[0] for e in _EVIL])
async def test_hub_refuses_tars_with_hostile_members(
    hub: Hub, api: HubApi, tmp_path: Path, evil: tuple[str, bytes, str]
) -> None:
    name, kind, linkname = evil
    status, _ = await api.call("POST", "/api/v1/publishers", {"public_key_pem": ZOO_PUBLIC_KEY_FILE.read_text()})
    assert status == 201
    before = _all_files(tmp_path)
    status, body = await api.request(
        "POST", "/api/v1/models", data=_evil_tar(tmp_path / "evil.tar", name, kind, linkname)
    )
    assert status == 400, body
    assert json.loads(body)["error"].startswith("package rejected: archive member"), body
    # Nothing was written anywhere: no escaped file, no upload left behind, no model registered.
    assert _all_files(tmp_path) == before
    assert not Path("/tmp/escaped-abs").exists()
    status, listing = await api.call("GET", "/api/v1/models")
    assert listing == {"models": []}


_AGENT_TARGETS = [
    ("POST", "/v2/models/..%2f..%2fetc%2fpasswd/infer"),
    ("POST", "/v2/models/../../etc/passwd/infer"),
    ("POST", "/v2/models/%2e%2e/infer"),
    ("POST", "/v2/models/tiny-mlp/versions/..%2f..%2f1/infer"),
    ("POST", "/v2/models/tiny-mlp/versions/../1/infer"),
    ("GET", "/v2/models/..%2f..%2fetc%2fpasswd"),
    ("GET", "/v2/models/..%2ftiny-mlp/ready"),
    ("GET", "/v2/models/%2Fetc%2Fpasswd"),
    ("GET", "/v2/models/tiny-mlp/versions/%2e%2e"),
    ("GET", "/v2/models/tiny-mlp%00/ready"),
    ("GET", "/../../etc/passwd"),
    ("GET", "/v2/../../etc/passwd"),
]


async def test_agent_v2_paths_with_traversal_are_refused(aiohttp_client: Any) -> None:
    agent = Agent(standalone_config())
    app = agent.http
    client = await aiohttp_client(app)
    await agent.startup
    passwd = Path("/etc/passwd").read_bytes()[:32]
    body = b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[' + b",".join([b"0"] * 64) + b"]}]}"
    for method, target in _AGENT_TARGETS:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))} if method == "POST" else {}
        status, answer = await _raw_agent(
            client.server.host,
            client.server.port,
            f"{method} {target} HTTP/1.1",
            headers,
            body if method == "POST" else b"",
        )
        assert status in (400, 404), (target, status, answer[:200])
        assert set(json.loads(answer)) == {"error"}
        assert passwd not in answer


async def _raw_agent(host: str, port: int, line: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    import asyncio

    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = "\r\n".join([line, f"Host: {host}", "Connection: close", *[f"{k}: {v}" for k, v in headers.items()]])
        writer.write(head.encode() + b"\r\n\r\n" + body)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    top, _, payload = data.partition(b"\r\n\r\n")
    return int(top.split(b" ", 2)[1]), payload


def _desired(**model: Any) -> dict[str, Any]:
    entry = {
        "name": "tiny-mlp",
        "version": "1",
        "sha256": "a" * 64,
        "size": 10,
        "url": "https://hub.example:8443/api/v1/artifacts/" + "a" * 64 + ".tar",
        "signature": {
            "key_id": "0123456789abcdef",
            "algorithm": "ed25519",
            "signature": base64.b64encode(bytes(64)).decode(),
        },
        **model,
    }
    return {"device_id": "dev-a", "revision": 2, "issued_at": 1.0, "models": [entry]}


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "../x"},
        {"name": ".."},
        {"name": "a/b"},
        {"name": "/etc/passwd"},
        {"name": "..\\x"},
        {"name": ".hidden"},
        {"name": "a\x00b"},
        {"version": ".."},
        {"version": "../1"},
        {"version": "1/../../x"},
        {"sha256": "../" + "a" * 61},
        {"sha256": "A" * 64},
    ],
)
def test_desired_state_with_traversal_is_invalid(bad: dict[str, str]) -> None:
    DesiredState.model_validate(_desired())  # the baseline is valid
    with pytest.raises(ValidationError):
        DesiredState.model_validate(_desired(**bad))


@pytest.mark.parametrize(
    "url", ["http://hub.example/api/v1/artifacts/x.tar", "file:///etc/passwd", "ftp://x/y", "/etc/passwd"]
)
async def test_reconciler_downloads_only_over_https(tmp_path: Path, url: str) -> None:
    model = DesiredModel.model_validate({**_desired()["models"][0], "url": url})
    async with Downloader(tmp_path / "downloads", None) as downloader:
        with pytest.raises(DownloadError, match="not https") as info:
            await downloader.fetch(model)
    assert info.value.permanent
    assert not (tmp_path / "downloads").exists() or _all_files(tmp_path / "downloads") == set()
