"""A throw-away PostgreSQL database for the benchmarks that run hub replicas (EDGEFLEET_TEST_PG)."""

from __future__ import annotations

import asyncio
import os

PG_URL = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_database(action: str, name: str) -> None:
    """`create` or `drop` (forced) the database `name` on the server of PG_URL."""

    async def run() -> None:
        import asyncpg
        from sqlalchemy.engine import make_url

        dsn = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await asyncpg.connect(dsn)
        try:
            sql = (
                f'CREATE DATABASE "{name}"' if action == "create" else f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
            )
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())
