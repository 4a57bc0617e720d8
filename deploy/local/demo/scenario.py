"""The demo's scenario: start the system, provision, push, roll out under traffic, burst, summarise."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.cli.client import HubClient  # the operator API's HTTP client (what `cloud-hub devices` uses)
from cloud_hub.errors import HubError
from deploy.local import stack
from deploy.local.broker import start_broker
from deploy.local.demo import agentmetrics, fleet
from deploy.local.demo.state import DemoState
from deploy.local.demo.traffic import Target, Traffic
from deploy.local.procs import StackError, Supervisor
from protocols.topics import DEFAULT_PREFIX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """How long each phase lasts."""

    steady_s: float
    burst_s: float
    cooldown_s: float
    bake: str
    rollout_timeout_s: float
    burst_workers: int = 6
    burst_batch: int = 1
    burst_timeout_us: int | None = None  # Triton's `timeout` parameter on burst requests (None: the pipeline's)


FULL = Timing(steady_s=15.0, burst_s=20.0, cooldown_s=5.0, bake="3s", rollout_timeout_s=60.0)
SHORT = Timing(steady_s=3.0, burst_s=6.0, cooldown_s=1.0, bake="1s", rollout_timeout_s=40.0)
FINAL_ROLLOUT_STATES = ("completed", "completed_with_pending", "rolled_back", "aborted")


class Demo:
    """One run of the demo in `workdir`; `sup` owns every child process."""

    def __init__(self, workdir: Path, sup: Supervisor, state: DemoState, timing: Timing) -> None:
        self.workdir = workdir
        self.sup = sup
        self.state = state
        self.timing = timing
        self.hub_dir = workdir / "hub"
        self.hub_url = ""
        self.pool_url: str | None = None
        self.agent_urls: dict[str, str] = {}
        self.cell_urls: dict[str, str] = {}  # device -> its safety cell's listener
        self.client: HubClient | None = None
        self.traffic: Traffic | None = None
        self.rollout_id: str | None = None
        self.rollout_skipped: str | None = None  # kept for the summary's shape: the rollout always runs
        self.offload_skipped: str | None = None

    # --- start-up ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        """PKI, broker, hub, pool, claims + provisioning, model push, agents; wait until all are online."""
        st = self.state
        st.phase = "start-up"
        st.step("pki", "running", "hub CA + broker certificate (cloud-hub pki broker-cert)")
        tls = self.workdir / "broker-tls"
        await stack.make_pki(self.sup, self.hub_dir, tls)
        st.step("pki", "ok", f"CA in {self.hub_dir / 'pki'}, broker certificate in {tls}")
        st.step("broker", "running", "mosquitto, mTLS + ACL from deploy/mosquitto")
        broker, port = await start_broker(self.sup, self.workdir, tls, DEFAULT_PREFIX)
        st.step("broker", "ok", f"mqtts://127.0.0.1:{port} (pid {broker.pid})")
        st.step("hub", "running", "cloud-hub serve (SQLite)")
        hub, self.hub_url = await stack.start_hub(self.sup, self.hub_dir, port)
        try:
            self.client = HubClient.resolve(self.hub_dir, None, None, None)
        except HubError as exc:
            raise StackError(f"cannot talk to the hub: {exc}") from exc
        st.step("hub", "ok", f"{self.hub_url} (pid {hub.pid})")
        st.step("pool", "running", "cloud pool: edge-agent serve --standalone")
        pool, self.pool_url = await stack.start_pool(self.sup, self.workdir)
        st.step("pool", "ok", f"{self.pool_url} (pid {pool.pid})")

        st.step("provision", "running", "3 claims (cloud-hub claims create) + edge-agent provision")
        ids = await asyncio.gather(*(self._provision(p) for p in fleet.AGENTS))
        st.provisioned = list(ids)
        st.step("provision", "ok", f"provisioned by claim: {', '.join(ids)}")

        st.step("models", "running", f"cloud-hub models push {fleet.MODEL} v1, v2")
        await stack.push_models(self.sup, self.hub_dir)
        st.step("models", "ok", f"{fleet.MODEL} v1 and v2 in the hub registry (signed by the hub)")

        st.step("agents", "running", "3 agents serving tiny-cnn v1, linked to the hub")
        urls = await asyncio.gather(*(self._start_agent(p) for p in fleet.AGENTS))
        self.agent_urls = {p.device_id: url for p, url in zip(fleet.AGENTS, urls, strict=True)}
        cells = await asyncio.gather(*(stack.safety_cell_url(url) for url in urls))
        self.cell_urls = {d: c for d, c in zip(self.agent_urls, cells, strict=True) if c is not None}
        await self._wait_online(len(fleet.AGENTS), 45.0)
        st.step("agents", "ok", ", ".join(f"{d} {u}" for d, u in self.agent_urls.items()))

    async def _provision(self, plan: fleet.AgentPlan) -> str:
        return await fleet.provision(self.sup, self.hub_dir, plan, self.workdir / "agents" / plan.device_id)

    async def _start_agent(self, plan: fleet.AgentPlan) -> str:
        agent_dir = self.workdir / "agents" / plan.device_id
        if self.offload_skipped is None:
            try:
                _, url = await fleet.start_agent(self.sup, plan, agent_dir, self.pool_url)
                return url
            except StackError as exc:
                if "pools" not in str(exc):
                    raise
                # The agent's config has no `pools` section yet: serve without offload and say so.
                self.offload_skipped = "this edge-agent's config has no `pools` section (issue 4 not merged)"
                self.state.step("offload", "skipped", self.offload_skipped)
        _, url = await fleet.start_agent(self.sup, plan, agent_dir, None)
        return url

    def _url(self, device: str, priority: str) -> str:
        cell = self.cell_urls.get(device) if priority == "safety" else None
        return cell or self.agent_urls[device]

    async def _wait_online(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            await self.poll()
            if sum(1 for d in self.state.devices if d.get("online")) >= count:
                return
            await asyncio.sleep(0.3)
        online = [d["id"] for d in self.state.devices if d.get("online")]
        raise StackError(f"only {online} came online at the hub within {timeout_s:.0f} s")

    # --- hub polling ---------------------------------------------------------------------------------------

    async def poll(self) -> None:
        """Read devices (and the rollout) from the hub API into the state."""
        if self.client is None:
            return
        client = self.client
        try:
            devices = await asyncio.to_thread(client.request, "GET", "/api/v1/devices")
            self.state.devices = sorted(devices["devices"], key=lambda d: str(d["id"]))
            if self.rollout_id is not None:
                detail = await asyncio.to_thread(client.request, "GET", f"/api/v1/rollouts/{self.rollout_id}")
                self.state.observe_rollout(detail["rollout"])
        except HubError as exc:
            log.debug("hub poll failed: %s", exc)

    async def watch(self) -> None:
        """Poll the hub every second until cancelled."""
        while True:
            await self.poll()
            await asyncio.sleep(1.0)

    # --- traffic, rollout, burst ---------------------------------------------------------------------------

    def targets(self) -> list[tuple[Target, float]]:
        """Every pipeline of every agent, with its steady rate (safety apps call the safety cell's address)."""
        return [
            (Target(a.device_id, p.name, p.priority, p.deadline_ms, self._url(a.device_id, p.priority)), p.rate_hz)
            for a in fleet.AGENTS
            for p in a.pipelines
        ]

    async def traffic_phases(self, traffic: Traffic) -> None:
        """Steady traffic throughout; the rollout under it; then a burst on the line device; cool down."""
        st, t = self.state, self.timing
        traffic.epoch = asyncio.get_running_loop().time() - st.elapsed()  # misses are timed like the steps
        stop = asyncio.Event()
        streams = [asyncio.create_task(traffic.steady(target, rate, stop)) for target, rate in self.targets()]
        try:
            st.phase = traffic.phase = "steady"
            st.step("traffic", "ok", f"steady mixed traffic to {len(streams)} pipelines")
            await asyncio.sleep(t.steady_s)
            st.phase = traffic.phase = "rollout"
            await self.run_rollout()
            st.phase = traffic.phase = "burst"
            await self.run_burst(traffic)
            st.phase = traffic.phase = "cool-down"
            await asyncio.sleep(t.cooldown_s)
        finally:
            stop.set()
            await asyncio.gather(*streams, return_exceptions=True)
        await self.agents_view(traffic)

    async def agents_view(self, traffic: Traffic) -> None:
        """Attach each agent's own per-pipeline counts (from its /metrics) to the generator's stats."""
        # Safety pipelines are counted by the agent's safety cell, on its own listener: scrape what was called.
        urls = sorted({stats.target.url for stats in traffic.stats.values()})
        texts = await asyncio.gather(*(agentmetrics.scrape(traffic.session, u) for u in urls))
        by_url = dict(zip(urls, texts, strict=True))
        for stats in traffic.stats.values():
            text = by_url.get(stats.target.url)
            if text is not None:
                stats.agent_view = agentmetrics.pipeline_view(text, stats.target.pipeline, stats.target.deadline_ms)

    async def run_rollout(self) -> None:
        """Roll tiny-cnn v2 out with a canary and waves, and follow it until it ends (or time runs out)."""
        st = self.state
        st.step("rollout", "running", f"cloud-hub rollouts create {fleet.MODEL} v2 --canary 1 --waves 50%,100%")
        self.rollout_id = await fleet.create_rollout(self.sup, self.hub_dir, self.timing.bake)
        st.mark("created", rollout=self.rollout_id)
        deadline = time.monotonic() + self.timing.rollout_timeout_s
        while time.monotonic() < deadline:
            await self.poll()
            current = st.rollout or {}
            if current.get("state") in FINAL_ROLLOUT_STATES:
                break
            await asyncio.sleep(0.5)
        final = (st.rollout or {}).get("state")
        if final == "completed":
            st.step("rollout", "ok", f"{self.rollout_id} completed: every device serves v2")
        else:
            why = self._rollout_stuck()
            st.step("rollout", "failed", f"{self.rollout_id} ended {final or 'unknown'}: {why}")

    def _rollout_stuck(self) -> str:
        r = self.state.rollout or {}
        if r.get("state") not in FINAL_ROLLOUT_STATES:
            waiting = [
                f"{d['device_id']}={d['status']}/{d.get('phase') or '-'}"
                for d in r.get("devices", [])
                if d.get("status") != "active"
            ]
            return (
                f"not finished after {self.timing.rollout_timeout_s:.0f} s; devices not active: {waiting} "
                "(no agent reconciler applying desired state?)"
            )
        return str(r.get("reason") or "see `cloud-hub rollouts get`")

    async def run_burst(self, traffic: Traffic) -> None:
        """Closed-loop burst on the line device's best-effort pipeline: overflow goes to the pool."""
        st, t = self.state, self.timing
        burst = (fleet.BURST_DEVICE, fleet.BURST_PIPELINE)
        target = next(x for x, _ in self.targets() if (x.device, x.pipeline) == burst)
        before = traffic.stats[target.key].routes["cloud"]
        st.step("burst", "running", f"{t.burst_workers} clients on {target.key} for {t.burst_s:.0f} s")
        await traffic.burst(target, t.burst_workers, t.burst_s, batch=t.burst_batch, timeout_us=t.burst_timeout_us)
        offloaded = traffic.stats[target.key].routes["cloud"] - before
        if self.offload_skipped:
            st.step("burst", "ok", f"no offload: {self.offload_skipped}")
        elif offloaded:
            st.step("burst", "ok", f"{offloaded} requests overflowed to the cloud pool")
        else:
            st.step("burst", "failed", "no request was offloaded to the pool")

    # --- summary -------------------------------------------------------------------------------------------

    def summary(self, started: float, interrupted: bool) -> dict[str, Any]:
        """The machine-readable summary (also what the summary table shows)."""
        st = self.state
        pipelines = [s.to_json() for s in self.traffic.stats.values()] if self.traffic else []
        offloaded = sum(p["routes"]["cloud"] for p in pipelines)
        safety = [p for p in pipelines if p["priority"] == "safety"]
        safety_ok = bool(safety) and all(safety_met(p) for p in safety)
        r = st.rollout or {}
        checks: dict[str, bool | None] = {
            "3 devices provisioned": len(st.provisioned) == len(fleet.AGENTS),
            "rollout completed": None if self.rollout_skipped else r.get("state") == "completed",
            "offloaded requests > 0": None if self.offload_skipped else offloaded > 0,
            "safety requests all local and within deadline": safety_ok,
        }
        return {
            "ok": not interrupted and all(v is not False for v in checks.values()),
            "interrupted": interrupted,
            "duration_s": round(time.monotonic() - started, 2),
            "workdir": str(self.workdir),
            "hub_url": self.hub_url,
            "pool_url": self.pool_url,
            "agents": self.agent_urls,
            "devices_provisioned": st.provisioned,
            "devices": [
                {"id": d["id"], "labels": d["labels"], "online": d.get("online"), "models": d.get("models")}
                for d in st.devices
            ],
            "pipelines": pipelines,
            "offloaded": offloaded,
            "rollout": {
                "id": self.rollout_id,
                "state": r.get("state"),
                "reason": r.get("reason"),
                "timeline": st.timeline,
                "skipped": self.rollout_skipped,
            },
            "checks": {k: v for k, v in checks.items() if v is not None},
            "skipped": [s.to_json() for s in st.skipped()],
            "steps": [s.to_json() for s in st.steps],
            "pids": self.sup.pids(),
        }


def safety_met(p: dict[str, Any]) -> bool:
    """Every request answered locally (as the app saw it and as the agent counted it) within the deadline the
    agent enforces (its own latency histogram); without the agent's counts, the load generator's latencies."""
    agent = p.get("agent")
    local = p["sent"] > 0 and p["routes"]["local"] == p["sent"]
    if agent is None or agent["bucket_le_ms"] != p["deadline_ms"]:
        return bool(local and p["missed_deadline"] == 0)
    counted = agent["requests"] == p["sent"] and agent["routes"].get("local", 0) == p["sent"]
    return bool(local and counted and agent["within_deadline"] == p["sent"])


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel an owned background task and wait for it."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
