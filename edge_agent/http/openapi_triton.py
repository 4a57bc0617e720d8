"""OpenAPI paths of the Triton extensions the agent serves (http/triton.py, http/repository.py).

Explicit load/unload are left out of the document on purpose: a generated request would unload the models
the rest of a fuzz run calls. docs/triton-compat.md describes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["triton_paths"]

_OBJECT = {"type": "object"}


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_STATS = {"type": "object", "required": ["model_stats"], "properties": {"model_stats": {"type": "array"}}}
_INDEX_ROW = {
    "type": "object",
    "required": ["name", "version", "state", "reason"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "state": {"enum": ["READY", "LOADING", "UNAVAILABLE"]},
        "reason": {"type": "string"},
    },
}
_LOG = {
    "type": "object",
    "properties": {
        "log_file": {"type": "string"},
        "log_info": {"type": "boolean"},
        "log_warning": {"type": "boolean"},
        "log_error": {"type": "boolean"},
        "log_verbose_level": {"type": "integer", "minimum": 0},
        "log_format": {"type": "string"},
    },
}


def triton_paths(
    model: dict[str, Any], version: dict[str, Any], errors: Callable[..., dict[str, Any]]
) -> dict[str, Any]:
    """Paths of the model configuration, statistics, repository index and logging extensions."""
    config = {"200": _ok("Triton's model configuration.", _OBJECT), **errors(404, 503)}
    stats = {"200": _ok("Triton's statistics.", _STATS), **errors(404, 503)}
    body = {"required": False, "content": {"application/json": {"schema": _OBJECT}}}
    return {
        "/v2/models/{model}/config": {"get": {"summary": "Model config.", "parameters": [model], "responses": config}},
        "/v2/models/{model}/versions/{version}/config": {
            "get": {"summary": "Model version config.", "parameters": [model, version], "responses": config}
        },
        "/v2/models/stats": {"get": {"summary": "Statistics of every model.", "responses": stats}},
        "/v2/models/{model}/stats": {
            "get": {"summary": "Model statistics.", "parameters": [model], "responses": stats}
        },
        "/v2/models/{model}/versions/{version}/stats": {
            "get": {"summary": "Model version statistics.", "parameters": [model, version], "responses": stats}
        },
        "/v2/repository/index": {
            "post": {
                "summary": 'Model versions and their state; body `{"ready": true}` lists ready ones only.',
                "requestBody": body,
                "responses": {"200": _ok("Index.", {"type": "array", "items": _INDEX_ROW}), **errors(400)},
            }
        },
        "/v2/logging": {
            "get": {"summary": "Log settings.", "responses": {"200": _ok("Settings.", _LOG)}},
            "post": {
                "summary": "Change log settings (Python log level of the agent).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _LOG}}},
                "responses": {"200": _ok("Settings now.", _LOG), **errors(400)},
            },
        },
    }
