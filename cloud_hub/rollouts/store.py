"""Queries of rollouts, their devices, the per-device desired state, and the driver lease."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.rollouts.model import LIVE_STATES, Rollout, RolloutSpec, TargetDevice
from cloud_hub.store import schema

_r = schema.rollouts.c
_rd = schema.rollout_devices.c
_dd = schema.device_desired.c
_l = schema.leases.c
_DEVICE_FIELDS = [f.name for f in dataclasses.fields(TargetDevice)]


# --- rollouts ------------------------------------------------------------------------------------------


async def insert_rollout(conn: AsyncConnection, r: Rollout) -> None:
    """Store a new rollout and its planned devices."""
    await conn.execute(insert(schema.rollouts).values(**_rollout_values(r), id=r.id, created_at=r.created_at))
    if r.devices:
        await conn.execute(insert(schema.rollout_devices), [{"rollout_id": r.id, **d.to_json()} for d in r.devices])


def _rollout_values(r: Rollout) -> dict[str, Any]:
    return {
        "model": r.spec.model,
        "version": r.spec.version,
        "spec": r.spec.model_dump(mode="json"),
        "state": r.state,
        "wave": r.wave,
        "phase": r.phase,
        "phase_since": r.phase_since,
        "reason": r.reason,
        "updated_at": r.updated_at,
    }


async def load(conn: AsyncConnection, rollout_id: str, *, for_update: bool = False) -> Rollout | None:
    """One rollout with its devices (row-locked on PostgreSQL with `for_update`)."""
    query = select(schema.rollouts).where(_r.id == rollout_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    rows = await conn.execute(select(schema.rollout_devices).where(_rd.rollout_id == rollout_id).order_by(_rd.position))
    return _from_row(row, tuple(TargetDevice(**{k: d[k] for k in _DEVICE_FIELDS}) for d in rows.mappings()))


def _from_row(row: Any, devices: tuple[TargetDevice, ...]) -> Rollout:
    return Rollout(
        id=row["id"],
        spec=RolloutSpec.model_validate(row["spec"]),
        state=row["state"],
        wave=row["wave"],
        phase=row["phase"],
        phase_since=row["phase_since"],
        reason=row["reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        devices=devices,
    )


async def summaries(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every rollout's summary (counts per status from one GROUP BY, no device rows), oldest first."""
    grouped = await conn.execute(
        select(_rd.rollout_id, _rd.status, func.count(), func.max(_rd.wave)).group_by(_rd.rollout_id, _rd.status)
    )
    counts: dict[str, dict[str, int]] = {}
    waves: dict[str, int] = {}
    for rollout_id, status, n, top in grouped:
        counts.setdefault(rollout_id, {})[status] = int(n)
        waves[rollout_id] = max(waves.get(rollout_id, 0), int(top) + 1)
    found = []
    for row in (await conn.execute(select(schema.rollouts).order_by(_r.created_at, _r.id))).mappings():
        summary = _from_row(row, ()).summary()
        mine = counts.get(row["id"], {})
        found.append({**summary, "counts": mine, "devices_total": sum(mine.values()), "waves": waves.get(row["id"], 0)})
    return found


async def ids(conn: AsyncConnection, states: Iterable[str] | None = None, model: str | None = None) -> list[str]:
    """Rollout ids, oldest first, optionally in some states / for one model."""
    query = select(_r.id).order_by(_r.created_at, _r.id)
    if states is not None:
        query = query.where(_r.state.in_(list(states)))
    if model is not None:
        query = query.where(_r.model == model)
    return list((await conn.execute(query)).scalars())


async def live_ids(conn: AsyncConnection) -> list[str]:
    """Rollouts the orchestrator still drives."""
    return await ids(conn, LIVE_STATES)


async def save(conn: AsyncConnection, new: Rollout, old: Rollout) -> None:
    """Write the rollout row and the device rows that changed."""
    if new == old:
        return
    await conn.execute(update(schema.rollouts).where(_r.id == new.id).values(**_rollout_values(new)))
    before = {d.device_id: d for d in old.devices}
    changed = [d for d in new.devices if before.get(d.device_id) != d]
    if changed:
        fields = [f for f in _DEVICE_FIELDS if f not in ("device_id", "position", "wave")]
        stmt = (
            update(schema.rollout_devices)
            .where(_rd.rollout_id == bindparam("b_rollout"), _rd.device_id == bindparam("b_device"))
            .values({f: bindparam(f"b_{f}") for f in fields})
        )
        params = [
            {"b_rollout": new.id, "b_device": d.device_id, **{f"b_{f}": getattr(d, f) for f in fields}}
            for d in sorted(changed, key=lambda d: d.device_id)
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
