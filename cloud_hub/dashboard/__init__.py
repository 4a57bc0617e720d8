"""The operator dashboard, served under /ui/ on the hub's own HTTPS listener: server-rendered pages, a
little vanilla JavaScript for live regions over Server-Sent Events, a session cookie from an operator login.
See docs/dashboard.md."""

from __future__ import annotations

import asyncio
from importlib import resources

from aiohttp import web

from cloud_hub.api.errors import Handler
from cloud_hub.dashboard import auth, claims, fleet, rollouts
from cloud_hub.dashboard.cache import TtlCache
from cloud_hub.dashboard.html import PREFIX
from cloud_hub.dashboard.keys import LIMITER_KEY, SESSIONS_KEY, SETTINGS_KEY, STOP_KEY, TOTALS_KEY, DashboardSettings
from cloud_hub.dashboard.sessions import SessionStore
from cloud_hub.fleet.ratelimit import FailureLimiter

__all__ = ["DashboardSettings", "build_dashboard", "mount_dashboard"]

STATIC_FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _static(name: str, content_type: str) -> Handler:
    """A handler serving one file of the package's static/ folder (read once; public, no secrets)."""
    body = resources.files("cloud_hub.dashboard").joinpath("static", name).read_bytes()

    async def serve(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type=content_type, headers={"Cache-Control": "max-age=300"})

    return serve


def build_dashboard(settings: DashboardSettings | None = None) -> web.Application:
    """The dashboard as an aiohttp sub-application, to be mounted at /ui (its routes are relative to it)."""
    app = web.Application(middlewares=[auth.guard])
    app[SESSIONS_KEY] = SessionStore()
    app[LIMITER_KEY] = FailureLimiter(burst=10, refill_per_s=0.2)
    app[SETTINGS_KEY] = settings = settings or DashboardSettings()
    app[TOTALS_KEY] = TtlCache(settings.totals_cache_s)
    app[STOP_KEY] = stop = asyncio.Event()
    for name, content_type in STATIC_FILES.items():
        app.router.add_get(f"/static/{name}", _static(name, content_type))
    for table in (auth.routes, fleet.routes, rollouts.routes, claims.routes):
        app.add_routes(table)
    app.on_response_prepare.append(auth.security_headers)

    async def on_shutdown(_app: web.Application) -> None:
        stop.set()  # live streams end now, not at the server's shutdown timeout

    app.on_shutdown.append(on_shutdown)
    return app


def mount_dashboard(app: web.Application, settings: DashboardSettings | None = None) -> web.Application:
    """Serve the dashboard on `app` (the hub's application) under /ui/, and send `/` there."""

    async def to_dashboard(request: web.Request) -> web.Response:
        return web.Response(status=303, headers={"Location": f"{PREFIX}/"})

    dashboard = build_dashboard(settings)
    app.router.add_get("/", to_dashboard)
    app.router.add_get(PREFIX, to_dashboard)
    app.add_subapp(PREFIX, dashboard)
    return dashboard
