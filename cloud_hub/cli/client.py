"""A small synchronous client of the operator API for the CLI (stdlib urllib: fast to start)."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.errors import ConfigError, HubError
from cloud_hub.pki.identity import HubPaths


class ApiError(HubError):
    """The hub answered with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"hub answered {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class HubClient:
    """Base URL, operator token and TLS trust for talking to one hub."""

    url: str
    token: str
    ssl_context: ssl.SSLContext
    timeout_s: float = 30.0

    @classmethod
    def resolve(cls, data_dir: Path, url: str | None, token: str | None, ca: Path | None) -> HubClient:
        """Flags first, then EDGEFLEET_HUB_URL / EDGEFLEET_HUB_TOKEN / EDGEFLEET_HUB_CA, then the data dir."""
        paths = HubPaths(data_dir)
        url = url or os.environ.get("EDGEFLEET_HUB_URL")
        if not url and paths.hub_info.exists():
            url = json.loads(paths.hub_info.read_text())["url"]
        if not url:
            raise ConfigError("no hub URL: pass --hub, set EDGEFLEET_HUB_URL, or run on the hub host (--data-dir)")
        token = token or os.environ.get("EDGEFLEET_HUB_TOKEN")
        if not token and paths.operator_token.exists():
            token = paths.operator_token.read_text().strip()
        if not token:
            raise ConfigError("no operator token: pass --token, set EDGEFLEET_HUB_TOKEN, or run on the hub host")
        ca_env = os.environ.get("EDGEFLEET_HUB_CA")
        cafile = ca or (Path(ca_env) if ca_env else None) or (paths.ca_cert if paths.ca_cert.exists() else None)
        ctx = ssl.create_default_context(cafile=str(cafile) if cafile else None)
        return cls(url.rstrip("/"), token, ctx)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return the decoded JSON; ApiError on an error status."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(  # noqa: S310  # URL scheme checked: https from the operator
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        if not self.url.startswith(("https://", "http://")):
            raise ConfigError(f"hub URL {self.url!r} must be https://")
        return self.send(req, self.timeout_s)

    def send(self, req: urllib.request.Request, timeout_s: float) -> dict[str, Any]:
        """Send a prepared request to the hub; its JSON answer, or ApiError with the hub's `error`."""
        try:
            with urllib.request.urlopen(req, timeout=timeout_s, context=self.ssl_context) as resp:  # noqa: S310
                result: dict[str, Any] = json.loads(resp.read())
                return result
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except (ValueError, AttributeError):
                message = exc.reason
            raise ApiError(exc.code, str(message)) from exc
        except urllib.error.URLError as exc:
            raise HubError(f"cannot reach the hub at {self.url}: {exc.reason}") from exc
