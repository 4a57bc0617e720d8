"""Building blocks of the hub's OpenAPI document: the request bodies that have no model elsewhere, and
helpers that make schema and operation objects (cloud_hub/api/openapi.py assembles the document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from protocols.messages import Labels

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "Invalid request (body, query or path).",
    401: "Missing or unknown operator token.",
    403: "Credential valid but not allowed (revoked device, used-up claim, not a device certificate).",
    404: "No such resource.",
    409: "Conflicts with the current state.",
    413: "Body larger than the limit.",
    429: "Too many failed attempts from this address; see Retry-After.",
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


def record_schema(cls: type[Any]) -> dict[str, Any]:
    """JSON schema of a record dataclass (fields required, no others)."""
    schema: dict[str, Any] = TypeAdapter(cls).json_schema(mode="serialization", ref_template=REF)
    schema.pop("title", None)
    return {**schema, "additionalProperties": False}


def obj(properties: dict[str, Any], *, extra: bool = False) -> dict[str, Any]:
    """A JSON object schema whose properties are all required."""
    return {
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": extra,
    }


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": REF.format(model=name)}


def json_of(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A response (or content) of JSON with this schema."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(*codes: int) -> dict[str, Any]:
    """The error responses for these status codes."""
    return {str(c): json_of(ref("ErrorBody"), ERRORS[c]) for c in codes}


def path_param(name: str, description: str, pattern: str | None = None) -> dict[str, Any]:
    """A required path parameter."""
    schema: dict[str, Any] = {"type": "string"}
    if pattern is not None:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "description": description, "schema": schema}


def op(
    summary: str,
    responses: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    """One operation."""
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    if security is not None:
        op["security"] = security
    return op


def json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    """A JSON request body."""
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def array(items: dict[str, Any]) -> dict[str, Any]:
    """An array schema."""
    return {"type": "array", "items": items}
