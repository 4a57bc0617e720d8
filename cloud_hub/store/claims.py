"""Claim queries. Uses are taken with one conditional UPDATE ... RETURNING, safe under concurrency."""

from __future__ import annotations

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.errors import Forbidden, NotFound, Unauthorized
from cloud_hub.store import schema
from cloud_hub.store.records import ClaimRecord

_c = schema.claims.c
_PUBLIC = [_c.id, _c.labels, _c.uses_total, _c.uses_left, _c.expires_at, _c.created_at, _c.revoked_at]


async def create(
    conn: AsyncConnection,
    *,
    claim_id: str,
    token_hash: str,
    labels: dict[str, str],
    uses: int,
    expires_at: float,
    now: float,
) -> ClaimRecord:
    """Insert a claim."""
    values = {
        "id": claim_id,
        "token_hash": token_hash,
        "labels": labels,
        "uses_total": uses,
        "uses_left": uses,
        "expires_at": expires_at,
        "created_at": now,
        "revoked_at": None,
    }
    await conn.execute(insert(schema.claims).values(**values))
    return ClaimRecord(claim_id, labels, uses, uses, expires_at, now, None)


async def list_all(conn: AsyncConnection) -> list[ClaimRecord]:
    """Every claim, newest first."""
    rows = await conn.execute(select(*_PUBLIC).order_by(_c.created_at.desc(), _c.id))
    return [ClaimRecord.from_row(r) for r in rows.mappings()]


async def get(conn: AsyncConnection, claim_id: str) -> ClaimRecord:
    """One claim by id; NotFound if absent."""
    row = (await conn.execute(select(*_PUBLIC).where(_c.id == claim_id))).mappings().first()
    if row is None:
        raise NotFound(f"no claim {claim_id!r}")
    return ClaimRecord.from_row(row)


async def consume(conn: AsyncConnection, token_hash: str, now: float) -> ClaimRecord:
    """Take one use of the claim with this token hash, atomically; Unauthorized/Forbidden if it cannot be used."""
    taken = await conn.execute(
        update(schema.claims)
        .where(_c.token_hash == token_hash, _c.uses_left > 0, _c.expires_at > now, _c.revoked_at.is_(None))
        .values(uses_left=_c.uses_left - 1)
        .returning(*_PUBLIC)
    )
    row = taken.mappings().first()
    if row is not None:
        return ClaimRecord.from_row(row)
    # Say why, without revealing more than that the token exists.
    found = (await conn.execute(select(*_PUBLIC).where(_c.token_hash == token_hash))).mappings().first()
    if found is None:
        raise Unauthorized("unknown claim token")
    claim = ClaimRecord.from_row(found)
    if claim.revoked_at is not None:
        raise Forbidden("claim has been revoked")
    if claim.expires_at <= now:
        raise Forbidden("claim has expired")
    raise Forbidden("claim has no uses left")


async def revoke(conn: AsyncConnection, claim_id: str, now: float) -> ClaimRecord:
    """Stop a claim from provisioning more devices (devices already provisioned keep working)."""
    result = await conn.execute(
        update(schema.claims).where(_c.id == claim_id, _c.revoked_at.is_(None)).values(revoked_at=now)
    )
    if result.rowcount == 0:
        await get(conn, claim_id)  # NotFound if it does not exist; else it was already revoked
    return await get(conn, claim_id)


async def purge(conn: AsyncConnection, claim_id: str) -> None:
    """Delete a claim row (tests and maintenance)."""
    await conn.execute(delete(schema.claims).where(_c.id == claim_id))
