"""The agent's OpenAPI 3.1 document, with schemas generated from the protocols.v2 pydantic models."""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from edge_agent import __version__
from edge_agent.http.openapi_triton import triton_paths
from protocols.v2 import ErrorResponse, InferRequest, InferResponse, ModelMetadata, ServerMetadata

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input (names, datatypes, shapes, body).",
        404: "Unknown model or version.",
        413: "Body (or decompressed body) larger than the limit.",
        500: "Inference failed.",
        503: "Not ready, or cannot be served in time; see Retry-After.",
    }
    return {str(c): _json("ErrorResponse", text[c]) for c in codes}


_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "Length of the JSON header when binary tensor data follows it; 0 = raw binary request.",
    "schema": {"type": "integer", "minimum": 0},
}


def _flag(key: str, *, name: bool = False) -> dict[str, Any]:
    """Health bodies as the OIP REST spec gives them: `{"live": bool}`, `{"ready": bool}`, `{"name", "ready"}`."""
    props: dict[str, Any] = {key: {"type": "boolean"}}
    if name:
        props["name"] = {"type": "string"}
    schema = {"type": "object", "required": sorted(props), "properties": props}
    return {
        "200": {"description": "Yes.", "content": {"application/json": {"schema": schema}}},
        "400": {"description": "No.", "content": {"application/json": {"schema": schema}}},
    }


def _infer_op(params: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "summary": "Run inference (JSON, or the binary tensor data extension).",
        "parameters": [*params, _HEADER_LENGTH],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _ref("InferRequest")},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "JSON header (InferRequest) followed by raw tensor bytes.",
                },
            },
        },
        "responses": {
            "200": {
                "description": "Outputs; binary tensor data follows the JSON header when requested.",
                "content": {
                    "application/json": {"schema": _ref("InferResponse")},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **_errors(400, 404, 413, 500, 503),
        },
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the agent's HTTP API."""
    _, defs = models_json_schema(
        [(m, "validation") for m in (InferRequest, InferResponse, ServerMetadata, ModelMetadata, ErrorResponse)],
        ref_template=_REF,
    )
    meta = {"200": _json("ModelMetadata", "Model metadata."), **_errors(404, 503)}
    ready = {**_flag("ready", name=True), **_errors(404)}
    paths: dict[str, Any] = {
        "/v2": {"get": {"summary": "Server metadata.", "responses": {"200": _json("ServerMetadata", "Metadata.")}}},
        "/v2/health/live": {"get": {"summary": "Liveness.", "responses": _flag("live")}},
        "/v2/health/ready": {"get": {"summary": "Readiness: every model warmed up.", "responses": _flag("ready")}},
        "/v2/models/{model}": {"get": {"summary": "Model metadata.", "parameters": [_MODEL], "responses": meta}},
        "/v2/models/{model}/versions/{version}": {
            "get": {"summary": "Model version metadata.", "parameters": [_MODEL, _VERSION], "responses": meta}
        },
        "/v2/models/{model}/ready": {
            "get": {"summary": "Model readiness.", "parameters": [_MODEL], "responses": ready}
        },
        "/v2/models/{model}/versions/{version}/ready": {
            "get": {"summary": "Model version readiness.", "parameters": [_MODEL, _VERSION], "responses": ready}
        },
        "/v2/models/{model}/infer": {"post": _infer_op([_MODEL])},
        "/v2/models/{model}/versions/{version}/infer": {"post": _infer_op([_MODEL, _VERSION])},
        **triton_paths(_MODEL, _VERSION, _errors),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics.",
                "responses": {"200": {"description": "Text exposition format.", "content": {"text/plain": {}}}},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edgefleet edge agent",
            "version": __version__,
            "description": "KServe Open Inference Protocol V2 (Triton-compatible) for local apps.",
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }
