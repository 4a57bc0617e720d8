"""The wire contract of edgefleet: pydantic v2 models and topic/URL builders. No I/O, no heavy imports."""

from protocols.common import PROTOCOL_VERSION, ProtocolError

__all__ = ["PROTOCOL_VERSION", "ProtocolError"]
