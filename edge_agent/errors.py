"""Errors of the edge agent: one base; HTTP status mapping lives in edge_agent/http/errors.py only."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the agent raises to its callers."""


class InvalidInput(AgentError):
    """The request does not match the model's metadata or the V2 protocol (Triton INVALID_ARG)."""


class NotFound(AgentError):
    """Unknown model, pipeline or version (Triton NOT_FOUND)."""


class PayloadTooLarge(AgentError):
    """The request body, or its decompressed size, exceeds the configured limit."""


class UnsupportedMediaType(AgentError):
    """The request's Content-Encoding is not accepted (HTTP 415)."""


class Unavailable(AgentError):
    """The model cannot take the request now (not ready, queue full, deadline); retry later."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class InferenceFailed(AgentError):
    """The runtime failed while running a batch (Triton INTERNAL)."""


class StoreError(AgentError):
    """The on-disk model store is inconsistent or an operation on it failed."""


class ConfigError(AgentError):
    """The agent's configuration is invalid."""
