"""Rollouts to and from their store rows (the SQL is in cloud_hub/store/rollouts.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.rollouts.model import LIVE_STATES, Rollout, RolloutSpec, TargetDevice
from cloud_hub.store import rollouts as rows

_DEVICE_FIELDS = [f.name for f in dataclasses.fields(TargetDevice)]
assert [f for f in _DEVICE_FIELDS if f not in ("device_id", "position", "wave")] == list(rows.DEVICE_MUTABLE)


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
        "stage": r.stage,
    }


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
        stage=row.get("stage") or "full",
    )


async def insert_rollout(conn: AsyncConnection, r: Rollout) -> None:
    """Store a new rollout and its planned devices."""
    values = {**_rollout_values(r), "id": r.id, "created_at": r.created_at}
    await rows.insert_rollout(conn, values, [d.to_json() for d in r.devices])


async def load(conn: AsyncConnection, rollout_id: str, *, for_update: bool = False) -> Rollout | None:
    """One rollout with its devices (row-locked on PostgreSQL with `for_update`)."""
    found = await rows.load(conn, rollout_id, for_update=for_update)
    if found is None:
        return None
    row, devices = found
    return _from_row(row, tuple(TargetDevice(**{k: d[k] for k in _DEVICE_FIELDS}) for d in devices))


async def summaries(conn: AsyncConnection) -> list[dict[str, Any]]:
    """Every rollout's summary (counts per status from one GROUP BY, no device rows), oldest first."""
    counts, waves = await rows.device_counts(conn)
    found = []
    for row in await rows.all_rows(conn):
        summary = _from_row(row, ()).summary()
        mine = counts.get(row["id"], {})
        found.append({**summary, "counts": mine, "devices_total": sum(mine.values()), "waves": waves.get(row["id"], 0)})
    return found


async def live_ids(conn: AsyncConnection) -> list[str]:
    """Rollouts the orchestrator still drives."""
    return await rows.ids(conn, LIVE_STATES)


async def save(conn: AsyncConnection, new: Rollout, old: Rollout) -> None:
    """Write the rollout row and the device rows that changed."""
    if new == old:
        return
    await rows.update_rollout(conn, new.id, _rollout_values(new))
    before = {d.device_id: d for d in old.devices}
    await rows.update_devices(conn, new.id, [d.to_json() for d in new.devices if before.get(d.device_id) != d])
