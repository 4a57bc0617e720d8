"""The hub's OpenAPI 3.1 document, served at /api/v1/openapi.json (operator token required).

Schemas come from the code that makes the bodies: the protocols pydantic models (provisioning, desired
state), the rollout spec, and the store's record dataclasses (claims, devices, models), so a field added
there shows up here. tests/fuzz/test_fuzz_openapi.py runs schemathesis against a live hub with this
document, and tests/security/test_sec_hub_auth.py checks that it names every route of the router.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from cloud_hub.api.openapi_parts import (
    REF,
    AbortBody,
    ClaimCreate,
    ErrorBody,
    PublisherTrust,
    array,
    errors,
    json_body,
    json_of,
    obj,
    op,
    path_param,
    record_schema,
    ref,
)
from cloud_hub.rollouts.model import RolloutSpec, TargetDevice
from cloud_hub.store.records import ClaimRecord, DeviceRecord
from protocols.messages import DesiredState, ProvisionRequest, ProvisionResponse

__all__ = ["OPENAPI_PATH", "openapi_document"]

OPENAPI_PATH = "/api/v1/openapi.json"


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the hub's HTTP API."""
    _, defs = models_json_schema(
        [
            (m, "validation" if m in (ProvisionRequest, RolloutSpec) else "serialization")
            for m in (ErrorBody, ProvisionRequest, ProvisionResponse, DesiredState, RolloutSpec)
        ],
        ref_template=REF,
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    claim, device = record_schema(ClaimRecord), record_schema(DeviceRecord)
    target = record_schema(TargetDevice)
    for name, cls in (("ClaimCreate", ClaimCreate), ("PublisherTrust", PublisherTrust), ("AbortBody", AbortBody)):
        schemas[name] = cls.model_json_schema(mode="validation", ref_template=REF)
    model_summary = obj(
        {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "package_sha256": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "publisher_key_id": {"type": ["string", "null"]},
            "pushed_at": {"type": "number"},
        }
    )
    model_full = {
        **model_summary,
        "properties": {
            **model_summary["properties"],
            "manifest": {"type": "object"},
            "signature": {"type": "object"},
            "url": {"type": "string"},
        },
        "required": sorted([*model_summary["required"], "manifest", "signature", "url"]),
    }
    rollout = obj(
        {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "spec": ref("RolloutSpec"),
            "state": {"type": "string"},
            "wave": {"type": "integer"},
            "waves": {"type": "integer"},
            "phase": {"type": "string"},
            "phase_since": {"type": ["number", "null"]},
            "reason": {"type": ["string", "null"]},
            "created_at": {"type": "number"},
            "updated_at": {"type": "number"},
            "devices_total": {"type": "integer"},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        }
    )
    rollout_row = {
        **target,
        "properties": {
            **target["properties"],
            "online": {"type": ["boolean", "null"]},
            "phase": {"type": ["string", "null"]},
            "progress": {"type": ["number", "null"]},
            "previous_version": {"type": ["string", "null"]},
        },
    }
    rollout_detail = {
        **rollout,
        "properties": {
            **rollout["properties"],
            "waves_detail": {"type": "array", "items": {"type": "object"}},
            "devices": {"type": "array", "items": rollout_row},
        },
        "required": sorted([*rollout["required"], "waves_detail", "devices"]),
    }
    device_detail = {
        **device,
        "properties": {**device["properties"], "recent_telemetry": {"type": "array", "items": {"type": "object"}}},
        "required": sorted([*device.get("required", []), "recent_telemetry"]),
    }

    device_id = path_param("device_id", "Device id (certificate CN).")
    claim_id = path_param("claim_id", "Claim id.")
    rollout_id = path_param("rollout_id", "Rollout id.")
    public: list[dict[str, list[str]]] = []
    pem = {"description": "PEM certificate.", "content": {"application/x-pem-file": {"schema": {"type": "string"}}}}
    artifact_get = op(
        "Download a package tar (Range, If-Range, If-None-Match); a device certificate or the operator token.",
        {
            "200": {"description": "The whole tar.", "content": {"application/x-tar": {"schema": {}}}},
            "206": {"description": "One byte range.", "content": {"application/x-tar": {"schema": {}}}},
            "304": {"description": "Not modified (If-None-Match)."},
            "416": json_of(ref("ErrorBody"), "Range not satisfiable."),
            **errors(401, 403, 404),
        },
        params=[path_param("sha256", "sha256 of the tar.", "^[0-9a-f]{64}$")],
        security=[{"operatorToken": []}, {"deviceCertificate": []}],
    )
    paths: dict[str, Any] = {
        "/healthz": {
            "get": op("Liveness.", {"200": json_of(obj({"status": {"const": "ok"}}), "Serving.")}, security=public)
        },
        "/metrics": {
            "get": op(
                "Prometheus metrics (unauthenticated, as scrapers expect; counts only).",
                {"200": {"description": "Text exposition format.", "content": {"text/plain": {}}}},
                security=public,
            )
        },
        "/api/v1/ca": {"get": op("The hub CA certificate.", {"200": pem}, security=public)},
        "/api/v1/ca.pem": {"get": op("The hub CA certificate.", {"200": pem}, security=public)},
        OPENAPI_PATH: {
            "get": op("This document.", {"200": json_of({"type": "object"}, "OpenAPI 3.1."), **errors(401)})
        },
        "/api/v1/provision": {
            "post": op(
                "Provision a device: the claim token is the credential; returns its certificate and trust anchors.",
                {"200": json_of(ref("ProvisionResponse"), "Provisioned."), **errors(400, 401, 403, 409, 413, 429)},
                body=json_body(ref("ProvisionRequest")),
                security=public,
            )
        },
        "/api/v1/claims": {
            "get": op(
                "Every claim (never tokens).",
                {"200": json_of(obj({"claims": array(claim)}), "Claims."), **errors(401)},
            ),
            "post": op(
                "Create a claim; the token is shown only in this answer.",
                {
                    "201": json_of(
                        obj(
                            {
                                "claim": claim,
                                "token": {"type": "string"},
                                "join_command": {"type": "string"},
                                "ca_fingerprint": {"type": "string"},
                            }
                        ),
                        "Created.",
                    ),
                    **errors(400, 401, 413),
                },
                body=json_body(ref("ClaimCreate")),
            ),
        },
        "/api/v1/claims/{claim_id}/revoke": {
            "post": op(
                "Stop a claim from provisioning more devices.",
                {"200": json_of(obj({"claim": claim}), "Revoked."), **errors(401, 404)},
                params=[claim_id],
            )
        },
        "/api/v1/devices": {
            "get": op(
                "Devices, filtered by labels.",
                {"200": json_of(obj({"devices": array(device)}), "Devices."), **errors(400, 401)},
                params=[
                    {
                        "name": "label",
                        "in": "query",
                        "required": False,
                        "description": "key=value (repeatable).",
                        "schema": {"type": "array", "items": {"type": "string"}},
                        "style": "form",
                        "explode": True,
                    }
                ],
            )
        },
        "/api/v1/devices/{device_id}": {
            "get": op(
                "One device with its recent telemetry.",
                {"200": json_of(obj({"device": device_detail}), "The device."), **errors(401, 404)},
                params=[device_id],
            )
        },
        "/api/v1/devices/{device_id}/revoke": {
            "post": op(
                "Revoke a device: ingest ignores it, its certificate goes on the CRL.",
                {"200": json_of(obj({"device": device}), "Revoked."), **errors(401, 404)},
                params=[device_id],
            )
        },
        "/api/v1/devices/{device_id}/approve-reprovision": {
            "post": op(
                "Let the device id be re-provisioned once within the hour without proof of its current key "
                "(its certificate); the replaced certificate goes on the CRL.",
                {
                    "200": json_of(
                        obj({"device_id": {"type": "string"}, "approved_until": {"type": "number"}}), "Approved."
                    ),
                    **errors(401, 404),
                },
                params=[device_id],
            )
        },
        "/api/v1/drift": {
            "get": op(
                "Drift per (device, pipeline, version): PSI against the reference profile, threshold 0.2.",
                {
                    "200": json_of(
                        obj({"drift": {"type": "array", "items": {"type": "object"}}, "threshold": {"type": "number"}}),
                        "Drift rows.",
                    ),
                    **errors(401),
                },
                params=[{"name": "device", "in": "query", "required": False, "schema": {"type": "string"}}],
            )
        },
        "/api/v1/devices/{device_id}/drift/rebaseline": {
            "post": op(
                "Take the device's next reports (`pipeline`: of one pipeline) as the new drift reference.",
                {
                    "200": json_of(
                        obj({"device_id": {"type": "string"}, "rebaselined": {"type": "integer"}}), "Rebaselined."
                    ),
                    **errors(401),
                },
                params=[
                    device_id,
                    {"name": "pipeline", "in": "query", "required": False, "schema": {"type": "string"}},
                ],
            )
        },
        "/api/v1/devices/{device_id}/desired": {
            "get": op(
                "The latest desired state written for a device.",
                {"200": json_of(obj({"desired": ref("DesiredState")}), "Desired state."), **errors(401, 404)},
                params=[device_id],
            )
        },
        "/api/v1/devices/{device_id}/resync": {
            "post": op(
                "Publish the latest desired state of a device again (retained).",
                {
                    "200": json_of(obj({"desired": ref("DesiredState"), "published": {"type": "boolean"}}), "Sent."),
                    **errors(401, 404),
                },
                params=[device_id],
            )
        },
        "/api/v1/models": {
            "get": op(
                "Every pushed model version.",
                {"200": json_of(obj({"models": array(model_summary)}), "Models."), **errors(401)},
                params=[{"name": "name", "in": "query", "required": False, "schema": {"type": "string"}}],
            ),
            "post": op(
                "Push a package tar (verified, re-signed by the hub).",
                {
                    "200": json_of(obj({"model": model_summary, "created": {"type": "boolean"}}), "Already there."),
                    "201": json_of(obj({"model": model_summary, "created": {"type": "boolean"}}), "Stored."),
                    **errors(400, 401, 409, 413),
                },
                params=[{"name": "allow_unsigned", "in": "query", "required": False, "schema": {"type": "string"}}],
                body={
                    "required": True,
                    "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
                },
            ),
        },
        "/api/v1/models/{name}/{version}": {
            "get": op(
                "One model version with its manifest, the hub signature and its artifact URL.",
                {"200": json_of(obj({"model": model_full}), "The version."), **errors(401, 404)},
                params=[path_param("name", "Model name."), path_param("version", "Version.")],
            )
        },
        "/api/v1/publishers": {
            "get": op(
                "Keys a pushed package may be signed by.",
                {"200": json_of(obj({"publishers": {"type": "array"}}), "Keys."), **errors(401)},
            ),
            "post": op(
                "Trust packages signed by an ed25519 key.",
                {"201": json_of(obj({"key_id": {"type": "string"}}), "Trusted."), **errors(400, 401, 413)},
                body=json_body(ref("PublisherTrust")),
            ),
        },
        "/api/v1/artifacts/{sha256}.tar": {"get": artifact_get},
        "/api/v1/rollouts": {
            "get": op(
                "Every rollout (summaries).",
                {"200": json_of(obj({"rollouts": array(rollout)}), "Rollouts."), **errors(401)},
            ),
            "post": op(
                "Start a rollout.",
                {"201": json_of(obj({"rollout": rollout}), "Created."), **errors(400, 401, 404, 409, 413)},
                body=json_body(ref("RolloutSpec")),
            ),
        },
        "/api/v1/rollouts/{rollout_id}": {
            "get": op(
                "One rollout with per-wave and per-device progress.",
                {"200": json_of(obj({"rollout": rollout_detail}), "The rollout."), **errors(401, 404)},
                params=[rollout_id],
            )
        },
    }
    for action in ("pause", "resume", "abort"):
        paths[f"/api/v1/rollouts/{{rollout_id}}/{action}"] = {
            "post": op(
                f"{action.capitalize()} a rollout.",
                {"200": json_of(obj({"rollout": rollout}), "Done."), **errors(400, 401, 404, 409, 413)},
                params=[rollout_id],
                body=json_body(ref("AbortBody"), required=False) if action == "abort" else None,
            )
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edgefleet hub",
            "version": "1",
            "description": "Control plane API: provisioning (claim token), operator API (bearer token), artifacts.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "Operator API token."},
                "deviceCertificate": {"type": "mutualTLS", "description": "Client certificate from the hub CA."},
            },
        },
        "security": [{"operatorToken": []}],
    }
