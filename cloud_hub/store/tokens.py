"""Operator API tokens, stored as sha256 hashes."""

from __future__ import annotations

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.store import schema

_t = schema.api_tokens.c


async def add(conn: AsyncConnection, *, token_id: str, name: str, token_hash: str, now: float) -> None:
    """Store a token's hash."""
    await conn.execute(insert(schema.api_tokens).values(id=token_id, name=name, token_hash=token_hash, created_at=now))


async def hashes(conn: AsyncConnection) -> set[str]:
    """All token hashes (few; kept in memory by the API for the auth check)."""
    return set((await conn.execute(select(_t.token_hash))).scalars())


async def count(conn: AsyncConnection) -> int:
    """Number of tokens."""
    return int((await conn.execute(select(func.count()).select_from(schema.api_tokens))).scalar_one())
