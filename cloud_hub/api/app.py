"""The aiohttp application of the hub: middlewares and every service's routes, around a hub core."""

from __future__ import annotations

from aiohttp import web

from cloud_hub.api.auth import auth_middleware
from cloud_hub.api.errors import error_middleware
from cloud_hub.api.keys import HUB_KEY, HubCore
from cloud_hub.api.registry import routes as registry_routes
from cloud_hub.api.rollouts import routes as rollout_routes
from cloud_hub.api.routes import MAX_BODY, routes

__all__ = ["HUB_KEY", "build_app"]


def build_app(hub: HubCore) -> web.Application:
    """The application for an opened (or to-be-opened by the caller) hub."""
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=MAX_BODY)
    app[HUB_KEY] = hub
    app.add_routes(routes)
    app.add_routes(registry_routes)
    app.add_routes(rollout_routes)
    return app
