"""The rollout end-to-end rig: real mosquitto, `cloud-hub serve`, `edge-agent serve` processes, real CLIs.

Built on the local-stack harness (deploy/local): every child in its own process group, logged to a file,
always stopped. Agents are started with an optional fault-injection point (EDGEFLEET_TEST_PAUSE_AT).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from rig.onnx_models import broken_onnx

from cloud_hub.cli.client import HubClient
from deploy.local import stack
from deploy.local.broker import start_broker
from deploy.local.procs import Child, Supervisor
from edge_agent.reconcile.faults import PAUSE_ENV

PIPELINE = "detect"
BODY = {
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": np.zeros(3 * 64 * 64).tolist()}]
}


@dataclass
class Agent:
    """One device: its id, directory, current process and URL."""

    device_id: str
    directory: Path
    child: Child | None = None
    url: str = ""


@dataclass
class Load:
    """Steady closed-loop requests against one agent; every answer's version and every failure."""

    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


class Rig:
    """Broker + hub + agents for one test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sup = Supervisor(workdir, grace_s=5.0)
        self.hub_dir = workdir / "hub"
        self.hub: Child | None = None
        self.hub_url = ""
        self.broker_port = 0
        self.agents: dict[str, Agent] = {}
        self.client: HubClient | None = None

    async def start(self) -> None:
        tls = self.workdir / "tls"
        await stack.make_pki(self.sup, self.hub_dir, tls)
        _, self.broker_port = await start_broker(self.sup, self.workdir, tls, "edgefleet/v1")
        await self.start_hub()

    async def start_hub(self) -> None:
        self.hub, self.hub_url = await stack.start_hub(self.sup, self.hub_dir, self.broker_port)
        self.client = HubClient.resolve(self.hub_dir, None, None, None)

    async def restart_hub(self) -> None:
        """kill -9 the hub and start it again on the same port (desired states name artifact URLs on it)."""
        assert self.hub is not None
        os.killpg(self.hub.pid, signal.SIGKILL)
        self.hub.proc.wait(10)
        port = self.hub_url.rsplit(":", 1)[1]
        args = stack.hub_serve_args(port, self.broker_port)
        self.hub = self.sup.spawn(f"hub-restarted-{time.monotonic_ns()}", stack.hub_cli(self.hub_dir, *args))
        await self.hub.wait_for(stack.READY_HUB, 30)

    def stop(self) -> None:
        self.sup.stop_all()

    async def cli(self, *args: str, timeout_s: float = 60) -> str:
        return await self.sup.run(f"cli-{args[0]}-{time.monotonic_ns()}", stack.hub_cli(self.hub_dir, *args), timeout_s)

    async def api(self, method: str, path: str) -> Any:
        assert self.client is not None
        return await asyncio.to_thread(self.client.request, method, path)

    async def add_agent(self, device_id: str, labels: dict[str, str], *, start: bool = True) -> Agent:
        agent = Agent(device_id, self.workdir / "agents" / device_id)
        await stack.provision(self.sup, self.hub_dir, device_id, {**labels, "fleet": "demo"}, agent.directory)
        stack.agent_toml(agent.directory, (stack.Pipeline(PIPELINE, "standard", 1000),))
        self.agents[device_id] = agent
        if start:
            await self.start_agent(agent)
        return agent

    async def start_agent(self, agent: Agent, pause_at: str | None = None) -> None:
        env = {PAUSE_ENV: pause_at} if pause_at else {"EDGEFLEET_TEST_PAUSE_AT": ""}
        n = sum(1 for c in self.sup.children if c.name.startswith(f"agent-{agent.device_id}"))
        config = agent.directory / "agent.toml"
        agent.child, agent.url = await stack.start_agent(self.sup, f"agent-{agent.device_id}-{n}", config, env=env)
        await agent.child.wait_for(r"MQTT link up", 30)

    def kill9(self, agent: Agent) -> None:
        assert agent.child is not None
        os.killpg(agent.child.pid, signal.SIGKILL)
        agent.child.proc.wait(10)

    async def steady_load(self, agent: Agent, stop: asyncio.Event, load: Load) -> None:
        """Requests back to back until `stop` (the URL is re-read, so a restarted agent is followed)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while not stop.is_set():
                try:
                    async with session.post(f"{agent.url}/v2/models/{PIPELINE}/infer", json=BODY) as response:
                        body = await response.json()
                        if response.status != 200:
                            load.failures.append(f"{response.status} {body}")
                        else:
                            load.versions.append(str(body.get("model_version")))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    load.failures.append(repr(exc))
                await asyncio.sleep(0.01)

    async def serving(self, agent: Agent) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{agent.url}/v2/models/{PIPELINE}/infer", json=BODY) as response,
        ):
            assert response.status == 200, await response.text()
            return str((await response.json())["model_version"])

    async def rollout(self, version: str, *extra: str, selector: str = "fleet=demo") -> str:
        out = await self.cli("rollouts", "create", "--model", stack.MODEL, "--version", version,
                             "--selector", selector, *extra, "--json")  # fmt: skip
        body = json.loads(out[out.index("{") :])
        return str(body.get("rollout", body)["id"])

    async def rollout_detail(self, rollout_id: str) -> dict[str, Any]:
        detail: dict[str, Any] = (await self.api("GET", f"/api/v1/rollouts/{rollout_id}"))["rollout"]
        return detail

    async def wait_rollout(self, rollout_id: str, states: tuple[str, ...], timeout_s: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            detail = await self.rollout_detail(rollout_id)
            if detail["state"] in states:
                return detail
            if time.monotonic() > deadline:
                raise AssertionError(f"rollout not in {states} within {timeout_s} s: {json.dumps(detail)[:3000]}")
            await asyncio.sleep(0.3)

    async def desired(self, device_id: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = await self.api("GET", f"/api/v1/devices/{device_id}/desired")
        except Exception:
            return None
        return body.get("desired")


async def until(check: Callable[[], Any], timeout_s: float = 30, what: str = "condition") -> None:
    """Poll an async or sync predicate."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def publisher_package(
    work: Path, version: str, *, broken: bool = False, padding_bytes: int = 0, source: str = "2"
) -> Path:
    """A tiny-cnn package directory (the zoo's version `source` model) signed by a new publisher key (its
    .pub written beside it)."""
    from models.package import build_package, read_manifest
    from models.signing import generate_keypair, save_public_key
    from models.zoo import zoo_package_path
    from protocols.manifest import TensorSpec

    private, public = generate_keypair()
    save_public_key(public, work / f"publisher-{version}.pub")
    src = zoo_package_path("tiny-cnn", source)
    manifest, _ = read_manifest(src)
    files = [src / manifest.model_file]
    if broken:
        files = [work / "model.onnx"]
        broken_onnx(files[0])
    if padding_bytes:
        pad = work / "padding.bin"
        pad.write_bytes(np.random.default_rng(0).bytes(padding_bytes))
        files.append(pad)
    out = work / f"pkg-{version}"
    build_package(
        files,
        out,
        name="tiny-cnn",
        version=version,
        inputs=(TensorSpec(name="input", datatype="FP32", shape=(-1, 3, 64, 64)),),
        outputs=(TensorSpec(name="scores", datatype="FP32", shape=(-1, 4)),),
        max_batch_size=manifest.max_batch_size,
        private_key=private,
    )
    return out
