"""The I/O shell around the rollout engine: one owned task that, while this replica holds the lease, steps
every live rollout in its own transaction (load, observe, step, write desired states, save), then publishes
what it wrote. Operator actions (pause, resume, abort) go through the same path.

Several replicas: the `rollouts` lease row (expiry `lease_ttl_s`, renewed every tick) lets one replica drive;
the others take over when it lapses. Every step is one transaction holding the rollout row lock, so a crash
at any point leaves either the old or the new state, never half a wave.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.errors import NotFound
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.registry.service import ModelRegistry, get_model
from cloud_hub.rollouts import engine, observe, persist
from cloud_hub.rollouts.desired import DesiredWriter
from cloud_hub.rollouts.evidence import Evidence
from cloud_hub.rollouts.model import Rollout, RolloutSpec, tries
from cloud_hub.store import rollouts as rstore
from protocols.messages import DesiredModel, DesiredState, DesiredTrial, DeviceBirth, InstalledModel

log = logging.getLogger(__name__)

LEASE = "rollouts"
# A tick costs O(devices in live rollouts); spacing ticks by this many times their duration keeps the
# orchestrator under ~10 % of a core, so it never starves the artifact downloads it is waiting for.
TICK_SPACING = 10.0
# An operator transition: engine.pause / resume / abort, bound to its arguments.
Transition = Callable[[Rollout, float], engine.Step]
Stepper = Callable[[Rollout, float, AsyncConnection], Awaitable[engine.Step]]


class Orchestrator:
    """Drives rollouts; `start()` / `aclose()` own its task. `tick()` is one pass (tests call it directly)."""

    def __init__(
        self,
        registry: ModelRegistry,
        writer: DesiredWriter,
        *,
        live: LiveFleet | None = None,
        evidence: Evidence | None = None,
        clock: Callable[[], float] = time.time,
        tick_s: float = 1.0,
        min_interval_s: float = 0.2,
        lease_ttl_s: float = 15.0,
        owner: str | None = None,
    ) -> None:
        self.store = writer.store
        self.registry = registry
        self.writer = writer
        self.live = live
        # Shadow comparisons and drift for the step gates (issue 16); without a fleet view there are none.
        self.evidence = evidence if evidence is not None or live is None else Evidence(live, clock=clock)
        self.clock = clock
        self.tick_s = tick_s
        self.min_interval_s = min_interval_s
        self.lease_ttl_s = lease_ttl_s
        self.owner = owner or f"hub-{uuid.uuid4().hex[:12]}"
        self.leader = False
        self._births: dict[str, tuple[InstalledModel, ...]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if live is not None:
            live.subscribe("reported", self._on_reported)
            live.subscribe("state", self._on_state)

    # --- life cycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the owned loop."""
        self._task = asyncio.create_task(self._run(), name="rollout-orchestrator")

    async def aclose(self) -> None:
        """Stop the loop and give the lease up."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.leader:
            with contextlib.suppress(Exception):
                async with self.store.begin() as conn:
                    await rstore.release_lease(conn, LEASE, self.owner)
            self.leader = False

    def wake(self) -> None:
        """Run a tick soon (a report arrived, a rollout was created or changed)."""
        self._wake.set()

    def _on_reported(self, _device_id: str, _message: object) -> None:
        self._wake.set()

    def _on_state(self, device_id: str, message: object) -> None:
        if isinstance(message, DeviceBirth):
            self._births[device_id] = message.models
            self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)
            self._wake.clear()
            started = time.monotonic()
            try:
                await self.tick()
            except Exception:
                log.exception("rollout tick failed")
                await asyncio.sleep(1.0)
            # Coalesce a burst of reports into one tick.
            await asyncio.sleep(max(self.min_interval_s, TICK_SPACING * (time.monotonic() - started)))

    # --- one pass ---------------------------------------------------------------------------------------

    async def tick(self) -> bool:
        """Renew the lease; if held, resync births, retry unpublished states and step every live rollout."""
        now = self.clock()
        async with self.store.begin() as conn:
            self.leader = await rstore.take_lease(conn, LEASE, self.owner, now, self.lease_ttl_s)
            live = await persist.live_ids(conn) if self.leader else []
        if not self.leader:
            self._births.clear()
            return False
        births, self._births = self._births, {}
        await self.writer.resync(births)
        await self.writer.publish_unpublished()
        for rollout_id in live:
            try:
                await self.transition(rollout_id, self._step)
            except Exception:
                log.exception("rollout %s: step failed", rollout_id)
        return True

    async def _step(self, r: Rollout, now: float, conn: AsyncConnection) -> engine.Step:
        return engine.step(r, await observe.observe(conn, r, self.live, self.evidence), now)

    async def transition(self, rollout_id: str, fn: Stepper) -> Rollout:
        """Load the rollout (locked), compute its next state with `fn`, perform the actions, save; publish."""
        now = self.clock()
        async with self.store.begin() as conn:
            old = await persist.load(conn, rollout_id, for_update=True)
            if old is None:
                raise NotFound(f"no rollout {rollout_id!r}")
            result = await fn(old, now, conn)
            new, states = await self._perform(conn, result, now)
            await persist.save(conn, new, old)
        if new.state != old.state:
            log.info("rollout %s: %s -> %s%s", new.id, old.state, new.state, f" ({new.reason})" if new.reason else "")
        await self.writer.publish(states)
        return new

    async def control(self, rollout_id: str, fn: Transition) -> Rollout:
        """Apply an operator transition (pause, resume, abort) and wake the loop."""

        async def apply(r: Rollout, now: float, _conn: AsyncConnection) -> engine.Step:
            return fn(r, now)

        new = await self.transition(rollout_id, apply)
        self.wake()
        return new

    # --- actions ----------------------------------------------------------------------------------------

    async def _perform(
        self, conn: AsyncConnection, step: engine.Step, now: float
    ) -> tuple[Rollout, list[DesiredState]]:
        r = step.rollout
        states: list[DesiredState] = []
        for action in step.actions:
            if isinstance(action, engine.WriteDesired):
                r, written = await self._write(conn, r, action.device_ids, now)
            else:
                r, written = await self._revert(conn, r, action.device_ids)
            states.extend(written)
        return r, states

    async def _write(
        self, conn: AsyncConnection, r: Rollout, ids: tuple[str, ...], now: float
    ) -> tuple[Rollout, list[DesiredState]]:
        spec = r.spec
        record = await get_model(conn, spec.model, spec.version)
        if record is None:
            raise NotFound(f"model {spec.model!r} version {spec.version!r} is no longer in the registry")
        wanted = set(ids)
        todo = [d for d in r.devices if d.device_id in wanted]
        # Previous version and baseline are taken once, before the device's first step.
        first = [d.device_id for d in todo if d.revision is None]
        current = await rstore.desired_rows(conn, first)
        installed = await observe.installed_versions(conn, first, spec.model)
        base = await observe.baselines(conn, first, spec.model, now)
        previous: dict[str, dict[str, object] | None] = {d.device_id: d.previous for d in todo}
        for device_id in first:
            entry = next((m for m in (current.get(device_id) or {}).get("models", []) if m["name"] == spec.model), None)
            if entry is None and device_id in installed and installed[device_id] != spec.version:
                old = await get_model(conn, spec.model, installed[device_id])
                entry = old.desired(self.registry.hub_url).model_dump(mode="json") if old else None
            previous[device_id] = entry
        new_model = record.desired(self.registry.hub_url)
        changes: dict[str, tuple[str, DesiredModel | None]] = {}
        trials: dict[str, DesiredTrial] = {}
        for d in todo:
            prev = previous[d.device_id]
            if r.stage == "full" or prev is None or not tries(dataclasses.replace(d, previous=prev), spec):
                changes[d.device_id] = (spec.model, new_model)
            else:
                changes[d.device_id] = (spec.model, DesiredModel.model_validate(prev))
                trials[d.device_id] = _trial(spec, r.stage, new_model)
        states = await self.writer.set_models(conn, changes, apply=spec.apply, rollout_id=r.id, trials=trials)
        revisions = {s.device_id: s.revision for s in states}
        changed = {
            d.device_id: dataclasses.replace(
                d,
                revision=revisions[d.device_id],
                previous=previous[d.device_id],
                baseline=base.get(d.device_id) if d.revision is None else d.baseline,
            )
            for d in todo
        }
        return dataclasses.replace(r, devices=tuple(changed.get(d.device_id, d) for d in r.devices)), states

    async def _revert(
        self, conn: AsyncConnection, r: Rollout, ids: tuple[str, ...]
    ) -> tuple[Rollout, list[DesiredState]]:
        wanted = set(ids)
        changes = {
            d.device_id: (r.spec.model, DesiredModel.model_validate(d.previous) if d.previous else None)
            for d in r.devices
            if d.device_id in wanted and d.revision is not None
        }
        states = await self.writer.set_models(conn, changes, rollout_id=r.id)
        return r, states


def _trial(spec: RolloutSpec, stage: str, candidate: DesiredModel) -> DesiredTrial:
    """The desired trial of a shadow or split step."""
    pct = spec.shadow_pct if stage == "shadow" else spec.split_pct
    assert pct is not None  # stage comes from spec.stages
    return DesiredTrial(
        mode="shadow" if stage == "shadow" else "split",
        share=pct / 100,
        candidate=candidate,
        compare=spec.shadow_compare,
        tolerance=spec.shadow_tolerance,
        allow_safety=spec.allow_safety_split,
    )
