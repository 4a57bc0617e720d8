"""The hub's database: an async SQLAlchemy engine on SQLite (default) or PostgreSQL, migrated at open."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

import pydantic_core
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cloud_hub.errors import StoreError
from cloud_hub.store.migrations import migrate_sync

log = logging.getLogger(__name__)

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


def normalize_url(url: str) -> str:
    """Give plain `sqlite:///` and `postgresql://` URLs their async driver."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"invalid database URL: {exc}") from exc
    driver = _DRIVERS.get(parsed.drivername, parsed.drivername)
    if driver not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
        raise StoreError(f"unsupported database {parsed.drivername!r}: use sqlite:/// or postgresql://")
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def _to_json(value: Any) -> str:
    return pydantic_core.to_json(value).decode()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" hook emit BEGIN itself (pysqlite's implicit transactions skip DDL).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching a fresh file to WAL takes a lock that a concurrent opener may hold.
    for pragma in ("busy_timeout=10000", "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock up front: no SQLITE_BUSY when a read transaction upgrades to a write.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    """Owns the engine; `begin()` gives one transaction. Use as an async context manager."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        # pydantic-core's JSON encoder: several times faster than json.dumps for ingest's rows.
        kwargs: dict[str, Any] = {"echo": echo, "json_serializer": _to_json}
        if self.dialect == "postgresql":
            kwargs.update(pool_size=5, max_overflow=5, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)

    async def open(self) -> Self:
        """Connect and apply pending migrations."""
        try:
            async with self.engine.begin() as conn:
                applied = await conn.run_sync(migrate_sync)
        except SQLAlchemyError as exc:
            await self.engine.dispose()
            raise StoreError(f"cannot open database {self.safe_url}: {exc}") from exc
        except OSError as exc:
            await self.engine.dispose()
            raise StoreError(f"cannot reach database {self.safe_url}: {exc}") from exc
        if applied:
            log.info("database %s migrated to schema versions %s", self.safe_url, applied)
        return self

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs and errors."""
        return make_url(self.url).render_as_string(hide_password=True)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed on success, rolled back on error."""
        async with self.engine.begin() as conn:
            yield conn

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
