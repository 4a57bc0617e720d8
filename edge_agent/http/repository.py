"""Triton's model repository extension over HTTP: POST v2/repository/index and .../models/{m}/load|unload."""

from __future__ import annotations

import json

from aiohttp import web

from edge_agent.errors import InvalidInput
from edge_agent.serving.control import ModelControl

__all__ = ["CONTROL_KEY", "routes"]

CONTROL_KEY = web.AppKey("control", ModelControl)


async def _options(request: web.Request) -> dict[str, object]:
    """The optional JSON body (`{"ready": bool}` for the index, `{"parameters": {...}}` for load)."""
    body = await request.read()
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError:
        raise InvalidInput("request body must be a JSON object") from None
    if type(value) is not dict:
        raise InvalidInput("request body must be a JSON object")
    return value


def _empty() -> web.Response:
    return web.Response(status=200, body=b"{}", content_type="application/json")


async def index(request: web.Request) -> web.Response:
    """POST v2/repository/index: every known model version with its state (READY, LOADING, UNAVAILABLE)."""
    ready = (await _options(request)).get("ready", False)
    if type(ready) is not bool:
        raise InvalidInput("'ready' must be a boolean")
    rows = request.app[CONTROL_KEY].index(ready_only=ready)
    return web.Response(body=json.dumps(rows).encode(), content_type="application/json")


async def load(request: web.Request) -> web.Response:
    """POST v2/repository/models/{model}/load (standalone agents; refused on a fleet device)."""
    options = await _options(request)
    parameters = options.get("parameters") or {}
    if type(parameters) is not dict:
        raise InvalidInput("'parameters' must be a JSON object")
    name = request.match_info["model"]
    if "config" in parameters or any(str(k).startswith("file:") for k in parameters):
        # Triton's load errors start "failed to load '<model>'" (simple_http_model_control.py matches on it)
        raise InvalidInput(f"failed to load '{name}': an override config or files are not supported (signed packages)")
    await request.app[CONTROL_KEY].load(name)
    return _empty()


async def unload(request: web.Request) -> web.Response:
    """POST v2/repository/models/{model}/unload (standalone agents; refused on a fleet device)."""
    await _options(request)
    await request.app[CONTROL_KEY].unload(request.match_info["model"])
    return _empty()


def routes() -> list[web.RouteDef]:
    """Repository extension routes (registered by http/app.py)."""
    return [
        web.post("/v2/repository/index", index),
        web.post("/v2/repository/models/{model}/load", load),
        web.post("/v2/repository/models/{model}/unload", unload),
    ]
