"""The store on SQLite and PostgreSQL: migrations, claims (atomic uses), devices, telemetry."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import insert

from cloud_hub.errors import Forbidden, NotFound, StoreError, Unauthorized
from cloud_hub.store import Store, claims, devices, schema, telemetry
from cloud_hub.store.migrations import LATEST, MIGRATIONS, Migration, migrate_sync, versions_sync


def _device(device_id: str, **over: object) -> dict[str, object]:
    now = time.time()
    values: dict[str, object] = {
        "id": device_id,
        "labels": {"site": "a"},
        "hardware": None,
        "claim_id": "clm-1",
        "cert_serial": "abc123",
        "cert_fingerprint": "0" * 64,
        "cert_not_after": now + 1000,
        "status": "active",
        "online": False,
        "created_at": now,
        "provisioned_at": now,
    }
    values.update(over)
    return values


async def test_migrations_apply_once_and_record_versions(db_url: str) -> None:
    async with Store(db_url) as store, store.begin() as conn:
        assert await conn.run_sync(versions_sync) == [m.version for m in MIGRATIONS]
    # Reopening applies nothing new.
    async with Store(db_url) as store, store.begin() as conn:
        assert await conn.run_sync(migrate_sync) == []
        assert await conn.run_sync(versions_sync) == [m.version for m in MIGRATIONS]


async def test_a_later_step_runs_once_in_order(db_url: str) -> None:
    ran: list[int] = []

    def step(conn: object) -> None:
        ran.append(LATEST + 1)

    extended = (*MIGRATIONS, Migration(LATEST + 1, "test step", step))  # type: ignore[arg-type]
    async with Store(db_url) as store:
        async with store.begin() as conn:
            assert await conn.run_sync(lambda c: migrate_sync(c, extended)) == [LATEST + 1]
        async with store.begin() as conn:
            assert await conn.run_sync(lambda c: migrate_sync(c, extended)) == []
        assert ran == [LATEST + 1]
        # A hub that knows fewer steps than the database refuses to run.
        with pytest.raises(StoreError, match="newer than this hub"):
            async with store.begin() as conn:
                await conn.run_sync(migrate_sync)


async def test_concurrent_starts_migrate_once(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        async with stores[0].begin() as conn:
            assert await conn.run_sync(versions_sync) == [m.version for m in MIGRATIONS]
    finally:
        await asyncio.gather(*(s.aclose() for s in stores))


async def test_claim_uses_expiry_and_revocation(db_url: str) -> None:
    now = time.time()
    async with Store(db_url) as store:
        async with store.begin() as conn:
            await claims.create(
                conn, claim_id="c1", token_hash="h1", labels={"site": "a"}, uses=2, expires_at=now + 60, now=now
            )
            await claims.create(conn, claim_id="c2", token_hash="h2", labels={}, uses=5, expires_at=now - 1, now=now)
        for left in (1, 0):
            async with store.begin() as conn:
                taken = await claims.consume(conn, "h1", now)
            assert taken.uses_left == left and taken.labels == {"site": "a"}
        with pytest.raises(Forbidden, match="no uses left"):
            async with store.begin() as conn:
                await claims.consume(conn, "h1", now)
        with pytest.raises(Forbidden, match="expired"):
            async with store.begin() as conn:
                await claims.consume(conn, "h2", now)
        with pytest.raises(Unauthorized):
            async with store.begin() as conn:
                await claims.consume(conn, "nope", now)
        async with store.begin() as conn:
            await claims.create(conn, claim_id="c3", token_hash="h3", labels={}, uses=5, expires_at=now + 60, now=now)
            await claims.revoke(conn, "c3", now)
        with pytest.raises(Forbidden, match="revoked"):
            async with store.begin() as conn:
                await claims.consume(conn, "h3", now)
        with pytest.raises(NotFound):
            async with store.begin() as conn:
                await claims.revoke(conn, "missing", now)
        async with store.begin() as conn:
            listed = await claims.list_all(conn)
        assert {c.id for c in listed} == {"c1", "c2", "c3"}


async def test_concurrent_consumers_never_overdraw_a_claim(db_url: str) -> None:
    now = time.time()
    async with Store(db_url) as store:
        async with store.begin() as conn:
            await claims.create(conn, claim_id="c1", token_hash="h", labels={}, uses=5, expires_at=now + 60, now=now)

        async def take() -> bool:
            try:
                async with store.begin() as conn:
                    await claims.consume(conn, "h", now)
                    await asyncio.sleep(0.01)  # hold the transaction open so they overlap
            except Forbidden:
                return False
            return True

        results = await asyncio.gather(*(take() for _ in range(20)))
        assert sum(results) == 5
        async with store.begin() as conn:
            assert (await claims.get(conn, "c1")).uses_left == 0


async def test_device_updates_revocation_and_serials(db_url: str) -> None:
    async with Store(db_url) as store:
        async with store.begin() as conn:
            await devices.insert_new(conn, _device("d1"))
            await devices.insert_new(conn, _device("d2", cert_serial="ff01", labels={"site": "b"}))
            await devices.apply_updates(
                conn,
                {
                    "d1": {"online": True, "last_seen": 5.0, "last_load": {"x": 1}},
                    "d2": {"last_seen": 6.0},
                },
            )
        async with store.begin() as conn:
            d1 = await devices.require(conn, "d1")
            assert (d1.online, d1.last_seen, d1.last_load) == (True, 5.0, {"x": 1})
            assert [d.id for d in await devices.list_all(conn, {"site": "b"})] == ["d2"]
            revoked = await devices.revoke(conn, "d2", 7.0)
            assert revoked.status == "revoked" and revoked.revoked_at == 7.0
            # Revoking again keeps the first time; ingest no longer writes to a revoked device.
            assert (await devices.revoke(conn, "d2", 9.0)).revoked_at == 7.0
            await devices.apply_updates(conn, {"d2": {"last_seen": 99.0}})
            assert (await devices.require(conn, "d2")).last_seen == 6.0
            assert await devices.revoked_serials(conn) == [("ff01", 7.0)]
            assert await devices.statuses(conn) == {"d1": "active", "d2": "revoked"}
            with pytest.raises(ValueError, match="may not update"):
                await devices.apply_updates(conn, {"d1": {"status": "active"}})
            with pytest.raises(NotFound):
                await devices.revoke(conn, "missing", 1.0)


async def test_telemetry_batches_skip_duplicates_and_prune(db_url: str) -> None:
    rows = [
        {
            "device_id": "d1",
            "boot_id": "b",
            "seq": i,
            "sent_at": i,
            "received_at": 100.0 + i,
            "pipelines": {"p": {"p99_ms": i}},
        }
        for i in range(5)
    ]
    async with Store(db_url) as store:
        async with store.begin() as conn:
            await telemetry.insert_many(conn, rows)
        async with store.begin() as conn:
            await telemetry.insert_many(conn, [*rows[3:], {**rows[0], "seq": 5, "received_at": 105.0}])
        async with store.begin() as conn:
            got = await telemetry.recent(conn, "d1")
            assert [r["seq"] for r in got] == [0, 1, 2, 3, 4, 5]
            assert got[2]["pipelines"] == {"p": {"p99_ms": 2}}
            assert [r["seq"] for r in await telemetry.recent(conn, "d1", limit=2)] == [4, 5]
            assert await telemetry.prune(conn, before=102.0) == 2
            assert len(await telemetry.recent(conn, "d1")) == 4


async def test_schema_version_table_exists_with_rows(db_url: str) -> None:
    async with Store(db_url) as store, store.begin() as conn:
        await conn.execute(insert(schema.api_tokens).values(id="t", name="n", token_hash="x", created_at=1.0))
        assert await conn.run_sync(versions_sync) == [m.version for m in MIGRATIONS]


def test_bad_database_urls_are_refused() -> None:
    with pytest.raises(StoreError, match="unsupported"):
        Store("mysql://x/y")


async def test_unreachable_database_is_a_store_error(tmp_path: object) -> None:
    with pytest.raises(StoreError, match="cannot"):
        await Store("postgresql://nobody@127.0.0.1:1/none").open()
