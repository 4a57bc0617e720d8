"""HTTP handlers of rollouts and device desired state: decode, call the service, encode."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from cloud_hub.api.keys import HUB_KEY
from cloud_hub.errors import InvalidRequest, NotFound
from cloud_hub.rollouts.model import RolloutSpec

routes = web.RouteTableDef()


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    return body


@routes.post("/api/v1/rollouts")
async def create_rollout(request: web.Request) -> web.Response:
    """Body: a RolloutSpec (model, version, selector, canary, waves_pct, bake_s, gates, deadline_s, apply)."""
    try:
        spec = RolloutSpec.model_validate(await _body(request))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(f"invalid rollout: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    rollout = await request.app[HUB_KEY].rollouts.create(spec)
    return web.json_response({"rollout": rollout.summary()}, status=201)


@routes.get("/api/v1/rollouts")
async def list_rollouts(request: web.Request) -> web.Response:
    """Every rollout (summaries)."""
    found = await request.app[HUB_KEY].rollouts.list()
    return web.json_response({"rollouts": found})


@routes.get("/api/v1/rollouts/{rollout_id}")
async def show_rollout(request: web.Request) -> web.Response:
    """One rollout with per-wave and per-device progress."""
    return web.json_response({"rollout": await request.app[HUB_KEY].rollouts.detail(request.match_info["rollout_id"])})


@routes.post("/api/v1/rollouts/{rollout_id}/{action:pause|resume|abort}")
async def control_rollout(request: web.Request) -> web.Response:
    """pause, resume, abort (body {"rollback": true} to revert the touched devices)."""
    service = request.app[HUB_KEY].rollouts
    rollout_id, action = request.match_info["rollout_id"], request.match_info["action"]
    if action == "pause":
        rollout = await service.pause(rollout_id)
    elif action == "resume":
        rollout = await service.resume(rollout_id)
    else:
        rollback = (await _body(request)).get("rollback", False)
        if not isinstance(rollback, bool):
            raise InvalidRequest("rollback must be true or false")
        rollout = await service.abort(rollout_id, rollback=rollback)
    return web.json_response({"rollout": rollout.summary()})


@routes.get("/api/v1/devices/{device_id}/desired")
async def show_desired(request: web.Request) -> web.Response:
    """The latest desired state the hub wrote for a device."""
    state = await request.app[HUB_KEY].desired.current(request.match_info["device_id"])
    if state is None:
        raise NotFound(f"no desired state for device {request.match_info['device_id']!r}")
    return web.json_response({"desired": state.model_dump(mode="json")})


@routes.post("/api/v1/devices/{device_id}/resync")
async def resync_desired(request: web.Request) -> web.Response:
    """Publish the latest desired state of a device again (retained)."""
    hub = request.app[HUB_KEY]
    state = await hub.desired.current(request.match_info["device_id"])
    if state is None:
        raise NotFound(f"no desired state for device {request.match_info['device_id']!r}")
    published = await hub.desired.publish([state])
    return web.json_response({"desired": state.model_dump(mode="json"), "published": bool(published)})
