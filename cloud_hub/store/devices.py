"""Device registry queries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.errors import NotFound
from cloud_hub.store import schema
from cloud_hub.store.records import DeviceRecord
from cloud_hub.store.telemetry import placeholders

_d = schema.devices.c
_r = schema.retired_certs.c
_a = schema.reprovision_approvals.c
ACTIVE = "active"
REVOKED = "revoked"
# Columns ingest may update; anything else changes only through provisioning or revoke.
INGEST_COLUMNS = frozenset(
    {"online", "last_seen", "boot_id", "last_seq", "last_load", "models", "agent_version", "hardware", "reported"}
)


async def get(conn: AsyncConnection, device_id: str) -> DeviceRecord | None:
    """One device, or None."""
    row = (await conn.execute(select(schema.devices).where(_d.id == device_id))).mappings().first()
    return None if row is None else DeviceRecord.from_row(row)


async def require(conn: AsyncConnection, device_id: str) -> DeviceRecord:
    """One device; NotFound if absent."""
    record = await get(conn, device_id)
    if record is None:
        raise NotFound(f"no device {device_id!r}")
    return record


async def list_all(conn: AsyncConnection, labels: Mapping[str, str] | None = None) -> list[DeviceRecord]:
    """Devices ordered by id, optionally those whose labels include every `labels` pair."""
    rows = await conn.execute(select(schema.devices).order_by(_d.id))
    records = [DeviceRecord.from_row(r) for r in rows.mappings()]
    if labels:
        # Filtered here rather than in SQL: JSON containment differs between SQLite and PostgreSQL.
        records = [r for r in records if all(r.labels.get(k) == v for k, v in labels.items())]
    return records


async def insert_new(conn: AsyncConnection, values: Mapping[str, Any]) -> None:
    """Insert a freshly provisioned device."""
    await conn.execute(insert(schema.devices).values(**values))


async def reprovision(conn: AsyncConnection, device_id: str, values: Mapping[str, Any]) -> None:
    """Give an existing device a new certificate (and hardware, labels)."""
    await conn.execute(update(schema.devices).where(_d.id == device_id).values(**values))


async def revoke(conn: AsyncConnection, device_id: str, now: float) -> DeviceRecord:
    """Mark a device revoked (idempotent: the first revocation time is kept)."""
    await require(conn, device_id)
    await conn.execute(
        update(schema.devices)
        .where(_d.id == device_id, _d.status != REVOKED)
        .values(status=REVOKED, revoked_at=now, online=False)
    )
    return await require(conn, device_id)


async def revoked_serials(conn: AsyncConnection) -> list[tuple[str, float]]:
    """(certificate serial hex, revoked_at) of every revoked device and every certificate replaced by
    re-provisioning, for the CRL."""
    rows = await conn.execute(select(_d.cert_serial, _d.revoked_at).where(_d.status == REVOKED).order_by(_d.id))
    retired = await conn.execute(select(_r.serial, _r.retired_at).order_by(_r.retired_at))
    return [(serial, at or 0.0) for serial, at in rows] + [(serial, at) for serial, at in retired]


async def retire_cert(conn: AsyncConnection, device_id: str, serial: str, now: float) -> None:
    """Record a certificate that re-provisioning replaced (it goes on the CRL)."""
    await conn.execute(insert(schema.retired_certs).values(serial=serial, device_id=device_id, retired_at=now))


async def approve_reprovision(conn: AsyncConnection, device_id: str, until: float) -> None:
    """Let the device id be re-provisioned once, without proof of its key, until `until`."""
    await require(conn, device_id)
    await conn.execute(delete(schema.reprovision_approvals).where(_a.device_id == device_id))
    await conn.execute(insert(schema.reprovision_approvals).values(device_id=device_id, approved_until=until))


async def take_approval(conn: AsyncConnection, device_id: str, now: float) -> bool:
    """Use up an operator approval to re-provision `device_id`; False when there is none (or it expired)."""
    result = await conn.execute(
        delete(schema.reprovision_approvals).where(_a.device_id == device_id, _a.approved_until >= now)
    )
    return bool(result.rowcount)


async def statuses(conn: AsyncConnection, ids: Iterable[str] | None = None) -> dict[str, str]:
    """id -> status for every device (or for `ids`)."""
    query = select(_d.id, _d.status)
    if ids is not None:
        query = query.where(_d.id.in_(list(ids)))
    return {device_id: status for device_id, status in await conn.execute(query)}


async def apply_updates(conn: AsyncConnection, updates: Mapping[str, Mapping[str, Any]]) -> None:
    """Apply ingest updates {device_id: {column: value}}: one executemany per distinct column set."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    # Sorted: replicas updating overlapping devices then lock rows in the same order (no deadlocks on PG).
    for device_id, values in sorted(updates.items()):
        unknown = set(values) - INGEST_COLUMNS
        if unknown:
            raise ValueError(f"ingest may not update {sorted(unknown)}")
        groups.setdefault(frozenset(values), []).append({"b_id": device_id, **{f"b_{k}": v for k, v in values.items()}})
    for columns, params in groups.items():
        stmt = (
            update(schema.devices)
            .where(_d.id == bindparam("b_id"), _d.status != REVOKED)
            .values({c: bindparam(f"b_{c}") for c in sorted(columns)})
        )
        await conn.execute(stmt, params)


# (last_seen, boot_id, last_seq, last_load JSON text, models JSON text, device id): one device's newest load.
EncodedLoad = tuple[float, str, int, str, str, str]
_LOAD_COLUMNS = ("last_seen", "boot_id", "last_seq", "last_load", "models")


async def apply_loads(conn: AsyncConnection, loads: Sequence[EncodedLoad]) -> None:
    """Write devices' newest load figures in one driver-level executemany (revoked devices untouched).

    The ingest counterpart of `apply_updates` for its most frequent update, with the JSON already
    encoded: at a 10 s report interval every report ends up as one of these rows.
    """
    if not loads:
        return
    marks = placeholders(conn, len(_LOAD_COLUMNS) + 1).split(", ")
    sets = ", ".join(f"{c} = {m}" for c, m in zip(_LOAD_COLUMNS, marks, strict=False))
    # Only constant identifiers and parameter markers are formatted in; every value is bound.
    sql = f"UPDATE {schema.devices.name} SET {sets} WHERE id = {marks[-1]} AND status != '{REVOKED}'"  # noqa: S608
    # Sorted by device id, as apply_updates: replicas lock rows in one order.
    await conn.exec_driver_sql(sql, sorted(loads, key=lambda row: row[-1]))


async def observed(conn: AsyncConnection, ids: Sequence[str], chunk: int = 500) -> dict[str, dict[str, Any]]:
    """id -> {id, online, reported, models} of the given devices that exist (rollout observations)."""
    rows: dict[str, dict[str, Any]] = {}
    for i in range(0, len(ids), chunk):
        query = select(_d.id, _d.online, _d.reported, _d.models).where(_d.id.in_(list(ids[i : i + chunk])))
        rows.update({r["id"]: dict(r) for r in (await conn.execute(query)).mappings()})
    return rows
