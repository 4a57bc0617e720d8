"""Model registry queries: one row per pushed (name, version)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.store import schema

_m = schema.models.c


async def get(conn: AsyncConnection, name: str, version: str) -> dict[str, Any] | None:
    """One model version's row, or None."""
    row = (await conn.execute(select(schema.models).where(_m.name == name, _m.version == version))).mappings().first()
    return None if row is None else dict(row)


async def insert_model(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """Insert a pushed version (IntegrityError if its name and version exist)."""
    await conn.execute(insert(schema.models).values(**values))


async def list_rows(conn: AsyncConnection, name: str | None = None) -> list[dict[str, Any]]:
    """Every pushed version (optionally of one model), by name then push time."""
    query = select(schema.models).order_by(_m.name, _m.pushed_at, _m.version)
    if name:
        query = query.where(_m.name == name)
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def has_artifact(conn: AsyncConnection, sha256: str) -> bool:
    """True if a pushed version's stored tar has this sha256."""
    return (await conn.execute(select(_m.name).where(_m.sha256 == sha256).limit(1))).first() is not None
