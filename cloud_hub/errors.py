"""Errors of the cloud hub: one base; the HTTP status mapping lives in cloud_hub/api/errors.py only."""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises to its callers."""


class InvalidRequest(HubError):
    """The request is malformed (bad JSON, bad CSR, bad labels)."""


class Unauthorized(HubError):
    """No credentials, or credentials the hub does not know (unknown claim token, wrong API token)."""


class Forbidden(HubError):
    """Known credentials that may not do this (expired or used-up claim, revoked device)."""


class NotFound(HubError):
    """Unknown device or claim."""


class Conflict(HubError):
    """The request clashes with existing state (device id owned by another claim)."""


class StoreError(HubError):
    """The database could not be opened, migrated, or written."""


class PKIError(HubError):
    """The CA or a hub identity file is missing, unreadable or inconsistent."""


class ConfigError(HubError):
    """The hub's configuration is invalid."""


class TooManyRequests(HubError):
    """Too many failed attempts from one source (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
