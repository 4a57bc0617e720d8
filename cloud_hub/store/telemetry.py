"""Telemetry history: recent load reports per device, for fleet views and rollout health gates."""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import pydantic_core
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.store import schema

_t = schema.telemetry.c

# (device_id, boot_id, seq, sent_at, received_at, pipelines as JSON text): the ingest hot path's row.
EncodedRow = tuple[str, str, int, float, float, str]
ROW_COLUMNS = ("device_id", "boot_id", "seq", "sent_at", "received_at", "pipelines")
_KEY = itemgetter(0, 1, 2)


def placeholders(conn: AsyncConnection, n: int) -> str:
    """`n` positional parameter markers in the driver's own style (aiosqlite `?`, asyncpg `$1`)."""
    style = conn.dialect.paramstyle
    if style == "qmark":
        return ", ".join("?" * n)
    if style == "numeric_dollar":
        return ", ".join(f"${i}" for i in range(1, n + 1))
    raise NotImplementedError(f"parameter style {style!r}")


async def insert_rows(conn: AsyncConnection, rows: Sequence[EncodedRow]) -> None:
    """Insert encoded reports in one driver-level executemany; a (device_id, boot_id, seq) stored is skipped.

    SQLAlchemy's per-row parameter processing cost more than SQLite's own insert (bench/ingest.py, about
    14 vs 6 us a row), so ingest hands the driver tuples with the JSON already encoded. JSON text binds to
    SQLite's JSON (text) column and, through SQLAlchemy's asyncpg codec, to PostgreSQL's JSONB.
    """
    if not rows:
        return
    # Only constant identifiers and parameter markers are formatted in; every value is bound.
    sql = (
        f"INSERT INTO {schema.telemetry.name} ({', '.join(ROW_COLUMNS)}) VALUES ({placeholders(conn, 6)}) "  # noqa: S608
        "ON CONFLICT (device_id, boot_id, seq) DO NOTHING"
    )
    # Sorted by key so concurrent replicas take index locks in one order.
    await conn.exec_driver_sql(sql, sorted(rows, key=_KEY))


async def insert_many(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert reports given as column dicts; a (device_id, boot_id, seq) already stored is skipped."""
    await insert_rows(
        conn,
        [
            (r["device_id"], r["boot_id"], r["seq"], r["sent_at"], r["received_at"], encode_json(r["pipelines"]))
            for r in rows
        ],
    )


def encode_json(value: Any) -> str:
    """JSON text as the store writes it (pydantic-core's encoder, as the engine's json_serializer)."""
    return pydantic_core.to_json(value).decode()


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


async def received_since(
    conn: AsyncConnection, ids: Sequence[str], since: float, chunk: int = 500
) -> list[dict[str, Any]]:
    """{device_id, received_at, pipelines} of the devices' reports received after `since`, oldest first per chunk."""
    out: list[dict[str, Any]] = []
    for i in range(0, len(ids), chunk):
        query = (
            select(_t.device_id, _t.received_at, _t.pipelines)
            .where(_t.device_id.in_(list(ids[i : i + chunk])), _t.received_at > since)
            .order_by(_t.received_at)
        )
        out.extend(dict(r) for r in (await conn.execute(query)).mappings())
    return out
