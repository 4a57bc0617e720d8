"""The detached signature of a model package manifest (manifest.sig.json, also carried in desired state)."""

from __future__ import annotations

import base64
import binascii
from typing import Literal

from pydantic import Field, field_validator

from protocols.common import WireModel

# Key ids are the first 16 hex characters of sha256(raw 32-byte ed25519 public key).
KEY_ID_PATTERN = r"^[0-9a-f]{16}$"
ED25519_SIGNATURE_SIZE = 64


class ManifestSignature(WireModel):
    """An ed25519 signature over `Manifest.canonical_bytes()`, naming the key that made it."""

    v: Literal[1] = Field(default=1, description="Signature schema version.")
    algorithm: Literal["ed25519"] = Field(default="ed25519", description="Signature algorithm.")
    key_id: str = Field(
        pattern=KEY_ID_PATTERN,
        description="First 16 hex chars of sha256 of the signer's raw public key.",
    )
    signature: str = Field(description="Standard base64 of the 64-byte ed25519 signature.")

    @field_validator("signature")
    @classmethod
    def _is_64_bytes_base64(cls, value: str) -> str:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("signature is not valid base64") from exc
        if len(raw) != ED25519_SIGNATURE_SIZE:
            raise ValueError(f"signature must decode to {ED25519_SIGNATURE_SIZE} bytes, got {len(raw)}")
        return value

    def signature_bytes(self) -> bytes:
        """The raw 64 signature bytes."""
        return base64.b64decode(self.signature, validate=True)
