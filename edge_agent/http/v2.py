"""V2 REST handlers: decode (protocols.binary), call the serving core, encode. No model state here."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from edge_agent.errors import InvalidInput, Unavailable
from edge_agent.http.errors import error_kind, error_response
from edge_agent.http.intake import BodyLate
from edge_agent.http.keys import ARRIVAL_KEY, CORE_KEY, INTAKE_KEY, METRICS_KEY
from edge_agent.http.triton import classify
from edge_agent.serving.registry import LoadedModel
from protocols.binary import HEADER_LENGTH, decode_request, encode_response

__all__ = ["POOL_HEADER", "ROUTE_HEADER", "ROUTE_PARAMETER", "routes"]

_JSON = "application/json"
_OCTET = "application/octet-stream"
_UNSUPPORTED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
ROUTE_HEADER = "X-Edgefleet-Route"  # local | cloud: where the request ran
POOL_HEADER = "X-Edgefleet-Pool"  # the pool's name, when cloud
ROUTE_PARAMETER = "edgefleet_route"  # the same, as a V2 response parameter


def _json(obj: object, status: int = 200) -> web.Response:
    body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
    return web.Response(status=status, body=body, content_type=_JSON)


def _header_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {value[:40]!r}") from None
    if length < 0:
        raise InvalidInput(f"{HEADER_LENGTH} must be a non-negative integer, got {length}")
    return length


def _raw_input(model: LoadedModel) -> tuple[str, str, tuple[int, ...]] | None:
    """Spec of a raw binary request (header length 0): the single input at batch 1."""
    inputs = model.manifest.inputs
    if len(inputs) != 1:
        return None
    spec = inputs[0]
    shape = (1, *spec.shape[1:]) if model.max_batch_size > 0 else spec.shape
    return spec.name, spec.datatype, shape


def _scheduling(parameters: dict[str, Any]) -> tuple[int, int | None]:
    """Triton's `priority` (0 = default, 1 = highest) and `timeout` (microseconds), validated."""
    if not parameters:
        return 0, None
    for name in _UNSUPPORTED_PARAMETERS:
        if name in parameters:
            raise InvalidInput(f"request parameter {name!r} is not supported (no sequence batching)")
    priority = parameters.get("priority", 0)
    if type(priority) is not int or priority < 0:
        raise InvalidInput("request parameter 'priority' must be a non-negative integer")
    timeout = parameters.get("timeout")
    if timeout is not None and (type(timeout) is not int or timeout < 0):
        raise InvalidInput("request parameter 'timeout' must be a non-negative integer (microseconds)")
    return priority, timeout


async def infer(request: web.Request) -> web.Response:
    """POST v2/models/{model}[/versions/{version}]/infer."""
    loop = asyncio.get_running_loop()
    # Ages count from the request's first byte (listener.py); without the agent's listener, from here.
    arrival = request.get(ARRIVAL_KEY) or loop.time()
    app = request.app
    name = request.match_info["model"]
    label = name
    try:
        header_length = _header_length(request.headers.get(HEADER_LENGTH))
        core = app[CORE_KEY]
        # Shed doomed requests before reading their body, so overload costs little loop time. aiohttp reads
        # and discards an unread body after the response (lingering, keep-alive kept), without buffering it.
        first = core.resolve(name, request.match_info.get("version"))
        core.shed(first, age_s=loop.time() - arrival)
        try:
            body = await app[INTAKE_KEY].read(request, deadline=arrival + first.pipeline.deadline_ms / 1000.0)
        except BodyLate as exc:
            raise core.expired(first, loop.time() - arrival, str(exc)) from None
        raw = _raw_input(first.model) if header_length == 0 else None
        decoded = decode_request(body, header_length, raw_input=raw)
        # Resolved after the last await before queueing, so a version switch never strands a request; a
        # pipeline's version split chooses here (by the request's id when it has one).
        target = core.resolve(name, request.match_info.get("version"), request_id=decoded.id, route=True)
        priority, timeout_us = _scheduling(decoded.parameters)
        wanted = decoded.outputs
        requested = None if wanted is None else [o.name for o in wanted]
        served = await core.serve(
            target, decoded.inputs, requested, priority=priority, timeout_us=timeout_us, age_s=loop.time() - arrival
        )
        binary: Any = decoded.binary_output if wanted is None else {o.name: o.binary for o in wanted}.__getitem__
        payload, length = encode_response(
            model_name=name,
            model_version=target.model.version,
            id=decoded.id,
            outputs=classify(served.outputs, wanted, target.model),
            binary=binary,
            parameters={ROUTE_PARAMETER: served.where},
        )
        headers: dict[str, str] = {ROUTE_HEADER: served.where}
        if served.pool is not None:
            headers[POOL_HEADER] = served.pool
        if length is None:
            headers["Content-Type"] = _JSON
        else:
            headers[HEADER_LENGTH] = str(length)
            headers["Content-Type"] = _OCTET
        response = web.Response(body=payload, headers=headers)
    except Exception as exc:
        response = error_response(exc)
        if response.status == 404:
            label = "<unknown>"  # unknown names must not grow the metrics' label set
        app[METRICS_KEY].observe_error(label, error_kind(exc))
    app[METRICS_KEY].observe_request(label, response.status, loop.time() - arrival)
    return response


async def server_metadata(request: web.Request) -> web.Response:
    """GET v2."""
    return _json(request.app[CORE_KEY].server_metadata())


async def live(request: web.Request) -> web.Response:
    """GET v2/health/live: 200 `{"live": true}` (the OIP body; Triton's is empty) while the process serves HTTP."""
    return _json({"live": True})


async def ready(request: web.Request) -> web.Response:
    """GET v2/health/ready: 200 `{"ready": true}` once every model is warmed up, else 400 (as Triton)."""
    is_ready = request.app[CORE_KEY].ready()
    return _json({"ready": is_ready}, 200 if is_ready else 400)


async def model_metadata(request: web.Request) -> web.Response:
    """GET v2/models/{model}[/versions/{version}]."""
    core = request.app[CORE_KEY]
    target = core.resolve(request.match_info["model"], request.match_info.get("version"))
    return _json(core.model_metadata(target))


async def model_ready(request: web.Request) -> web.Response:
    """GET v2/models/{model}[/versions/{version}]/ready: 200 `{"name", "ready": true}` if warmed up, else 400
    (also while loading, or when it failed to load: Unavailable)."""
    try:
        target = request.app[CORE_KEY].resolve(request.match_info["model"], request.match_info.get("version"))
        ready = target.model.ready
    except Unavailable:
        ready = False
    return _json({"name": request.match_info["model"], "ready": ready}, 200 if ready else 400)


def routes() -> list[web.RouteDef]:
    """The V2 routes."""
    model = "/v2/models/{model}"
    version = "/v2/models/{model}/versions/{version}"
    return [
        web.get("/v2", server_metadata),
        web.get("/v2/", server_metadata),  # the official OIP REST spec's path for it
        web.get("/v2/health/live", live),
        web.get("/v2/health/ready", ready),
        web.get(model, model_metadata),
        web.get(version, model_metadata),
        web.get(f"{model}/ready", model_ready),
        web.get(f"{version}/ready", model_ready),
        web.post(f"{model}/infer", infer),
        web.post(f"{version}/infer", infer),
    ]
