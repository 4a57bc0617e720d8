"""The desired state of each device: stored with a revision allocated in the write transaction, then
published retained (QoS 1) on `{prefix}/devices/{id}/desired`.

The row holds every model the device should run, not only the one a rollout changes, and the trials (a
rollout's shadow or split step: a candidate version next to a desired one). `pipelines` and `pools` are
published empty, which tells the agent to keep its locally configured ones (docs/rollouts.md). `trials` is
left out of the payload when empty, so agents older than trials still read every other desired state.
A row stays `unpublished` until the broker acknowledged it; the orchestrator retries those, so a crash or a
broker outage between commit and publish only delays the message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from cloud_hub.store import Store
from cloud_hub.store import rollouts as rstore
from protocols.messages import ApplyPolicy, DesiredModel, DesiredState, DesiredTrial, InstalledModel
from protocols.topics import Topics

log = logging.getLogger(__name__)

# publish(topic, payload): retained, QoS 1, returns once the broker acknowledged it.
Publisher = Callable[[str, bytes], Awaitable[None]]
PUBLISH_CONCURRENCY = 256


def state_of(row: Mapping[str, Any]) -> DesiredState:
    """The wire message of a device_desired row."""
    return DesiredState(
        device_id=row["device_id"],
        revision=row["revision"],
        issued_at=row["issued_at"],
        models=tuple(DesiredModel.model_validate(m) for m in row["models"]),
        apply=ApplyPolicy.model_validate(row["apply"]),
        rollout_id=row["rollout_id"],
        trials=tuple(DesiredTrial.model_validate(t) for t in row.get("trials") or ()),
    )


def payload(state: DesiredState) -> bytes:
    """The published JSON (without `trials` when there are none)."""
    return state.model_dump_json(exclude=None if state.trials else {"trials"}).encode()


def satisfied_by(state: DesiredState, installed: Sequence[InstalledModel]) -> bool:
    """True if every desired model is installed and active at its desired version."""
    active = {(m.name, m.version) for m in installed if m.active}
    return all((m.name, m.version) in active for m in state.models)


class DesiredWriter:
    """Writes (in the caller's transaction) and publishes device desired states."""

    def __init__(self, store: Store, topics: Topics, publish: Publisher | None, clock: Callable[[], float] = time.time):
        self.store = store
        self.topics = topics
        self.publisher = publish
        self.clock = clock

    async def set_models(
        self,
        conn: AsyncConnection,
        changes: Mapping[str, tuple[str, DesiredModel | None]],
        *,
        apply: ApplyPolicy | None = None,
        rollout_id: str | None = None,
        trials: Mapping[str, DesiredTrial] | None = None,
    ) -> list[DesiredState]:
        """For each device, put (or with None remove) one model in its desired set, with its trial from
        `trials` (none there: the model's trial is removed); return the new states.

        Each device's revision is its stored revision + 1, under the row lock of this transaction, so it only
        grows, across restarts and replicas.
        """
        ids = sorted(changes)
        rows = await rstore.desired_rows(conn, ids, for_update=True)
        now = self.clock()
        written = []
        for device_id in ids:
            name, model = changes[device_id]
            row = rows.get(device_id)
            models = [m for m in (row["models"] if row else []) if m["name"] != name]
            if model is not None:
                models.append(model.model_dump(mode="json"))
            models.sort(key=lambda m: m["name"])
            kept = [t for t in (row.get("trials") or [] if row else []) if t["candidate"]["name"] != name]
            trial = (trials or {}).get(device_id)
            if trial is not None:
                kept.append(trial.model_dump(mode="json"))
            written.append(
                {
                    "device_id": device_id,
                    "revision": (row["revision"] if row else 0) + 1,
                    "models": models,
                    "apply": (apply or ApplyPolicy()).model_dump(mode="json"),
                    "rollout_id": rollout_id,
                    "issued_at": now,
                    "unpublished": True,
                    "trials": sorted(kept, key=lambda t: t["candidate"]["name"]) or None,
                }
            )
        await rstore.put_desired(conn, written, rows)
        return [state_of(r) for r in written]

    async def current(self, device_id: str) -> DesiredState | None:
        """The latest desired state of a device, or None if the hub never wrote one."""
        async with self.store.begin() as conn:
            row = (await rstore.desired_rows(conn, [device_id])).get(device_id)
        return None if row is None else state_of(row)

    async def publish(self, states: Sequence[DesiredState]) -> int:
        """Publish states (retained, QoS 1) and mark the acknowledged ones; return how many went out."""
        if not states:
            return 0
        if self.publisher is None:
            log.debug("no broker link: %d desired states stay unpublished", len(states))
            return 0
        publisher = self.publisher
        gate = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def one(state: DesiredState) -> tuple[str, int] | None:
            async with gate:
                try:
                    await publisher(self.topics.desired(state.device_id), payload(state))
                except Exception as exc:
                    log.warning(
                        "desired state of %s (revision %d) not published: %s", state.device_id, state.revision, exc
                    )
                    return None
            return state.device_id, state.revision

        done = [r for r in await asyncio.gather(*(one(s) for s in states)) if r is not None]
        async with self.store.begin() as conn:
            await rstore.mark_published(conn, done)
        return len(done)

    async def publish_unpublished(self) -> int:
        """Retry every committed but unacknowledged desired state."""
        if self.publisher is None:
            return 0
        async with self.store.begin() as conn:
            rows = await rstore.unpublished(conn)
        return await self.publish([state_of(r) for r in rows])

    async def resync(self, births: Mapping[str, Sequence[InstalledModel]]) -> int:
        """Republish the latest desired state of devices whose birth shows models that differ from it.

        The broker keeps the retained message; this covers a broker that lost it (restart without
        persistence, another cluster node). Republishing the same revision is a no-op for the agent.
        """
        if not births:
            return 0
        async with self.store.begin() as conn:
            rows = await rstore.desired_rows(conn, sorted(births))
        stale = [state_of(r) for i, r in rows.items() if not satisfied_by(state_of(r), births[i])]
        if stale:
            log.info("republishing desired state of %d device(s) whose birth differs from it", len(stale))
        return await self.publish(stale)
