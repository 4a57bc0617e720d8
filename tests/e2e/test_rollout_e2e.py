"""Issue 6 end to end: real mosquitto (production mTLS + ACL config), `cloud-hub serve`, `edge-agent serve`
processes provisioned by claim, models pushed and rolled out with the real `cloud-hub` CLI."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from rollout_support import Load, Rig, publisher_package, until

from deploy.local import stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        await r.start()
        await stack.push_models(r.sup, r.hub_dir)  # trusts the zoo key, pushes tiny-cnn 1 and 2 (or raises)
        yield r
    finally:
        r.stop()


async def test_canary_then_waves_every_agent_on_v2_with_zero_failed_requests(rig: Rig) -> None:
    agents = [await rig.add_agent(f"dev-{i}", {"fleet": "demo"}) for i in range(3)]
    for agent in agents:
        assert await rig.serving(agent) == "1"
    stop = asyncio.Event()
    loads = {a.device_id: Load() for a in agents}
    tasks = [asyncio.create_task(rig.steady_load(a, stop, loads[a.device_id])) for a in agents]
    rollout_id = await rig.rollout("2", "--canary", "1", "--waves", "50%,100%", "--bake", "1s")
    detail = await rig.wait_rollout(rollout_id, ("completed",), timeout_s=60)
    await asyncio.sleep(1.0)  # keep the load on past the last switch and the old version's unload
    stop.set()
    await asyncio.gather(*tasks)
    assert detail["waves"] == 3 and {d["status"] for d in detail["devices"]} == {"active"}
    for agent in agents:
        load = loads[agent.device_id]
        assert load.failures == [], load.failures[:5]
        assert "1" in load.versions and load.versions[-1] == "2", agent.device_id  # switched under load
        assert await rig.serving(agent) == "2"


@pytest.mark.parametrize("bad", ["fails-warm-up", "tampered"])
async def test_bad_canary_halts_rolls_back_and_never_touches_the_others(rig: Rig, tmp_path: Path, bad: str) -> None:
    agents = [await rig.add_agent(f"dev-{i}", {"fleet": "demo"}) for i in range(3)]
    if bad == "fails-warm-up":
        version = "3"
        package = publisher_package(tmp_path, version, broken=True)
        await rig.cli("models", "trust-key", str(tmp_path / f"publisher-{version}.pub"))
        await rig.cli("models", "push", str(package))
    else:
        version = "2"
        # Hub-side tamper: the stored artifact's bytes change after the push (same size, other sha256).
        sha = (await rig.api("GET", f"/api/v1/models/tiny-cnn/{version}"))["model"]["sha256"]
        stored = next(rig.hub_dir.rglob(f"{sha}.tar"))
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF
        stored.write_bytes(bytes(data))
    before = {a.device_id: await rig.desired(a.device_id) for a in agents}
    stop = asyncio.Event()
    loads = {a.device_id: Load() for a in agents}
    tasks = [asyncio.create_task(rig.steady_load(a, stop, loads[a.device_id])) for a in agents]
    rollout_id = await rig.rollout(version, "--canary", "1", "--waves", "100%", "--bake", "1s")
    detail = await rig.wait_rollout(rollout_id, ("rolled_back",), timeout_s=45)
    canary = next(d["device_id"] for d in detail["devices"] if d["wave"] == 0)
    # The canary gets the previous version back as a new revision and reports it active.
    await until(lambda: _reported_active(rig, canary, "1"), what="canary reports v1 after the rollback")
    await asyncio.sleep(0.5)
    stop.set()
    await asyncio.gather(*tasks)
    assert "failed" in (detail["reason"] or "") or "fail" in str(detail["devices"])
    for agent in agents:
        load = loads[agent.device_id]
        assert load.failures == [] and set(load.versions) == {"1"}, (agent.device_id, load.failures[:3])
        assert await rig.serving(agent) == "1"
        if agent.device_id != canary:
            assert await rig.desired(agent.device_id) == before[agent.device_id]  # never received a desired state
            assert not [d for d in detail["devices"] if d["device_id"] == agent.device_id and d["revision"]]


async def _reported_active(rig: Rig, device_id: str, version: str) -> bool:
    device = (await rig.api("GET", f"/api/v1/devices/{device_id}"))["device"]
    reported = device.get("reported") or {}
    desired = await rig.desired(device_id)
    models = {m["name"]: m for m in reported.get("models", [])}
    m = models.get("tiny-cnn")
    return bool(
        desired
        and reported.get("revision") == desired["revision"]
        and m
        and m["state"] == "active"
        and m["active_version"] == version
    )


async def test_device_offline_through_the_rollout_catches_up(rig: Rig) -> None:
    online = [await rig.add_agent(f"dev-{i}", {"fleet": "demo"}) for i in range(2)]
    late = await rig.add_agent("dev-late", {"fleet": "demo"}, start=False)
    rollout_id = await rig.rollout("2", "--canary", "1", "--waves", "100%", "--bake", "1s")
    detail = await rig.wait_rollout(rollout_id, ("completed_with_pending",), timeout_s=45)
    assert {d["device_id"]: d["status"] for d in detail["devices"]}["dev-late"] == "pending"
    for agent in online:
        assert await rig.serving(agent) == "2"
    await rig.start_agent(late)  # gets the retained desired state on connect
    await rig.wait_rollout(rollout_id, ("completed",), timeout_s=45)
    assert await rig.serving(late) == "2"


async def test_kill9_during_download_and_activation_resumes_to_completion(rig: Rig, tmp_path: Path) -> None:
    package = publisher_package(tmp_path, "4", padding_bytes=6_000_000)
    await rig.cli("models", "trust-key", str(tmp_path / "publisher-4.pub"))
    await rig.cli("models", "push", str(package))
    agent = await rig.add_agent("dev-0", {"fleet": "demo"}, start=False)
    # Killed twice mid-download, once after install, once mid-switch; the last start runs free.
    schedule: list[str | None] = ["download", "download", "after_install", "during_switch", None]
    await rig.start_agent(agent, pause_at=schedule[0])
    rollout_id = await rig.rollout("4", "--canary", "1", "--waves", "100%", "--bake", "0s")
    downloads = agent.directory / "state" / "reconcile" / "downloads"
    sizes = []
    for point, following in itertools.pairwise(schedule):
        assert agent.child is not None
        await agent.child.wait_for(f"EDGEFLEET_TEST_PAUSED {point}", 30)
        if point == "download":
            parts = list(downloads.glob("*.part"))
            assert len(parts) == 1
            sizes.append(parts[0].stat().st_size)
        rig.kill9(agent)
        await rig.start_agent(agent, pause_at=following)
        # Straight after the restart it serves the last good version: the store's active pointer.
        assert await rig.serving(agent) == ("4" if point == "during_switch" else "1")
    assert 0 < sizes[0] < sizes[1] < 6_000_000  # the second run resumed the partial file, then grew it
    logs = "".join(c.output() for c in rig.sup.children if c.name.startswith("agent-dev-0"))
    assert "resuming download" in logs
    await rig.wait_rollout(rollout_id, ("completed",), timeout_s=30)
    assert await rig.serving(agent) == "4"


async def test_hub_restarted_mid_rollout_carries_on(rig: Rig) -> None:
    agents = [await rig.add_agent(f"dev-{i}", {"fleet": "demo"}) for i in range(3)]
    rollout_id = await rig.rollout("2", "--canary", "1", "--waves", "50%,100%", "--bake", "3s")

    async def canary_active() -> bool:
        detail = await rig.rollout_detail(rollout_id)
        return any(d["wave"] == 0 and d["status"] == "active" for d in detail["devices"])

    await until(canary_active, timeout_s=30, what="canary active")
    await rig.restart_hub()  # during the canary's bake: waves 1 and 2 are still to come
    detail = await rig.wait_rollout(rollout_id, ("completed",), timeout_s=60)
    assert {d["status"] for d in detail["devices"]} == {"active"}
    for agent in agents:
        assert await rig.serving(agent) == "2"
