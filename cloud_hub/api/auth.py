"""Operator API authentication: `Authorization: Bearer <token>`, checked against stored hashes."""

from __future__ import annotations

from aiohttp import web

from cloud_hub.api.errors import Handler
from cloud_hub.errors import Unauthorized

# Paths that do not need the operator token (devices authenticate with their claim token).
PUBLIC = frozenset({"/api/v1/provision", "/healthz", "/metrics", "/api/v1/ca.pem"})


def auth_middleware(hub_key: web.AppKey[object]) -> Handler:
    """Middleware requiring a known operator token on every /api/ path except the public ones."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/api/") and request.path not in PUBLIC:
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("missing bearer token")
            hub = request.app[hub_key]
            if not hub.check_token(token.strip()):  # type: ignore[attr-defined]
                raise Unauthorized("invalid token")
        return await handler(request)

    return middleware  # type: ignore[return-value]
