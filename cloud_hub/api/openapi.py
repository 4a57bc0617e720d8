"""The hub's OpenAPI 3.1 document, served at /api/v1/openapi.json (operator token required).

Schemas come from the code that makes the bodies: the protocols pydantic models (provisioning, desired
state), the rollout spec, and the store's record dataclasses (claims, devices, models), so a field added
there shows up here. tests/fuzz/test_fuzz_openapi.py runs schemathesis against a live hub with this
document, and tests/security/test_sec_hub_auth.py checks that it names every route of the router.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.json_schema import models_json_schema

from cloud_hub.rollouts.model import RolloutSpec, TargetDevice
from cloud_hub.store.records import ClaimRecord, DeviceRecord
from protocols.messages import DesiredState, Labels, ProvisionRequest, ProvisionResponse

__all__ = ["OPENAPI_PATH", "openapi_document"]

OPENAPI_PATH = "/api/v1/openapi.json"
_REF = "#/components/schemas/{model}"
_ERRORS = {
    400: "Invalid request (body, query or path).",
    401: "Missing or unknown operator token.",
    403: "Credential valid but not allowed (revoked device, used-up claim, not a device certificate).",
    404: "No such resource.",
    409: "Conflicts with the current state.",
    413: "Body larger than the limit.",
}


class ErrorBody(BaseModel):
    """Every error: `{"error": "..."}`."""

    model_config = ConfigDict(extra="forbid")
    error: str = Field(description="What went wrong.")


class ClaimCreate(BaseModel):
    """POST /api/v1/claims."""

    model_config = ConfigDict(extra="allow")
    labels: Labels = Field(default_factory=dict, description="Labels given to devices of this claim.")
    uses: int = Field(default=1, description="How many devices may provision with the token.")
    expires_in_s: float = Field(default=7 * 86_400, description="Seconds until the token expires.")


class PublisherTrust(BaseModel):
    """POST /api/v1/publishers."""

    public_key_pem: str = Field(description="Ed25519 public key (PEM) whose signed packages are admitted.")


class AbortBody(BaseModel):
    """POST /api/v1/rollouts/{rollout_id}/abort."""

    rollback: bool = Field(default=False, description="Set the touched devices back to their previous version.")


def _record(cls: type[Any]) -> dict[str, Any]:
    """JSON schema of a record dataclass (fields required, no others)."""
    schema: dict[str, Any] = TypeAdapter(cls).json_schema(mode="serialization", ref_template=_REF)
    schema.pop("title", None)
    return {**schema, "additionalProperties": False}


def _obj(properties: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": extra,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _json(_ref("ErrorBody"), _ERRORS[c]) for c in codes}


def _path(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    if security is not None:
        op["security"] = security
    return op


def _json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the hub's HTTP API."""
    _, defs = models_json_schema(
        [
            (m, "validation" if m in (ProvisionRequest, RolloutSpec) else "serialization")
            for m in (ErrorBody, ProvisionRequest, ProvisionResponse, DesiredState, RolloutSpec)
        ],
        ref_template=_REF,
    )
    schemas: dict[str, Any] = defs.get("$defs", {})
    claim, device = _record(ClaimRecord), _record(DeviceRecord)
    target = _record(TargetDevice)
    for name, cls in (("ClaimCreate", ClaimCreate), ("PublisherTrust", PublisherTrust), ("AbortBody", AbortBody)):
        schemas[name] = cls.model_json_schema(mode="validation", ref_template=_REF)
    model_summary = _obj(
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
    rollout = _obj(
        {
            "id": {"type": "string"},
            "model": {"type": "string"},
            "version": {"type": "string"},
            "spec": _ref("RolloutSpec"),
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

    device_id = _path("device_id", "Device id (certificate CN).")
    claim_id = _path("claim_id", "Claim id.")
    rollout_id = _path("rollout_id", "Rollout id.")
    public: list[dict[str, list[str]]] = []
    pem = {"description": "PEM certificate.", "content": {"application/x-pem-file": {"schema": {"type": "string"}}}}
    artifact_get = _op(
        "Download a package tar (Range, If-Range, If-None-Match); a device certificate or the operator token.",
        {
            "200": {"description": "The whole tar.", "content": {"application/x-tar": {"schema": {}}}},
            "206": {"description": "One byte range.", "content": {"application/x-tar": {"schema": {}}}},
            "304": {"description": "Not modified (If-None-Match)."},
            "416": _json(_ref("ErrorBody"), "Range not satisfiable."),
            **_errors(401, 403, 404),
        },
        params=[_path("sha256", "sha256 of the tar.", "^[0-9a-f]{64}$")],
        security=[{"operatorToken": []}, {"deviceCertificate": []}],
    )
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _op("Liveness.", {"200": _json(_obj({"status": {"const": "ok"}}), "Serving.")}, security=public)
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (unauthenticated, as scrapers expect; counts only).",
                {"200": {"description": "Text exposition format.", "content": {"text/plain": {}}}},
                security=public,
            )
        },
        "/api/v1/ca": {"get": _op("The hub CA certificate.", {"200": pem}, security=public)},
        "/api/v1/ca.pem": {"get": _op("The hub CA certificate.", {"200": pem}, security=public)},
        OPENAPI_PATH: {
            "get": _op("This document.", {"200": _json({"type": "object"}, "OpenAPI 3.1."), **_errors(401)})
        },
        "/api/v1/provision": {
            "post": _op(
                "Provision a device: the claim token is the credential; returns its certificate and trust anchors.",
                {"200": _json(_ref("ProvisionResponse"), "Provisioned."), **_errors(400, 401, 403, 409, 413)},
                body=_json_body(_ref("ProvisionRequest")),
                security=public,
            )
        },
        "/api/v1/claims": {
            "get": _op(
                "Every claim (never tokens).", {"200": _json(_obj({"claims": _arr(claim)}), "Claims."), **_errors(401)}
            ),
            "post": _op(
                "Create a claim; the token is shown only in this answer.",
                {
                    "201": _json(
                        _obj(
                            {
                                "claim": claim,
                                "token": {"type": "string"},
                                "join_command": {"type": "string"},
                                "ca_fingerprint": {"type": "string"},
                            }
                        ),
                        "Created.",
                    ),
                    **_errors(400, 401, 413),
                },
                body=_json_body(_ref("ClaimCreate")),
            ),
        },
        "/api/v1/claims/{claim_id}/revoke": {
            "post": _op(
                "Stop a claim from provisioning more devices.",
                {"200": _json(_obj({"claim": claim}), "Revoked."), **_errors(401, 404)},
                params=[claim_id],
            )
        },
        "/api/v1/devices": {
            "get": _op(
                "Devices, filtered by labels.",
                {"200": _json(_obj({"devices": _arr(device)}), "Devices."), **_errors(400, 401)},
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
            "get": _op(
                "One device with its recent telemetry.",
                {"200": _json(_obj({"device": device_detail}), "The device."), **_errors(401, 404)},
                params=[device_id],
            )
        },
        "/api/v1/devices/{device_id}/revoke": {
            "post": _op(
                "Revoke a device: ingest ignores it, its certificate goes on the CRL.",
                {"200": _json(_obj({"device": device}), "Revoked."), **_errors(401, 404)},
                params=[device_id],
            )
        },
        "/api/v1/devices/{device_id}/desired": {
            "get": _op(
                "The latest desired state written for a device.",
                {"200": _json(_obj({"desired": _ref("DesiredState")}), "Desired state."), **_errors(401, 404)},
                params=[device_id],
            )
        },
        "/api/v1/devices/{device_id}/resync": {
            "post": _op(
                "Publish the latest desired state of a device again (retained).",
                {
                    "200": _json(_obj({"desired": _ref("DesiredState"), "published": {"type": "boolean"}}), "Sent."),
                    **_errors(401, 404),
                },
                params=[device_id],
            )
        },
        "/api/v1/models": {
            "get": _op(
                "Every pushed model version.",
                {"200": _json(_obj({"models": _arr(model_summary)}), "Models."), **_errors(401)},
                params=[{"name": "name", "in": "query", "required": False, "schema": {"type": "string"}}],
            ),
            "post": _op(
                "Push a package tar (verified, re-signed by the hub).",
                {
                    "200": _json(_obj({"model": model_summary, "created": {"type": "boolean"}}), "Already there."),
                    "201": _json(_obj({"model": model_summary, "created": {"type": "boolean"}}), "Stored."),
                    **_errors(400, 401, 409, 413),
                },
                params=[{"name": "allow_unsigned", "in": "query", "required": False, "schema": {"type": "string"}}],
                body={
                    "required": True,
                    "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
                },
            ),
        },
        "/api/v1/models/{name}/{version}": {
            "get": _op(
                "One model version with its manifest, the hub signature and its artifact URL.",
                {"200": _json(_obj({"model": model_full}), "The version."), **_errors(401, 404)},
                params=[_path("name", "Model name."), _path("version", "Version.")],
            )
        },
        "/api/v1/publishers": {
            "get": _op(
                "Keys a pushed package may be signed by.",
                {"200": _json(_obj({"publishers": {"type": "array"}}), "Keys."), **_errors(401)},
            ),
            "post": _op(
                "Trust packages signed by an ed25519 key.",
                {"201": _json(_obj({"key_id": {"type": "string"}}), "Trusted."), **_errors(400, 401, 413)},
                body=_json_body(_ref("PublisherTrust")),
            ),
        },
        "/api/v1/artifacts/{sha256}.tar": {"get": artifact_get},
        "/api/v1/rollouts": {
            "get": _op(
                "Every rollout (summaries).",
                {"200": _json(_obj({"rollouts": _arr(rollout)}), "Rollouts."), **_errors(401)},
            ),
            "post": _op(
                "Start a rollout.",
                {"201": _json(_obj({"rollout": rollout}), "Created."), **_errors(400, 401, 404, 409, 413)},
                body=_json_body(_ref("RolloutSpec")),
            ),
        },
        "/api/v1/rollouts/{rollout_id}": {
            "get": _op(
                "One rollout with per-wave and per-device progress.",
                {"200": _json(_obj({"rollout": rollout_detail}), "The rollout."), **_errors(401, 404)},
                params=[rollout_id],
            )
        },
    }
    for action in ("pause", "resume", "abort"):
        paths[f"/api/v1/rollouts/{{rollout_id}}/{action}"] = {
            "post": _op(
                f"{action.capitalize()} a rollout.",
                {"200": _json(_obj({"rollout": rollout}), "Done."), **_errors(400, 401, 404, 409, 413)},
                params=[rollout_id],
                body=_json_body(_ref("AbortBody"), required=False) if action == "abort" else None,
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


def _arr(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}
