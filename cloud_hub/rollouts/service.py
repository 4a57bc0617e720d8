"""Operator operations on rollouts: create (resolve the selector, plan the waves), list, get, pause, resume, abort."""

from __future__ import annotations

import functools
from typing import Any

from cloud_hub.errors import Conflict, InvalidRequest, NotFound
from cloud_hub.fleet.tokens import new_id
from cloud_hub.registry.service import get_model
from cloud_hub.rollouts import engine, observe, persist
from cloud_hub.rollouts.engine import DeviceObservation, agreement_pct
from cloud_hub.rollouts.model import Rollout, RolloutSpec, TargetDevice, device_stage, plan_waves
from cloud_hub.rollouts.orchestrator import Orchestrator
from cloud_hub.store import devices
from cloud_hub.store import rollouts as rstore


class RolloutService:
    """What the API calls; the orchestrator does the driving."""

    def __init__(self, orchestrator: Orchestrator) -> None:
        self.orchestrator = orchestrator
        self.store = orchestrator.store

    async def create(self, spec: RolloutSpec) -> Rollout:
        """Plan a rollout over the devices the selector matches now (revoked excluded), ordered by id."""
        now = self.orchestrator.clock()
        async with self.store.begin() as conn:
            if await get_model(conn, spec.model, spec.version) is None:
                raise NotFound(f"no model {spec.model!r} version {spec.version!r}: push it first")
            # completed_with_pending only watches for late reports: it does not block the next rollout.
            busy = await rstore.ids(conn, ("pending", "running", "paused"), model=spec.model)
            if busy:
                raise Conflict(f"rollout {busy[0]} of {spec.model!r} is still live: let it finish, or abort it")
            matched = [d.id for d in await devices.list_all(conn, spec.selector) if d.status == devices.ACTIVE]
            if not matched:
                raise InvalidRequest(f"selector {spec.selector} matches no active device")
            waves = plan_waves(matched, spec.canary, spec.waves_pct)
            targets: list[TargetDevice] = []
            for wave, ids in enumerate(waves):
                targets += [TargetDevice(i, len(targets) + n, wave, updated_at=now) for n, i in enumerate(ids)]
            rollout = Rollout(
                id=new_id("ro"),
                spec=spec,
                state="pending",
                wave=0,
                phase="updating",
                phase_since=None,
                reason=None,
                created_at=now,
                updated_at=now,
                devices=tuple(targets),
            )
            await persist.insert_rollout(conn, rollout)
        self.orchestrator.wake()
        return rollout

    async def list(self) -> list[dict[str, Any]]:
        """Every rollout's summary, oldest first."""
        async with self.store.begin() as conn:
            return await persist.summaries(conn)

    async def get(self, rollout_id: str) -> Rollout:
        """One rollout; NotFound if absent."""
        async with self.store.begin() as conn:
            found = await persist.load(conn, rollout_id)
        if found is None:
            raise NotFound(f"no rollout {rollout_id!r}")
        return found

    async def detail(self, rollout_id: str) -> dict[str, Any]:
        """Summary, per-wave counts and per-device rows with live progress from reported state."""
        async with self.store.begin() as conn:
            r = await persist.load(conn, rollout_id)
            if r is None:
                raise NotFound(f"no rollout {rollout_id!r}")
            seen = await observe.observe(conn, r, self.orchestrator.live, self.orchestrator.evidence)
        waves = []
        for wave in range(r.waves):
            counts: dict[str, int] = {}
            for d in r.in_wave(wave):
                counts[d.status] = counts.get(d.status, 0) + 1
            waves.append({"wave": wave, "canary": wave == 0 and r.spec.canary > 0, "counts": counts})
        rows = []
        for d in r.devices:
            o = seen.get(d.device_id)
            rows.append(
                {
                    **d.to_json(),
                    "online": o.online if o else None,
                    "phase": o.phase if o else None,
                    "progress": o.progress if o else None,
                    "previous_version": (d.previous or {}).get("version"),
                    "stage": device_stage(r, d) if d.status != "waiting" else None,
                    "gates": _gate_values(o),
                }
            )
        return {**r.summary(), "waves_detail": waves, "devices": rows}

    async def pause(self, rollout_id: str) -> Rollout:
        """Stop advancing."""
        return await self.orchestrator.control(rollout_id, engine.pause)

    async def resume(self, rollout_id: str) -> Rollout:
        """Carry on."""
        return await self.orchestrator.control(rollout_id, engine.resume)

    async def abort(self, rollout_id: str, *, rollback: bool) -> Rollout:
        """Stop for good, optionally reverting the touched devices."""
        return await self.orchestrator.control(rollout_id, functools.partial(engine.abort, rollback=rollback))


def _gate_values(o: DeviceObservation | None) -> dict[str, Any] | None:
    """What the gates see of one device now (shown by `rollouts get`)."""
    if o is None:
        return None
    return {
        "requests": o.requests,
        "error_rate_pct": round(100 * o.errors / o.requests, 3) if o.requests else None,
        "p99_ms": {k: round(v, 3) for k, v in sorted(o.p99_ms.items())},
        "compared": o.compared,
        "agreed": o.agreed,
        "agreement_pct": None if (pct := agreement_pct(o)) is None else round(pct, 2),
        "max_abs_diff": o.max_abs_diff,
        "drift_psi": None if o.drift_psi is None else round(o.drift_psi, 4),
        "drift_part": o.drift_part,
    }
