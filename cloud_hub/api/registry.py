"""HTTP handlers of the registry: push/list models, publisher keys, and artifact downloads.

Artifacts: GET and HEAD `/api/v1/artifacts/{sha256}.tar`, for provisioned, non-revoked devices (the client
certificate's CN is the device id; the HTTPS listener asks for an optional client certificate from the hub
CA) or an operator token. Single byte ranges (`bytes=a-b`, `bytes=a-`, `bytes=-n`) answer 206 with
Content-Range, unsatisfiable ones 416; `ETag: "<sha256>"` with If-None-Match -> 304 and If-Range. The file
is streamed in 1 MiB reads off the event loop; it is never read whole into memory.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from cloud_hub.api.keys import HUB_KEY, HubCore
from cloud_hub.errors import Forbidden, InvalidRequest, Unauthorized
from cloud_hub.store import devices

# Largest package upload accepted (the archive limit devices apply as well).
MAX_UPLOAD_BYTES = 4 << 30
CHUNK = 1 << 20
ARTIFACT_PREFIX = "/api/v1/artifacts/"

routes = web.RouteTableDef()
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


# --- models ------------------------------------------------------------------------------------------


@routes.post("/api/v1/models")
async def push_model(request: web.Request) -> web.Response:
    """Body: the package tar (streamed to disk, capped). `?allow_unsigned=1` admits an unsigned package."""
    hub = request.app[HUB_KEY]
    allow_unsigned = request.query.get("allow_unsigned", "").lower() in {"1", "true", "yes"}
    if request.content_length is not None and request.content_length > MAX_UPLOAD_BYTES:
        raise InvalidRequest(f"package is larger than the limit of {MAX_UPLOAD_BYTES} bytes")
    workdir = hub.registry.new_upload()
    upload = workdir / "upload.tar"
    try:
        await _receive(request, upload)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
        raise
    record, created = await hub.registry.push(upload, allow_unsigned=allow_unsigned)
    return web.json_response({"model": record.to_json(), "created": created}, status=201 if created else 200)


async def _receive(request: web.Request, path: Path) -> None:
    size = 0
    loop = asyncio.get_running_loop()
    fh = await asyncio.to_thread(open, path, "wb")
    with fh:
        async for chunk in request.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES:
                raise InvalidRequest(f"package is larger than the limit of {MAX_UPLOAD_BYTES} bytes")
            await loop.run_in_executor(None, fh.write, chunk)
    if size == 0:
        raise InvalidRequest("empty upload: send the package tar as the request body")


@routes.get("/api/v1/models")
async def list_models(request: web.Request) -> web.Response:
    """Every version, `?name=` to filter."""
    found = await request.app[HUB_KEY].registry.list(request.query.get("name") or None)
    return web.json_response({"models": [_summary(m.to_json()) for m in found]})


@routes.get("/api/v1/models/{name}/{version}")
async def show_model(request: web.Request) -> web.Response:
    """One version with its manifest and the hub signature."""
    hub = request.app[HUB_KEY]
    record = await hub.registry.get(request.match_info["name"], request.match_info["version"])
    return web.json_response({"model": {**record.to_json(), "url": record.desired(hub.url).url}})


def _summary(model: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model.items() if k not in {"manifest", "signature"}}


@routes.get("/api/v1/publishers")
async def list_publishers(request: web.Request) -> web.Response:
    """Keys a pushed package may be signed by."""
    return web.json_response({"publishers": request.app[HUB_KEY].registry.publisher_keys()})


@routes.post("/api/v1/publishers")
async def trust_publisher(request: web.Request) -> web.Response:
    """Body {"public_key_pem": "..."}: trust packages signed by this ed25519 key."""
    try:
        body = await request.json()
    except ValueError as exc:
        raise InvalidRequest(f"body is not JSON: {exc}") from exc
    pem = body.get("public_key_pem") if isinstance(body, dict) else None
    if not isinstance(pem, str):
        raise InvalidRequest('body must be {"public_key_pem": "..."}')
    key_id = request.app[HUB_KEY].registry.trust_key(pem.encode())
    return web.json_response({"key_id": key_id}, status=201)


# --- artifacts ---------------------------------------------------------------------------------------


def peer_common_name(request: web.Request) -> str | None:
    """CN of the verified client certificate of this connection, if one was presented."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def authorize_download(request: web.Request, hub: HubCore) -> str:
    """'operator' or the device id; Unauthorized/Forbidden otherwise."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        if not hub.check_token(token.strip()):
            raise Unauthorized("invalid token")
        return "operator"
    device_id = peer_common_name(request)
    if device_id is None:
        raise Forbidden("artifact downloads need a device certificate from the hub CA or an operator token")
    async with hub.store.begin() as conn:
        record = await devices.get(conn, device_id)
    if record is None:
        raise Forbidden(f"device {device_id!r} is not provisioned")
    if record.status != devices.ACTIVE:
        raise Forbidden(f"device {device_id!r} is revoked")
    return device_id


class RangeNotSatisfiable(Exception):
    """The Range header asks for bytes the file does not have (answered 416 by the handler)."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single `bytes=` range, None to send everything; RangeNotSatisfiable."""
    if not header:
        return None
    m = _RANGE.fullmatch(header.strip())
    if m is None:
        return None  # several ranges or another unit: RFC 9110 lets a server ignore the header
    first, last = m.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size - 1
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if start >= size or (last and int(last) < start):
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"range not satisfiable: the artifact has {size} bytes")


def _etag_matches(header: str, etag: str) -> bool:
    tags = {t.strip().removeprefix("W/") for t in header.split(",")}
    return "*" in tags or etag in tags


@routes.get(ARTIFACT_PREFIX + "{sha256:[0-9a-f]{64}}.tar")
async def artifact(request: web.Request) -> web.StreamResponse:
    """Stream a stored package tar (GET and HEAD), honouring Range, If-None-Match and If-Range."""
    hub = request.app[HUB_KEY]
    who = await authorize_download(request, hub)
    sha = request.match_info["sha256"]
    if who != "operator":
        # A device gets only what its own desired state names (models, and trials' candidates: issue 16),
        # not any package whose sha it knows.
        desired = await hub.desired.current(who)
        named = () if desired is None else (*desired.models, *(t.candidate for t in desired.trials))
        if all(m.sha256 != sha for m in named):
            raise Forbidden(f"artifact {sha} is not in device {who!r}'s desired state")
    path = await hub.registry.artifact(sha)
    etag = f'"{sha}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match and _etag_matches(if_none_match, etag):
        return web.Response(status=304, headers=headers)
    size = path.stat().st_size
    if_range = request.headers.get("If-Range")
    try:
        wanted = None if if_range and if_range.strip() != etag else parse_range(request.headers.get("Range"), size)
    except RangeNotSatisfiable as exc:
        # Returned, not raised: the error middleware would drop the Content-Range header.
        headers["Content-Range"] = f"bytes */{size}"
        return web.json_response({"error": str(exc)}, status=416, headers=headers)
    start, end = wanted if wanted is not None else (0, size - 1)
    response = web.StreamResponse(status=206 if wanted is not None else 200, headers=headers)
    response.content_type = "application/x-tar"
    response.content_length = end - start + 1 if size else 0
    if wanted is not None:
        response.headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    await response.prepare(request)
    if request.method != "HEAD" and size:
        await _stream(response, path, start, end - start + 1)
    await response.write_eof()
    return response


async def _stream(response: web.StreamResponse, path: Path, offset: int, length: int) -> None:
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDONLY)
    try:
        while length > 0:
            chunk = await loop.run_in_executor(None, os.pread, fd, min(CHUNK, length), offset)
            if not chunk:
                raise OSError(f"{path} shrank while being served")
            await response.write(chunk)
            offset += len(chunk)
            length -= len(chunk)
    finally:
        os.close(fd)
