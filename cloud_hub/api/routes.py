"""HTTP handlers: decode, call the hub's services, encode. No logic of their own."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from cloud_hub.api.keys import HUB_KEY
from cloud_hub.api.openapi import OPENAPI_PATH, openapi_document
from cloud_hub.errors import InvalidRequest, Unauthorized
from cloud_hub.fleet.drift import PSI_THRESHOLD
from cloud_hub.fleet.provisioning import PresentedCert
from protocols.messages import ProvisionRequest

MAX_BODY = 64 * 1024
routes = web.RouteTableDef()


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"body is not JSON: {exc}") from exc


def _int(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{key} must be an integer")
    return value


def _labels_query(request: web.Request) -> dict[str, str]:
    labels = {}
    for item in request.query.getall("label", []):
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidRequest(f"label filter {item!r} must be key=value")
        labels[key] = value
    return labels


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Liveness."""
    return web.json_response({"status": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    body = request.app[HUB_KEY].metrics.render()
    return web.Response(body=body, content_type="text/plain", charset="utf-8")


@routes.get(OPENAPI_PATH)
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API."""
    return web.json_response(openapi_document())


@routes.get("/api/v1/ca")
@routes.get("/api/v1/ca.pem")
async def ca_pem(request: web.Request) -> web.Response:
    """The hub CA certificate (public)."""
    return web.Response(body=request.app[HUB_KEY].identity.ca.cert_pem(), content_type="application/x-pem-file")


def peer_certificate(request: web.Request) -> PresentedCert | None:
    """The verified client certificate of this connection (hub CA), if one was presented: proof of a key."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return None
    cn = next((str(v) for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"), None)
    serial = cert.get("serialNumber")
    return PresentedCert(cn, int(str(serial), 16)) if cn and serial else None


@routes.post("/api/v1/provision")
async def provision(request: web.Request) -> web.Response:
    """ProvisionRequest -> ProvisionResponse; the claim token is the credential."""
    hub = request.app[HUB_KEY]
    try:
        body = ProvisionRequest.model_validate_json(await request.read())
    except ValidationError as exc:
        hub.metrics.provisioned.labels(outcome="invalid").inc()
        first = exc.errors()[0]
        raise InvalidRequest(f"invalid provision request: {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc
    source = request.remote or "?"
    try:
        hub.claim_limiter.check(source)  # before any work: 429 while this source has no failed try left
        response = await hub.provisioner.provision(body, proof=peer_certificate(request))
    except Unauthorized as exc:  # an unknown, used-up or expired claim: one failed try
        hub.claim_limiter.failed(source)
        hub.metrics.provisioned.labels(outcome=type(exc).__name__).inc()
        raise
    except Exception as exc:
        hub.metrics.provisioned.labels(outcome=type(exc).__name__).inc()
        raise
    hub.metrics.provisioned.labels(outcome="ok").inc()
    return web.json_response(text=response.model_dump_json())


@routes.post("/api/v1/claims")
async def create_claim(request: web.Request) -> web.Response:
    """Create a claim: {labels, uses, expires_in_s} -> {claim, token, join_command, ca_fingerprint}."""
    hub = request.app[HUB_KEY]
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    expires = body.get("expires_in_s", 7 * 86_400)
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise InvalidRequest("expires_in_s must be a number")
    created = await hub.claims.create(body.get("labels", {}), _int(body, "uses", 1), float(expires))
    return web.json_response(
        {
            "claim": created.claim.to_json(),
            "token": created.token,
            "join_command": created.join_command,
            "ca_fingerprint": hub.identity.ca.fingerprint,
        },
        status=201,
    )


@routes.get("/api/v1/claims")
async def list_claims(request: web.Request) -> web.Response:
    """Every claim (never tokens)."""
    claims = await request.app[HUB_KEY].claims.list()
    return web.json_response({"claims": [c.to_json() for c in claims]})


@routes.post("/api/v1/claims/{claim_id}/revoke")
async def revoke_claim(request: web.Request) -> web.Response:
    """Stop a claim from provisioning more devices."""
    claim = await request.app[HUB_KEY].claims.revoke(request.match_info["claim_id"])
    return web.json_response({"claim": claim.to_json()})


@routes.get("/api/v1/devices")
async def list_devices(request: web.Request) -> web.Response:
    """Devices, filtered by `?label=k=v` (repeatable)."""
    found = await request.app[HUB_KEY].devices.list(_labels_query(request))
    return web.json_response({"devices": [d.to_json() for d in found]})


@routes.get("/api/v1/devices/{device_id}")
async def show_device(request: web.Request) -> web.Response:
    """One device with recent telemetry."""
    device = await request.app[HUB_KEY].devices.show(request.match_info["device_id"])
    return web.json_response({"device": device})


@routes.post("/api/v1/devices/{device_id}/approve-reprovision")
async def approve_reprovision(request: web.Request) -> web.Response:
    """Operator approval to re-provision a device id without proof of its current key (one use, 1 h)."""
    device_id = request.match_info["device_id"]
    until = await request.app[HUB_KEY].devices.approve_reprovision(device_id)
    return web.json_response({"device_id": device_id, "approved_until": until})


@routes.post("/api/v1/devices/{device_id}/revoke")
async def revoke_device(request: web.Request) -> web.Response:
    """Revoke a device: its messages are ignored and its certificate goes on the CRL."""
    device = await request.app[HUB_KEY].devices.revoke(request.match_info["device_id"])
    return web.json_response({"device": device.to_json()})


@routes.get("/api/v1/drift")
async def drift(request: web.Request) -> web.Response:
    """Drift per (device, pipeline, version), `?device=ID` for one device (cloud_hub/fleet/drift.py)."""
    monitor = request.app[HUB_KEY].drift
    return web.json_response({"drift": monitor.rows(request.query.get("device")), "threshold": PSI_THRESHOLD})


@routes.post("/api/v1/devices/{device_id}/drift/rebaseline")
async def drift_rebaseline(request: web.Request) -> web.Response:
    """Operator: the next reports of the device's versions (`?pipeline=` one pipeline) become the reference."""
    device_id = request.match_info["device_id"]
    count = request.app[HUB_KEY].drift.rebaseline(device_id, request.query.get("pipeline"))
    return web.json_response({"device_id": device_id, "rebaselined": count})
