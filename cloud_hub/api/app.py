"""The aiohttp application and the HTTPS server around a Hub."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from cloud_hub.api.auth import auth_middleware
from cloud_hub.api.errors import error_middleware
from cloud_hub.api.keys import HUB_KEY
from cloud_hub.api.routes import MAX_BODY, routes
from cloud_hub.config import HubConfig
from cloud_hub.files import write_atomic
from cloud_hub.hub import Hub
from cloud_hub.registry.http import routes as registry_routes
from cloud_hub.rollouts.http import routes as rollout_routes

log = logging.getLogger(__name__)

__all__ = ["HUB_KEY", "build_app", "serve_hub"]


def build_app(hub: Hub) -> web.Application:
    """The application for an opened (or to-be-opened by the caller) hub."""
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=MAX_BODY)
    app[HUB_KEY] = hub
    app.add_routes(routes)
    app.add_routes(registry_routes)
    app.add_routes(rollout_routes)
    return app


@asynccontextmanager
async def serve_hub(config: HubConfig, *, ingest: bool = True) -> AsyncIterator[Hub]:
    """Open the hub and serve HTTPS on config.host:config.port until the context exits."""
    async with Hub(config, ingest=ingest) as hub:
        runner = web.AppRunner(build_app(hub), access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, config.host, config.port, ssl_context=hub.identity.server_ssl_context())
            await site.start()
            write_atomic(
                hub.identity.paths.hub_info,
                json.dumps({"url": hub.url, "ca_fingerprint": hub.identity.ca.fingerprint}).encode(),
                0o644,
            )
            log.info("hub serving on %s (CA fingerprint %s)", hub.url, hub.identity.ca.fingerprint)
            yield hub
        finally:
            await runner.cleanup()
