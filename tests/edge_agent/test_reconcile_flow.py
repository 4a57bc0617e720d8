"""The reconciler in process: a real serving core and model store, real HTTPS downloads, the reporter's link
recorded (MQTT is covered by tests/e2e). Crash points are exercised by stopping everything at a named
point and starting a fresh core + reconciler on the same state directory."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from reconcile_support import (
    Artifact,
    ArtifactServer,
    HubKey,
    RecordingLink,
    broken_artifact,
    desired_state,
    hub_artifact,
    start_artifact_server,
)
from rig import TestPKI

from edge_agent.config import AgentConfig
from edge_agent.reconcile.activate import Activator
from edge_agent.reconcile.download import Downloader, DownloadSettings
from edge_agent.reconcile.faults import PAUSE_ENV
from edge_agent.reconcile.policy import PolicyClock, PolicyGate
from edge_agent.reconcile.reconciler import Reconciler
from edge_agent.reconcile.reporter import Reporter
from edge_agent.reconcile.state import ReconcileState
from edge_agent.reconcile.verify import pinned_keys
from edge_agent.serving.core import ServingCore
from edge_agent.store import ModelStore, collect
from models.zoo import ZOO_PUBLIC_KEY_FILE, zoo_package_path
from protocols.messages import ApplyPolicy, DesiredModel
from protocols.pipeline import PipelineSpec
from protocols.topics import Topics

DEVICE = "dev-1"
FAST = DownloadSettings(attempts=3, backoff_initial_s=0.01, backoff_max_s=0.02, chunk_bytes=16384)


@dataclass
class Hub:
    key: HubKey
    server: ArtifactServer
    v1: Artifact
    v2: Artifact
    big: Artifact  # v2 with padding: downloads long enough to be interrupted

    def add(self, artifact: Artifact) -> DesiredModel:
        self.server.files[artifact.sha256] = artifact.tar
        return artifact.desired(self.server.url)


@pytest_asyncio.fixture
async def hub(tmp_path: Path, mqtt_pki: TestPKI) -> AsyncIterator[Hub]:
    key = HubKey.generate()
    work = tmp_path / "hub"
    work.mkdir()
    server = ArtifactServer()
    stop = await start_artifact_server(server, mqtt_pki.server_certfile, mqtt_pki.server_keyfile, mqtt_pki.cafile)
    yield Hub(
        key,
        server,
        hub_artifact("tiny-cnn", "1", work, key),
        hub_artifact("tiny-cnn", "2", work, key),
        hub_artifact("tiny-cnn", "2", work, key, padding_bytes=400_000),
    )
    await stop()


class Device:
    """A serving core on tiny-cnn 1 (from model_dirs) plus a reconciler; `restart()` = crash and start again."""

    def __init__(self, root: Path, pki: TestPKI, hub: Hub, clock: PolicyClock | None = None) -> None:
        models = root / "local-models"
        if not models.exists():
            shutil.copytree(zoo_package_path("tiny-cnn", "1"), models / "tiny-cnn" / "1")
        self.config = AgentConfig(state_dir=root / "state", model_dirs=[models], trusted_keys=[ZOO_PUBLIC_KEY_FILE])
        self.pki, self.hub, self.clock = pki, hub, clock
        self.link = RecordingLink()
        self.core: ServingCore | None = None
        self.reconciler: Reconciler | None = None

    async def start(self) -> Reconciler:
        core = ServingCore(self.config)
        packages, active = await asyncio.to_thread(collect, self.config)
        await core.start(packages, active)
        assert self.config.state_dir is not None
        state = ReconcileState(self.config.state_dir / "reconcile")
        keys = pinned_keys([self.hub.key.pinned])
        r = Reconciler(
            state=state,
            activator=Activator(core, ModelStore(self.config.state_dir / "models"), keys, drain_grace_s=0.05),
            downloader=Downloader(state.downloads, self.pki.ssl_context(DEVICE), FAST),
            keys=keys,
            reporter=Reporter(self.link, Topics(), DEVICE, min_interval_s=0),
            gate=PolicyGate(None, self.clock),
        )
        await asyncio.to_thread(r.open)
        await r.start()
        self.core, self.reconciler = core, r
        return r

    async def stop(self) -> None:
        if self.reconciler is not None:
            await self.reconciler.aclose()
        if self.core is not None:
            await self.core.aclose()

    def serving(self) -> str | None:
        assert self.core is not None
        return self.core.active_version("tiny-cnn")

    def pointer(self) -> tuple[str | None, str | None]:
        assert self.config.state_dir is not None
        p = ModelStore(self.config.state_dir / "models").pointer("tiny-cnn")
        return p.active, p.previous

    def phases(self) -> list[str]:
        return [r["models"][0]["state"] for r in self.link.payloads("/reported") if r["models"]]

    def last(self) -> dict[str, Any]:
        return self.link.payloads("/reported")[-1]


@pytest_asyncio.fixture
async def device(tmp_path: Path, mqtt_pki: TestPKI, hub: Hub) -> AsyncIterator[Device]:
    dev = Device(tmp_path / "device", mqtt_pki, hub)
    await dev.start()
    yield dev
    await dev.stop()


async def until(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def steady_load(core_of: Callable[[], ServingCore], stop: asyncio.Event, answers: list[str]) -> None:
    """Closed-loop requests on tiny-cnn until `stop`; records the version of each answer, raises on error."""
    batch = {"input": np.zeros((1, 3, 64, 64), dtype=np.float32)}
    while not stop.is_set():
        core = core_of()
        target = core.resolve("tiny-cnn")
        out = await core.infer(target, batch)
        assert out["scores"].shape == (1, 4)
        answers.append(target.model.version)
        await asyncio.sleep(0)


async def test_rollout_then_rollback_under_load(device: Device, hub: Hub) -> None:
    r = device.reconciler
    assert r is not None and device.serving() == "1"
    stop, answers = asyncio.Event(), []
    load = asyncio.create_task(steady_load(lambda: device.core, stop, answers))  # type: ignore[arg-type,return-value]
    await r.on_desired(desired_state(DEVICE, 1, hub.add(hub.v2)))
    await asyncio.wait_for(r.converged.wait(), 20)
    await r.wait_idle()
    assert device.serving() == "2" and device.pointer() == ("2", "1")
    assert sorted(device.core.models()["tiny-cnn"]) == ["2"]  # type: ignore[union-attr]  # v1 drained, unloaded
    phases = device.phases()
    for phase in ("pending", "downloading", "verifying", "preparing", "warming", "active"):
        assert phase in phases, phases
    assert device.last()["converged"] is True and device.last()["models"][0]["active_version"] == "2"
    kinds = [e["kind"] for e in device.link.payloads("/events")]
    assert "install.activated" in kinds

    # Rollback: a newer revision names v1, which is on disk: no download, straight switch.
    fetched = len(hub.server.requests)
    await r.on_desired(desired_state(DEVICE, 2, hub.add(hub.v1)))
    await asyncio.wait_for(r.converged.wait(), 20)
    await r.wait_idle()
    stop.set()
    await load  # raises if any request failed
    assert device.serving() == "1" and device.pointer() == ("1", "2")
    assert device.config.state_dir is not None
    assert ModelStore(device.config.state_dir / "models").versions("tiny-cnn") == ["1", "2"]
    assert len(hub.server.requests) == fetched
    assert "downloading" not in [m["models"][0]["state"] for m in device.link.payloads("/reported")[-4:]]
    assert answers.count("1") > 0 and answers.count("2") > 0
    # Stale or repeated revisions are ignored.
    await r.on_desired(desired_state(DEVICE, 2, hub.add(hub.v2)))
    await r.wait_idle()
    assert device.serving() == "1"


@pytest.mark.parametrize("kind", ["warm-up", "tampered"])
async def test_failure_keeps_old_version_and_is_not_retried(
    device: Device, hub: Hub, tmp_path: Path, kind: str
) -> None:
    r = device.reconciler
    assert r is not None
    if kind == "warm-up":
        wanted = hub.add(broken_artifact("tiny-cnn", "3", tmp_path, hub.key))
    else:
        wanted = hub.add(hub.v2)
        tampered = tmp_path / "tampered.tar"
        data = bytearray(hub.v2.tar.read_bytes())
        data[-2000] ^= 0xFF
        tampered.write_bytes(bytes(data))
        hub.server.files[hub.v2.sha256] = tampered
    stop, answers = asyncio.Event(), []
    load = asyncio.create_task(steady_load(lambda: device.core, stop, answers))  # type: ignore[arg-type,return-value]
    await r.on_desired(desired_state(DEVICE, 1, wanted))
    await r.wait_idle()
    stop.set()
    await load
    report = device.last()["models"][0]
    assert report["state"] == "failed" and report["active_version"] == "1"
    assert ("warm-up of tiny-cnn:3 failed" if kind == "warm-up" else "sha256") in report["error"]
    assert device.serving() == "1" and device.pointer() == ("1", None)
    assert sorted(device.core.models()["tiny-cnn"]) == ["1"]  # type: ignore[union-attr]
    assert device.core.ready()  # type: ignore[union-attr]  # the failed version left nothing behind
    assert set(answers) == {"1"}

    # A restart re-reports the failure for this revision without trying again.
    fetched = len(hub.server.requests)
    await device.stop()
    device.link.published.clear()
    r = await device.start()
    await until(lambda: bool(device.link.payloads("/reported")), what="report after restart")
    await r.wait_idle()
    assert device.last()["models"][0]["state"] == "failed" and len(hub.server.requests) == fetched
    # A new revision (the hub's rollback to v1) converges at once.
    await r.on_desired(desired_state(DEVICE, 2, hub.add(hub.v1)))
    await asyncio.wait_for(r.converged.wait(), 10)
    assert device.last()["models"][0] == {
        "name": "tiny-cnn", "version": "1", "state": "active", "active_version": "1", "progress": None, "error": None
    }  # fmt: skip


async def test_window_policy_holds_the_switch(tmp_path: Path, mqtt_pki: TestPKI, hub: Hub) -> None:
    wall = [3600.0 * 10]  # 10:00 UTC
    opened = asyncio.Event()

    async def sleep(_s: float) -> None:
        await opened.wait()
        wall[0] = 3600.0 * 2.5  # 02:30, inside the window

    dev = Device(tmp_path / "device", mqtt_pki, hub, PolicyClock(wall=lambda: wall[0], sleep=sleep))
    r = await dev.start()
    try:
        policy = ApplyPolicy(mode="window", window_start_utc="02:00", window_end_utc="03:00")
        await r.on_desired(desired_state(DEVICE, 1, hub.add(hub.v2), apply=policy))
        await until(lambda: dev.phases()[-1:] == ["held"], what="held")
        assert dev.serving() == "1" and "2" in dev.core.models()["tiny-cnn"]  # type: ignore[union-attr]
        opened.set()
        await asyncio.wait_for(r.converged.wait(), 10)
        assert dev.serving() == "2"
    finally:
        await dev.stop()


async def test_newer_revision_supersedes_a_download(device: Device, hub: Hub) -> None:
    r = device.reconciler
    assert r is not None
    hub.server.delay_s = 0.02
    await r.on_desired(desired_state(DEVICE, 1, hub.add(hub.big)))
    await until(lambda: "downloading" in device.phases()[-1:], what="download started")
    await r.on_desired(desired_state(DEVICE, 2, hub.add(hub.v1)))
    await asyncio.wait_for(r.converged.wait(), 10)
    assert device.serving() == "1" and device.last()["revision"] == 2
    assert not list(r.state.downloads.iterdir())  # no longer desired: pruned


@pytest.mark.parametrize(
    "point",
    ["download", "after_download", "after_verify", "after_install", "after_prepare", "before_switch", "after_switch"],
)
async def test_crash_at_each_point_resumes_to_completion(
    tmp_path: Path, mqtt_pki: TestPKI, hub: Hub, point: str, *, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    dev = Device(tmp_path / "device", mqtt_pki, hub)
    monkeypatch.setenv(PAUSE_ENV, point)
    hub.server.delay_s = 0.01 if point == "download" else 0.0
    r = await dev.start()
    try:
        await r.on_desired(desired_state(DEVICE, 7, hub.add(hub.big)))
        await until(lambda: f"EDGEFLEET_TEST_PAUSED {point}" in capsys.readouterr().out, what=f"pause at {point}")
        before = dev.serving()
    finally:
        await dev.stop()  # the "crash": nothing after the pause point ran
    monkeypatch.delenv(PAUSE_ENV)
    hub.server.delay_s = 0.0
    requests = len(hub.server.requests)
    dev.link = RecordingLink()
    r = await dev.start()
    try:
        # The restarted core serves the pointer's version: the old one until the switch, then the new.
        assert dev.serving() == ("2" if point == "after_switch" else "1") == before
        await asyncio.wait_for(r.converged.wait(), 20)
        assert dev.serving() == "2" and dev.pointer() == ("2", "1")
        resumed = hub.server.requests[requests:]
        if point == "download":
            assert len(resumed) == 1 and resumed[0][1] is not None and resumed[0][1].startswith("bytes=")
        else:
            assert resumed == []  # downloaded before the crash: never fetched again
        assert not list(r.state.downloads.iterdir())
    finally:
        await dev.stop()


async def test_desired_pipelines_replace_local_ones_and_empty_restores_them(device: Device, hub: Hub) -> None:
    r, core = device.reconciler, device.core
    assert r is not None and core is not None
    assert "gate" not in core.pipelines()
    pipelines = (
        PipelineSpec(name="gate", model="tiny-cnn", priority="safety", deadline_ms=80),
        PipelineSpec(name="ghost", model="not-installed", priority="best_effort"),
    )
    await r.on_desired(desired_state(DEVICE, 1, hub.add(hub.v2), pipelines=pipelines))
    await asyncio.wait_for(r.converged.wait(), 20)
    await r.wait_idle()
    served = core.pipelines()
    assert served["gate"].priority == "safety" and "ghost" not in served
    target = core.resolve("gate")
    out = await core.infer(target, {"input": np.zeros((1, 3, 64, 64), dtype=np.float32)})
    assert out["scores"].shape == (1, 4) and target.model.version == "2"
    skipped = [e for e in device.link.payloads("/events") if e["kind"] == "pipelines.skipped"]
    assert len(skipped) == 1 and "not-installed" in skipped[0]["message"]

    # A revision without pipelines goes back to the agent's own config: "gate" is no longer served.
    await r.on_desired(desired_state(DEVICE, 2, hub.add(hub.v2)))
    await r.wait_idle()
    assert "gate" not in core.pipelines() and "tiny-cnn" in core.pipelines()
