"""Operator API authentication: `Authorization: Bearer <token>`, checked against stored hashes."""

from __future__ import annotations

from aiohttp import web

from cloud_hub.api.errors import Handler
from cloud_hub.api.keys import HUB_KEY
from cloud_hub.errors import Unauthorized

# Paths that do not need the operator token (devices authenticate with their claim token).
PUBLIC = frozenset({"/api/v1/provision", "/api/v1/ca", "/api/v1/ca.pem"})
# Paths whose handler authenticates itself: artifacts accept a device certificate or the operator token.
SELF_AUTHENTICATED = ("/api/v1/artifacts/",)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require a known operator token on every /api/ path except the public ones."""
    if (
        request.path.startswith("/api/")
        and request.path not in PUBLIC
        and not request.path.startswith(SELF_AUTHENTICATED)
    ):
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("missing bearer token")
        if not request.app[HUB_KEY].check_token(token.strip()):
            raise Unauthorized("invalid token")
    return await handler(request)
