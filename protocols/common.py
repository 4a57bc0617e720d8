"""Shared base classes and constrained types of the wire contract."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

# Bumped on an incompatible change of any message; every message carries it as `v`.
PROTOCOL_VERSION = 1

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NAME_RE = re.compile(_NAME_PATTERN)

# Model, pipeline and tensor names: safe as a path component and a URL segment (no '/', no '..').
Name = Annotated[str, StringConstraints(pattern=_NAME_PATTERN)]
# Model versions are strings in V2 ("1", "2", "2024.05.1").
Version = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]
# Device ids double as certificate CN and MQTT topic level: no '+', '#', '/'.
DeviceId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ProtocolError(ValueError):
    """A message or body does not follow the wire contract."""


class WireModel(BaseModel):
    """Base for every message on the wire: immutable, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def is_safe_name(value: str) -> bool:
    """True if `value` is a valid model/pipeline/tensor name (usable as a path component)."""
    return NAME_RE.fullmatch(value) is not None and value not in {".", ".."}
