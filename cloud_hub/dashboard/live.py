"""Live pages: one function renders a page; a plain GET gets the whole document, the page's own URL
requested by an EventSource (`Accept: text/event-stream`) gets its live regions again every few seconds,
as Server-Sent Events carrying only the regions that changed. No second set of endpoints to keep in step."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from cloud_hub.api.errors import Handler, status_of
from cloud_hub.api.keys import HUB_KEY, HubCore
from cloud_hub.dashboard.auth import html_response
from cloud_hub.dashboard.html import Page, layout
from cloud_hub.dashboard.keys import SESSION_KEY, SESSIONS_KEY, SETTINGS_KEY, STOP_KEY, DashboardSettings
from cloud_hub.dashboard.sessions import Session
from cloud_hub.errors import HubError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class View:
    """What a page function gets: the request, the hub core, the operator's session, the settings."""

    request: web.Request
    hub: HubCore
    session: Session
    settings: DashboardSettings
    streaming: bool  # True on a stream tick: the static head is not sent, so need not be built

    def query_int(self, name: str, default: int = 1, lowest: int = 1) -> int:
        """An integer query parameter, `default` when absent or malformed, at least `lowest`."""
        try:
            return max(lowest, int(self.request.query.get(name, default)))
        except ValueError:
            return default


PageFunction = Callable[[View], Awaitable[Page]]


def live_page(render: PageFunction) -> Handler:
    """An aiohttp handler serving `render`'s page as a document, or its regions as an event stream."""

    async def handler(request: web.Request) -> web.StreamResponse:
        streaming = "text/event-stream" in request.headers.get("Accept", "")
        view = View(request, request.config_dict[HUB_KEY], request[SESSION_KEY], request.app[SETTINGS_KEY], streaming)
        if streaming:
            return await _stream(view, render)
        page = await render(view)
        response = html_response(layout(page, view.session, live=bool(page.regions)))
        response.headers["Vary"] = "Accept"
        return response

    handler.__name__ = render.__name__
    handler.__doc__ = render.__doc__
    return handler


def _event(name: str, data: object) -> bytes:
    # json.dumps never emits a raw newline, so the data fits on one `data:` line.
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream(view: View, render: PageFunction) -> web.StreamResponse:
    """Send changed regions until the client leaves, the session ends or the hub shuts down."""
    request, settings = view.request, view.settings
    stop = request.app[STOP_KEY]
    sessions = request.app[SESSIONS_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    sent: dict[str, str] = {}
    last_write = loop.time()
    try:
        await response.write(b"retry: 3000\n\n")
        while not stop.is_set():
            if sessions.get(view.session.id) is None:
                await response.write(_event("expired", {}))
                break
            try:
                page = await render(view)
            except HubError as exc:
                if status_of(exc) < 500:  # the thing shown is gone (a device purged, a rollout unknown)
                    await response.write(_event("gone", {"error": str(exc)}))
                    break
                log.exception("dashboard stream %s: render failed", request.path)
                page = None
            except Exception:  # one bad tick never ends the stream: the next one tries again
                log.exception("dashboard stream %s: render failed", request.path)
                page = None
            changed = {k: v for k, v in (page.regions if page else {}).items() if sent.get(k) != v}
            if changed:
                await response.write(_event("regions", changed))
                sent.update(changed)
                last_write = loop.time()
            elif loop.time() - last_write >= settings.keepalive_s:
                await response.write(b": keepalive\n\n")
                last_write = loop.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.stream_interval_s)
    except ConnectionResetError:  # the browser went away (aiohttp's ClientConnectionResetError is one)
        pass
    return response
