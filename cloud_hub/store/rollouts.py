"""Queries of rollouts, their devices, the per-device desired state, and the driver lease."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.store import schema

_r = schema.rollouts.c
_rd = schema.rollout_devices.c
_dd = schema.device_desired.c
_l = schema.leases.c
# Columns of a rollout's device row that change after it is planned (`update_devices`).
DEVICE_MUTABLE = (
    "status",
    "revision",
    "previous",
    "baseline",
    "started_at",
    "activated_at",
    "error",
    "updated_at",
)


# --- rollouts ------------------------------------------------------------------------------------------


async def insert_rollout(
    conn: AsyncConnection, values: Mapping[str, Any], devices: Sequence[Mapping[str, Any]]
) -> None:
    """Store a new rollout row (every column) and its planned device rows (without rollout_id)."""
    await conn.execute(insert(schema.rollouts).values(**values))
    if devices:
        await conn.execute(insert(schema.rollout_devices), [{"rollout_id": values["id"], **d} for d in devices])


async def load(
    conn: AsyncConnection, rollout_id: str, *, for_update: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """One rollout row and its device rows by position (the rollout row-locked on PostgreSQL with `for_update`)."""
    query = select(schema.rollouts).where(_r.id == rollout_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    rows = await conn.execute(select(schema.rollout_devices).where(_rd.rollout_id == rollout_id).order_by(_rd.position))
    return dict(row), [dict(d) for d in rows.mappings()]


async def all_rows(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every rollout row (no device rows), oldest first."""
    return [dict(r) for r in (await conn.execute(select(schema.rollouts).order_by(_r.created_at, _r.id))).mappings()]


async def device_counts(conn: AsyncConnection) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Per rollout, devices per status, and its number of waves (from one GROUP BY, no device rows)."""
    grouped = await conn.execute(
        select(_rd.rollout_id, _rd.status, func.count(), func.max(_rd.wave)).group_by(_rd.rollout_id, _rd.status)
    )
    counts: dict[str, dict[str, int]] = {}
    waves: dict[str, int] = {}
    for rollout_id, status, n, top in grouped:
        counts.setdefault(rollout_id, {})[status] = int(n)
        waves[rollout_id] = max(waves.get(rollout_id, 0), int(top) + 1)
    return counts, waves


async def ids(conn: AsyncConnection, states: Iterable[str] | None = None, model: str | None = None) -> list[str]:
    """Rollout ids, oldest first, optionally in some states / for one model."""
    query = select(_r.id).order_by(_r.created_at, _r.id)
    if states is not None:
        query = query.where(_r.state.in_(list(states)))
    if model is not None:
        query = query.where(_r.model == model)
    return list((await conn.execute(query)).scalars())


async def update_rollout(conn: AsyncConnection, rollout_id: str, values: Mapping[str, Any]) -> None:
    """Write columns of one rollout row."""
    await conn.execute(update(schema.rollouts).where(_r.id == rollout_id).values(**values))


async def update_devices(conn: AsyncConnection, rollout_id: str, devices: Sequence[Mapping[str, Any]]) -> None:
    """Write the `DEVICE_MUTABLE` columns of some device rows of a rollout (each with its device_id)."""
    if not devices:
        return
    stmt = (
        update(schema.rollout_devices)
        .where(_rd.rollout_id == bindparam("b_rollout"), _rd.device_id == bindparam("b_device"))
        .values({f: bindparam(f"b_{f}") for f in DEVICE_MUTABLE})
    )
    params = [
        {"b_rollout": rollout_id, "b_device": d["device_id"], **{f"b_{f}": d[f] for f in DEVICE_MUTABLE}}
        for d in sorted(devices, key=lambda d: d["device_id"])
    ]
    await conn.execute(stmt, params)


# --- desired state ---------------------------------------------------------------------------------------


async def desired_rows(conn: AsyncConnection, device_ids: Sequence[str], *, for_update: bool = False) -> dict[str, Any]:
    """device_id -> its device_desired row (as a dict), for those that have one."""
    found: dict[str, Any] = {}
    for i in range(0, len(device_ids), 500):
        query = select(schema.device_desired).where(_dd.device_id.in_(list(device_ids[i : i + 500])))
        if for_update:
            query = query.with_for_update()
        found.update({r["device_id"]: dict(r) for r in (await conn.execute(query)).mappings()})
    return found


async def put_desired(conn: AsyncConnection, rows: Sequence[dict[str, Any]], existing: Iterable[str]) -> None:
    """Insert or update device_desired rows (each with every column); `existing`: ids that have a row."""
    have = set(existing)
    new = [r for r in rows if r["device_id"] not in have]
    old = [r for r in rows if r["device_id"] in have]
    if new:
        await conn.execute(insert(schema.device_desired), new)
    if old:
        cols = [c for c in old[0] if c != "device_id"]
        stmt = (
            update(schema.device_desired)
            .where(_dd.device_id == bindparam("b_device_id"))
            .values({c: bindparam(f"b_{c}") for c in cols})
        )
        await conn.execute(
            stmt, [{f"b_{k}": v for k, v in r.items()} for r in sorted(old, key=lambda r: r["device_id"])]
        )


async def unpublished(conn: AsyncConnection, limit: int = 1000) -> list[dict[str, Any]]:
    """Desired states committed but not yet acknowledged by the broker."""
    query = select(schema.device_desired).where(_dd.unpublished.is_(True)).order_by(_dd.device_id).limit(limit)
    return [dict(r) for r in (await conn.execute(query)).mappings()]


async def mark_published(conn: AsyncConnection, revisions: Sequence[tuple[str, int]]) -> None:
    """Clear `unpublished` where the published revision is still the latest."""
    if not revisions:
        return
    stmt = (
        update(schema.device_desired)
        .where(_dd.device_id == bindparam("b_id"), _dd.revision == bindparam("b_rev"))
        .values(unpublished=False)
    )
    await conn.execute(stmt, [{"b_id": i, "b_rev": rev} for i, rev in sorted(revisions)])


# --- lease ---------------------------------------------------------------------------------------------


async def take_lease(conn: AsyncConnection, name: str, owner: str, now: float, ttl_s: float) -> bool:
    """Take or renew the lease `name` for `owner` unless another owner holds it unexpired."""
    result = await conn.execute(
        update(schema.leases)
        .where(_l.name == name, (_l.owner == owner) | (_l.expires_at < now))
        .values(owner=owner, expires_at=now + ttl_s)
    )
    if result.rowcount:
        return True
    exists = (await conn.execute(select(_l.owner).where(_l.name == name))).first()
    if exists is not None:
        return False
    try:
        async with conn.begin_nested():
            await conn.execute(insert(schema.leases).values(name=name, owner=owner, expires_at=now + ttl_s))
    except IntegrityError:
        return False
    return True


async def release_lease(conn: AsyncConnection, name: str, owner: str) -> None:
    """Give the lease up (at shutdown) so another replica takes over at once."""
    await conn.execute(update(schema.leases).where(_l.name == name, _l.owner == owner).values(expires_at=0.0))
