"""Claims: an operator makes one, the hub shows its token once, devices present it to provision."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pydantic import TypeAdapter, ValidationError

from cloud_hub.errors import InvalidRequest
from cloud_hub.fleet.tokens import CLAIM_PREFIX, new_id, new_token, token_hash
from cloud_hub.store import ClaimRecord, Store, claims
from protocols.messages import Labels

LABELS: TypeAdapter[dict[str, str]] = TypeAdapter(Labels)
MAX_USES = 1_000_000
MAX_EXPIRY_S = 366 * 86_400


@dataclass(frozen=True)
class NewClaim:
    """A created claim with its token (shown once) and the join line for devices."""

    claim: ClaimRecord
    token: str
    join_command: str


def check_labels(labels: object) -> dict[str, str]:
    """Validate labels like the wire contract does; InvalidRequest if not."""
    try:
        return LABELS.validate_python(labels)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid labels: {exc.errors()[0]['msg']}") from exc


def join_command(hub_url: str, token: str, ca_fingerprint: str) -> str:
    """The line an operator runs on a new device."""
    return f"edge-agent provision --hub {hub_url} --claim {token} --ca-fingerprint {ca_fingerprint}"


class ClaimService:
    """Create, list and revoke claims."""

    def __init__(self, store: Store, hub_url: str, ca_fingerprint: str) -> None:
        self.store = store
        self.hub_url = hub_url
        self.ca_fingerprint = ca_fingerprint

    async def create(self, labels: object, uses: int, expires_in_s: float) -> NewClaim:
        """A new claim valid for `uses` devices during `expires_in_s` seconds."""
        checked = check_labels(labels)
        if not 1 <= uses <= MAX_USES:
            raise InvalidRequest(f"uses must be 1..{MAX_USES}")
        if not 0 < expires_in_s <= MAX_EXPIRY_S:
            raise InvalidRequest(f"expires_in_s must be in (0, {MAX_EXPIRY_S}]")
        token = new_token(CLAIM_PREFIX)
        now = time.time()
        async with self.store.begin() as conn:
            record = await claims.create(
                conn,
                claim_id=new_id("clm"),
                token_hash=token_hash(token),
                labels=checked,
                uses=uses,
                expires_at=now + expires_in_s,
                now=now,
            )
        return NewClaim(record, token, join_command(self.hub_url, token, self.ca_fingerprint))

    async def list(self) -> list[ClaimRecord]:
        """Every claim (never the tokens)."""
        async with self.store.begin() as conn:
            return await claims.list_all(conn)

    async def revoke(self, claim_id: str) -> ClaimRecord:
        """Stop a claim from provisioning more devices."""
        async with self.store.begin() as conn:
            return await claims.revoke(conn, claim_id, time.time())
