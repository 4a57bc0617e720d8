"""Telemetry history: recent load reports per device, for fleet views and rollout health gates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.store import schema

_t = schema.telemetry.c


async def insert_many(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert reports in one executemany; a (device_id, boot_id, seq) already stored is skipped."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(schema.telemetry).on_conflict_do_nothing(index_elements=["device_id", "boot_id", "seq"])
    # Sorted by key so concurrent replicas take index locks in one order.
    await conn.execute(stmt, sorted(rows, key=lambda r: (r["device_id"], r["boot_id"], r["seq"])))


async def recent(
    conn: AsyncConnection, device_id: str, *, since: float = 0.0, limit: int = 1000
) -> list[dict[str, Any]]:
    """A device's reports received after `since`, oldest first (at most `limit`, the newest ones)."""
    query = (
        select(_t.device_id, _t.boot_id, _t.seq, _t.sent_at, _t.received_at, _t.pipelines)
        .where(_t.device_id == device_id, _t.received_at > since)
        .order_by(_t.received_at.desc(), _t.id.desc())
        .limit(limit)
    )
    rows = [dict(r) for r in (await conn.execute(query)).mappings()]
    rows.reverse()
    return rows


async def prune(conn: AsyncConnection, before: float) -> int:
    """Delete reports received before `before`; return how many went."""
    result = await conn.execute(delete(schema.telemetry).where(_t.received_at < before))
    return int(result.rowcount or 0)
