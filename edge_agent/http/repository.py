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
    # Triton's load errors start "failed to load '<model>'" (simple_http_model_control.py matches on it)
    if any(str(k).startswith("file:") for k in parameters):
        raise InvalidInput(f"failed to load '{name}': override files are not supported (signed packages)")
    batch = _override_batch(name, parameters["config"]) if "config" in parameters else None
    await request.app[CONTROL_KEY].load(name, max_batch_size=batch)
    return _empty()


def _override_batch(name: str, config: object) -> int:
    """The override config's max_batch_size: the one field an override may set (model files are signed)."""
    try:
        value = json.loads(config) if isinstance(config, str) else None
    except ValueError:
        value = None
    if type(value) is not dict:
        raise InvalidInput(f"failed to load '{name}': the override config must be a JSON object (a string)")
    other = sorted(k for k in value if k not in ("name", "max_batch_size"))
    if other or value.get("name", name) != name:
        raise InvalidInput(f"failed to load '{name}': override config field(s) {other or ['name']} not supported")
    batch = value.get("max_batch_size")
    try:
        number = int(batch) if isinstance(batch, int | str) and type(batch) is not bool else -1  # int64 as a string
    except ValueError:
        number = -1
    if number < 0:
        raise InvalidInput(f"failed to load '{name}': max_batch_size must be a non-negative integer")
    return number


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
