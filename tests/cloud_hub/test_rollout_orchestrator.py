"""The rollout orchestrator on SQLite and PostgreSQL, with an injected clock and a recording publisher
(the MQTT side is covered by test_rollout_mqtt.py): waves, rollback, gates, operator actions, restart, lease."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest_asyncio
from test_registry import zoo_tar

from cloud_hub.pki import HubIdentity
from cloud_hub.registry import ModelRegistry
from cloud_hub.rollouts.desired import DesiredWriter
from cloud_hub.rollouts.model import RolloutSpec
from cloud_hub.rollouts.orchestrator import Orchestrator
from cloud_hub.rollouts.service import RolloutService
from cloud_hub.store import Store, devices, telemetry
from models.zoo import ZOO_PUBLIC_KEY_FILE
from protocols.messages import DesiredState, ModelReport, ReportedState
from protocols.topics import Topics

HUB_URL = "https://hub.test:8443"
TOPICS = Topics()


@dataclass
class Clock:
    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Broker:
    """Records what the orchestrator publishes; retained = the last per topic."""

    published: list[tuple[str, DesiredState]] = field(default_factory=list)
    down: bool = False

    async def __call__(self, topic: str, payload: bytes) -> None:
        if self.down:
            raise ConnectionError("broker down")
        self.published.append((topic, DesiredState.model_validate_json(payload)))

    def retained(self, device_id: str) -> DesiredState | None:
        found = [s for t, s in self.published if t == TOPICS.desired(device_id)]
        return found[-1] if found else None

    def revisions(self, device_id: str) -> list[int]:
        return [s.revision for t, s in self.published if t == TOPICS.desired(device_id)]


@dataclass
class Rig:
    store: Store
    registry: ModelRegistry
    clock: Clock
    broker: Broker
    identity: HubIdentity

    def orchestrator(self, store: Store | None = None, owner: str = "replica-a") -> Orchestrator:
        writer = DesiredWriter(store or self.store, TOPICS, self.broker, self.clock)
        registry = ModelRegistry(store or self.store, self.identity, HUB_URL)
        return Orchestrator(registry, writer, clock=self.clock, owner=owner)

    async def add_device(self, device_id: str, labels: dict[str, str], models: list[Any] | None = None) -> None:
        now = self.clock()
        values = {
            "id": device_id, "labels": labels, "claim_id": "clm", "cert_serial": "1", "cert_fingerprint": "f",
            "cert_not_after": now + 1e6, "status": "active", "online": True, "created_at": now,
            "provisioned_at": now, "models": models,
        }  # fmt: skip
        async with self.store.begin() as conn:
            await devices.insert_new(conn, values)

    async def report(
        self, device_id: str, revision: int, state: str, version: str = "2", error: str | None = None
    ) -> None:
        active = version if state == "active" else "1"
        reported = ReportedState(
            device_id=device_id,
            revision=revision,
            updated_at=self.clock(),
            models=(ModelReport(name="tiny-cnn", version=version, state=state, active_version=active, error=error),),  # type: ignore[arg-type]
            converged=state == "active",
        )
        async with self.store.begin() as conn:
            await devices.apply_updates(conn, {device_id: {"reported": reported.model_dump(mode="json")}})

    async def offline(self, device_id: str) -> None:
        async with self.store.begin() as conn:
            await devices.apply_updates(conn, {device_id: {"online": False}})

    async def telemetry(self, device_id: str, seq: int, p99_ms: float, version: str, errors: int = 0) -> None:
        pipeline = {"model": "tiny-cnn", "version": version, "p99_ms": p99_ms, "local": 100, "errors": errors}
        now = self.clock()
        row = {"device_id": device_id, "boot_id": "b", "seq": seq, "sent_at": now, "received_at": now,
               "pipelines": {"detect": pipeline}}  # fmt: skip
        async with self.store.begin() as conn:
            await telemetry.insert_many(conn, [row])


async def push_zoo(registry: ModelRegistry, tmp: Path, version: str) -> None:
    upload = registry.new_upload() / "upload.tar"
    zoo_tar(tmp, "tiny-cnn", version).rename(upload)
    await registry.push(upload)


@pytest_asyncio.fixture
async def rig(db_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    identity = HubIdentity.bootstrap(tmp_path / "hub", ("localhost",))
    async with Store(db_url) as store:
        registry = ModelRegistry(store, identity, HUB_URL)
        registry.trust_key(ZOO_PUBLIC_KEY_FILE.read_bytes())
        for version in ("1", "2"):
            await push_zoo(registry, tmp_path, version)
        yield Rig(store, registry, Clock(), Broker(), identity)


def spec(**kw: Any) -> RolloutSpec:
    values: dict[str, Any] = {"model": "tiny-cnn", "version": "2", "selector": {"site": "a"}, "canary": 1,
                              "waves_pct": (50, 100), "bake_s": 60}  # fmt: skip
    return RolloutSpec.model_validate({**values, **kw})


async def test_canary_waves_completed_with_all_models_and_growing_revisions(rig: Rig) -> None:
    for i in range(5):
        await rig.add_device(f"d{i}", {"site": "a"})
    await rig.add_device("other-site", {"site": "b"})
    # d1 already runs tiny-mlp from an earlier desired state: it must keep it.
    orch = rig.orchestrator()
    mlp = (await rig.registry.get("tiny-cnn", "1")).desired(HUB_URL).model_copy(update={"name": "tiny-mlp"})
    async with rig.store.begin() as conn:
        [first] = await orch.writer.set_models(conn, {"d1": ("tiny-mlp", mlp)})
    assert first.revision == 1
    service = RolloutService(orch)
    r = await service.create(spec())
    assert [(d.device_id, d.wave) for d in r.devices] == [("d0", 0), ("d1", 1), ("d2", 1), ("d3", 2), ("d4", 2)]

    await orch.tick()
    canary = rig.broker.retained("d0")
    assert canary is not None and canary.revision == 1 and canary.rollout_id == r.id
    assert [(m.name, m.version) for m in canary.models] == [("tiny-cnn", "2")]
    assert canary.models[0].url.startswith(f"{HUB_URL}/api/v1/artifacts/") and canary.pipelines == ()
    assert rig.broker.revisions("d1") == [1]  # its earlier, unpublished state went out; the rollout's not yet
    await rig.report("d0", 1, "downloading")
    await orch.tick()
    assert (await service.get(r.id)).devices[0].status == "updating"
    await rig.report("d0", 1, "active")
    await orch.tick()
    got = await service.get(r.id)
    assert got.phase == "baking" and got.devices[0].status == "active"
    rig.clock.now += 59
    await orch.tick()
    assert rig.broker.revisions("d1") == [1]
    rig.clock.now += 1
    await orch.tick()
    wave1 = rig.broker.retained("d1")
    assert wave1 is not None and wave1.revision == 2
    assert [(m.name, m.version) for m in wave1.models] == [("tiny-cnn", "2"), ("tiny-mlp", "1")]
    for device_id in ("d1", "d2"):
        await rig.report(device_id, rig.broker.revisions(device_id)[-1], "active")
    await orch.tick()
    rig.clock.now += 60
    await orch.tick()
    for device_id in ("d3", "d4"):
        await rig.report(device_id, rig.broker.revisions(device_id)[-1], "active")
    await orch.tick()
    rig.clock.now += 60
    await orch.tick()
    done = await service.detail(r.id)
    assert done["state"] == "completed" and done["counts"] == {"active": 5}
    assert [w["counts"] for w in done["waves_detail"]] == [{"active": 1}, {"active": 2}, {"active": 2}]
    assert rig.broker.retained("other-site") is None
    assert [rig.broker.revisions(f"d{i}") for i in range(5)] == [[1], [1, 2], [1], [1], [1]]


async def test_canary_failure_rolls_back_and_never_touches_the_others(rig: Rig) -> None:
    # d0 announced tiny-cnn 1 in its birth (no desired yet); d1 has it in its desired state.
    await rig.add_device("d0", {"site": "a"}, models=[{"name": "tiny-cnn", "version": "1", "active": True}])
    for i in (1, 2):
        await rig.add_device(f"d{i}", {"site": "a"})
    orch = rig.orchestrator()
    v1 = (await rig.registry.get("tiny-cnn", "1")).desired(HUB_URL)
    async with rig.store.begin() as conn:
        await orch.writer.set_models(conn, {"d1": ("tiny-cnn", v1)})
    service = RolloutService(orch)
    r = await service.create(spec(canary=2, waves_pct=(100,), min_failed_devices=1))
    await orch.tick()
    assert rig.broker.revisions("d0") == [1] and rig.broker.revisions("d1") == [1, 2]
    await rig.report("d0", 1, "failed", error="warm-up failed: boom")
    await orch.tick()
    got = await service.get(r.id)
    assert got.state == "rolled_back"
    assert got.reason == "1 of 2 targeted devices failed (allowed 0 at 0%); d0: warm-up failed: boom"
    back0, back1 = rig.broker.retained("d0"), rig.broker.retained("d1")
    assert back0 is not None and back0.revision == 2 and [m.version for m in back0.models] == ["1"]
    assert back0.models[0] == v1
    assert back1 is not None and back1.revision == 3 and back1.models == (v1,)
    assert rig.broker.retained("d2") is None
    assert [d.status for d in got.devices] == ["rolled_back", "rolled_back", "waiting"]
    await orch.tick()
    assert rig.broker.revisions("d0") == [1, 2]  # nothing more once rolled back


async def test_device_without_previous_version_gets_the_model_removed(rig: Rig) -> None:
    await rig.add_device("d0", {"site": "a"})
    orch = rig.orchestrator()
    r = await RolloutService(orch).create(spec(waves_pct=(100,), min_failed_devices=1))
    await orch.tick()
    await rig.report("d0", 1, "failed", error="bad")
    await orch.tick()
    back = rig.broker.retained("d0")
    assert back is not None and back.revision == 2 and back.models == ()
    assert (await RolloutService(orch).get(r.id)).state == "rolled_back"


async def test_p99_gate_uses_each_devices_baseline_from_telemetry(rig: Rig) -> None:
    for i in range(3):
        await rig.add_device(f"d{i}", {"site": "a"})
        await rig.telemetry(f"d{i}", 1, p99_ms=10.0 * (i + 1), version="1")
    orch = rig.orchestrator()
    service = RolloutService(orch)
    r = await service.create(spec(canary=1, waves_pct=(100,), bake_s=30, max_p99_increase_pct=50, min_failed_devices=1))
    await orch.tick()
    assert (await service.get(r.id)).devices[0].baseline == {"detect": 10.0}
    rig.clock.now += 1
    await rig.report("d0", 1, "active")
    await orch.tick()
    rig.clock.now += 1
    await rig.telemetry("d0", 2, p99_ms=14.0, version="2")
    await orch.tick()
    assert (await service.get(r.id)).state == "running"
    rig.clock.now += 1
    await rig.telemetry("d0", 3, p99_ms=30.0, version="2")
    await rig.telemetry("d0", 4, p99_ms=31.0, version="2")
    await orch.tick()
    got = await service.get(r.id)
    assert got.state == "rolled_back", got
    assert got.reason == "device d0: pipeline detect p99 30.0 ms > baseline 10.0 ms +50%"
    assert rig.broker.retained("d1") is None


async def test_pause_resume_abort_through_the_service(rig: Rig) -> None:
    for i in range(3):
        await rig.add_device(f"d{i}", {"site": "a"})
    orch = rig.orchestrator()
    service = RolloutService(orch)
    r = await service.create(spec(waves_pct=(100,), bake_s=0))
    await orch.tick()
    await service.pause(r.id)
    await rig.report("d0", 1, "active")
    await orch.tick()
    got = await service.get(r.id)
    assert got.state == "paused" and rig.broker.retained("d1") is None
    await service.resume(r.id)
    await orch.tick()
    assert rig.broker.revisions("d1") == [1] and rig.broker.revisions("d2") == [1]
    aborted = await service.abort(r.id, rollback=True)
    assert aborted.state == "aborted"
    assert rig.broker.revisions("d0") == [1, 2] and rig.broker.retained("d1") == rig.broker.retained("d1")
    assert all(rig.broker.retained(f"d{i}").models == () for i in range(3))  # type: ignore[union-attr]
    second = await service.create(spec(waves_pct=(100,)))
    assert second.state == "pending"


async def test_restart_continues_from_the_database_and_the_lease_keeps_one_driver(rig: Rig, db_url: str) -> None:
    for i in range(3):
        await rig.add_device(f"d{i}", {"site": "a"})
    first = rig.orchestrator(owner="replica-a")
    r = await RolloutService(first).create(spec(waves_pct=(100,), bake_s=10))
    assert await first.tick()
    await rig.report("d0", 1, "active")
    # The broker is down when the canary settles and wave 1 is written: the states stay unpublished.
    rig.broker.down = True
    await first.tick()
    rig.clock.now += 10
    await first.tick()
    assert rig.broker.retained("d1") is None

    # A second replica (its own engine) cannot drive while the first holds the lease...
    async with Store(db_url) as other_store:
        second = rig.orchestrator(other_store, owner="replica-b")
        assert not await second.tick()
        # ...the first "crashes" (its lease is not released); once the lease expires the second takes over.
        rig.broker.down = False
        rig.clock.now += 16
        assert await second.tick()
        assert rig.broker.revisions("d1") == [1] and rig.broker.revisions("d2") == [1]  # retried publish
        for device_id in ("d1", "d2"):
            await rig.report(device_id, 1, "active")
        await second.tick()
        rig.clock.now += 10
        await second.tick()
        got = await RolloutService(second).get(r.id)
        assert got.state == "completed" and [d.status for d in got.devices] == ["active"] * 3
        assert not await first.tick()
        await second.aclose()
    assert await first.tick()  # released at close: the first takes it back at once
    assert rig.broker.revisions("d0") == [1]
    assert time.time() > 0
