"""Rows of the store as plain frozen dataclasses, and their JSON form for the API."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sqlalchemy import RowMapping


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    """A provisioning claim. The token itself is never stored, only its sha256."""

    id: str
    labels: dict[str, str]
    uses_total: int
    uses_left: int
    expires_at: float
    created_at: float
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: RowMapping) -> ClaimRecord:
        """Build from a `claims` row (token_hash is left out)."""
        return cls(
            id=row["id"],
            labels=dict(row["labels"]),
            uses_total=row["uses_total"],
            uses_left=row["uses_left"],
            expires_at=row["expires_at"],
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A provisioned device as the registry knows it."""

    id: str
    labels: dict[str, str]
    hardware: dict[str, Any] | None
    claim_id: str
    cert_serial: str
    cert_fingerprint: str
    cert_not_after: float
    status: str
    online: bool
    last_seen: float | None
    boot_id: str | None
    last_seq: int | None
    last_load: dict[str, Any] | None
    models: list[dict[str, Any]] | None
    agent_version: str | None
    reported: dict[str, Any] | None
    created_at: float
    provisioned_at: float
    revoked_at: float | None

    @classmethod
    def from_row(cls, row: RowMapping) -> DeviceRecord:
        """Build from a `devices` row."""
        return cls(**{f.name: row[f.name] for f in dataclasses.fields(cls)})

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)
