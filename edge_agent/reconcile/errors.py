"""Errors of the reconciler; each names the step that failed, as the reported `error` text shows it."""

from __future__ import annotations

from edge_agent.errors import AgentError


class ReconcileError(AgentError):
    """Base of the reconciler's errors: a model version could not be brought to `active`."""


class DownloadError(ReconcileError):
    """The artifact could not be fetched; `permanent` errors (403, 404) are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class IntegrityError(ReconcileError):
    """The downloaded bytes are not the artifact the desired state names (size or sha256)."""


class VerificationError(ReconcileError):
    """The artifact's signature, files or name/version do not match what is desired."""


class PrepareError(ReconcileError):
    """The runtime could not load the version, or its warm-up failed."""


class ActivationError(ReconcileError):
    """The switch to the new version failed (the old one keeps serving)."""
