"""Helpers of the security checks (importable by name): operator calls, raw HTTP, the hub's broker, routes."""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from rig import Mosquitto

from cloud_hub.pki import HubIdentity

SHA = "0" * 64


@dataclass
class HubApi:
    """Operator calls against a running hub."""

    url: str
    cafile: Path
    token: str

    def ssl(self, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
        """Trust the hub CA only; present `cert` (certfile, keyfile) if given."""
        ctx = ssl.create_default_context(cafile=str(self.cafile))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
        cert: tuple[Path, Path] | None = None,
    ) -> tuple[int, bytes]:
        """(status, body); `token` None = the operator token, "" = no Authorization header."""
        sent = dict(headers or {})
        chosen = self.token if token is None else token
        if chosen:
            sent.setdefault("Authorization", f"Bearer {chosen}")
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, json=json, data=data, headers=sent, ssl=self.ssl(cert)) as resp,
        ):
            return resp.status, await resp.read()

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        """A JSON call; (status, decoded body)."""
        import json as _json

        status, raw = await self.request(method, path, json=body, **kwargs)
        return status, _json.loads(raw) if raw else None


async def raw_request(
    host: str, port: int, request_line: str, *, ctx: ssl.SSLContext | None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request with the target exactly as given (no client normalisation of '..')."""
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if ctx else None)
    try:
        lines = [request_line, f"Host: {host}:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


_GROUP = re.compile(r"\(\?P<(\w+)>((?:[^()]|\([^()]*\))*)\)")


def sample_paths(template: str, pattern: str | None = None) -> list[str]:
    """Concrete paths matching a route: one per choice of a `{x:a|b}` group, hex -> zeros, else 'sample-x'."""
    groups = dict(_GROUP.findall(pattern or ""))
    paths = [template]
    for name in re.findall(r"\{(\w+)[^}]*\}", template):
        regex = groups.get(name, "")
        choices = regex.split("|") if "|" in regex else [SHA if "0-9a-f" in regex else f"sample-{name}"]
        slot = re.compile(r"\{" + name + r"[^}]*\}")
        paths = [slot.sub(choice, p, count=1) for p in paths for choice in choices]
    for path in paths:
        assert pattern is None or re.fullmatch(pattern, path), (path, pattern)
    return paths


@dataclass(frozen=True)
class Route:
    """One route of a router: method, path template and a concrete path that matches it."""

    method: str
    template: str
    path: str


def app_routes(app: web.Application) -> list[Route]:
    """Every route of an aiohttp app's router (HEAD included), with a concrete matching path."""
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = info.get("formatter") or info.get("path")
        if template is None:
            continue
        pattern = info.get("pattern")
        for path in sample_paths(str(template), pattern.pattern if pattern else None):
            found.add(Route(route.method, str(template), path))
    return sorted(found, key=lambda r: (r.template, r.method))


def start_hub_broker(tmp_path: Path, mosquitto_bin: str, identity: HubIdentity) -> Mosquitto:
    """The production mTLS broker (deploy/mosquitto) with a server certificate from the hub CA and its CRL."""

    @dataclass
    class Files:
        cafile: Path
        server_certfile: Path
        server_keyfile: Path

    directory = tmp_path / "broker-pki"
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "broker.pem", directory / "broker.key"
    identity.issue_keypair("edgefleet-broker", cert, key, server=True, hosts=("localhost", "127.0.0.1"))
    identity.ca.write_crl(identity.paths.crl, [])
    broker = Mosquitto(
        "mtls",
        tmp_path / "mosquitto-hub",
        pki=Files(identity.paths.ca_cert, cert, key),  # type: ignore[arg-type]  # duck-typed
        crlfile=identity.paths.crl,
        binary=mosquitto_bin,
    )
    return broker.start()
