"""Helpers of the dashboard's tests: devices written straight into a hub's store, and a logged-in browser
stand-in (aiohttp with a cookie jar over HTTPS, as a browser would hold the session)."""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from cloud_hub.app import Hub
from cloud_hub.store import schema


def pipeline(version: str, rps: float, p99_ms: float, *routes: int) -> dict[str, Any]:
    """One pipeline summary as ingest stores it in `last_load.pipelines` (cloud_hub/store/summary.py);
    `routes`: local, cloud, rejected."""
    local, cloud, rejected = routes
    return {"model": "tiny-cnn", "version": version, "rps": rps, "p50_ms": p99_ms / 3, "p99_ms": p99_ms,
            "errors": 0, "local": local, "cloud": cloud, "rejected": rejected, "expired": 0}  # fmt: skip


async def add_devices(hub: Hub, devices: Mapping[str, dict[str, Any]]) -> None:
    """Device rows as provisioning + ingest leave them; each value may set labels, online, status, pipelines."""
    now = time.time()
    rows = []
    for device_id, spec in devices.items():
        pipes = spec.get("pipelines")
        rows.append(
            {
                "id": device_id, "labels": spec.get("labels", {}), "hardware": {"platform": "x86_64-cpu"},
                "claim_id": "clm-test", "cert_serial": "1", "cert_fingerprint": "0" * 64,
                "cert_not_after": now + 86_400, "status": spec.get("status", "active"),
                "online": spec.get("online", True), "last_seen": now, "boot_id": "boot-1", "last_seq": 7,
                "last_load": None if pipes is None else {"sent_at": now, "interval_s": 1.0, "pipelines": pipes,
                                                          "device": {"cpu_percent": 12.5}},
                "models": [{"name": "tiny-cnn", "version": "1", "active": True}], "agent_version": "0.1.0",
                "reported": spec.get("reported"), "created_at": now, "provisioned_at": now,
            }
        )  # fmt: skip
    async with hub.store.begin() as conn:
        await conn.execute(schema.devices.insert(), rows)


@dataclass
class Browser:
    """An HTTPS client that keeps cookies like a browser (for one origin: the hub)."""

    hub: Hub
    session: aiohttp.ClientSession
    ssl: ssl.SSLContext

    @property
    def url(self) -> str:
        return self.hub.url

    async def get(self, path: str, **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(self.url + path, ssl=self.ssl, allow_redirects=False, **kwargs) as resp:
            return resp.status, await resp.text(), resp

    async def post(self, path: str, data: dict[str, str], **kwargs: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.post(self.url + path, data=data, ssl=self.ssl, allow_redirects=False, **kwargs) as resp:
            return resp.status, await resp.text(), resp

    async def login(self, token: str) -> aiohttp.ClientResponse:
        """Fill in the login form; the response of the POST."""
        status, page, _ = await self.get("/ui/login")
        assert status == 200, page
        nonce = field(page, "nonce")
        status, body, resp = await self.post("/ui/login", {"nonce": nonce, "token": token, "next": "/ui/"})
        assert status == 303, body
        return resp

    async def csrf(self, path: str = "/ui/") -> str:
        """The CSRF token the session's pages carry."""
        status, page, _ = await self.get(path)
        assert status == 200, page
        return field(page, "csrf")


def field(page: str, name: str) -> str:
    """The value of a hidden input of a page."""
    found = re.search(rf'<input type="hidden" name="{name}" value="([^"]+)"', page)
    assert found, f"no {name} field in the page"
    return found.group(1)


def operator_token(hub: Hub) -> str:
    """The hub's first operator token (written to its data dir at the first start)."""
    return hub.identity.paths.operator_token.read_text().strip()


def hub_ssl(hub: Hub) -> ssl.SSLContext:
    """Trust the hub CA only."""
    return ssl.create_default_context(cafile=str(hub.identity.paths.ca_cert))
