"""Errors of the fleet link: provisioning, identity, MQTT link and spool."""

from __future__ import annotations

from edge_agent.errors import AgentError


class FleetError(AgentError):
    """Base of the fleet package's errors."""


class IdentityError(FleetError):
    """The identity directory is missing, incomplete or inconsistent."""


class ProvisionError(FleetError):
    """Provisioning failed: hub unreachable, CA fingerprint mismatch, claim refused."""


class LinkDown(FleetError):
    """The MQTT link is not connected (or dropped while a message was in flight)."""


class AuthenticationFailed(FleetError):
    """The broker refused the device's identity; the link stops retrying."""


class PublishFailed(FleetError):
    """The broker answered a QoS 1 publish or a subscribe with a failure reason code, or timed out."""
