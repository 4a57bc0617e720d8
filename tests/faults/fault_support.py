"""Helpers of the fault-injection suite: a rig with a restartable broker, agents with chosen pipelines, traffic
whose every answer is checked against onnxruntime run directly, and the hub's stored telemetry.

Everything is a real process (mosquitto with the production mTLS + ACL config, `cloud-hub serve`,
`edge-agent serve`), started through the e2e rig (tests/e2e/rollout_support.py) on the local-stack harness
(deploy/local).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from rollout_support import Agent, Rig, until  # noqa: F401  # until: re-exported for the fault tests

from deploy.local import stack
from deploy.local.broker import require_mosquitto, start_broker
from deploy.local.procs import Child, accepting
from deploy.local.stack import Pipeline, agent_toml
from edge_agent.reconcile.faults import PAUSE_ENV
from protocols.binary import HEADER_LENGTH, decode_response, encode_request

SOAK = os.environ.get("EDGEFLEET_SOAK") == "1"
# Long variants: marked `soak` and skipped unless EDGEFLEET_SOAK=1 (what `make soak` sets).
soak_only = [pytest.mark.soak, pytest.mark.skipif(not SOAK, reason="long variant: EDGEFLEET_SOAK=1 (make soak)")]

ZOO_CNN = stack.ZOO_PACKAGES / stack.MODEL
INPUT_SHAPE = (3, 64, 64)
# Safety deadline of the suite's safety pipeline. The 50 ms of the demo is the bench's business: this shared
# 2-core machine runs broker, hub, agent(s) and the load generator at once.
SAFETY_DEADLINE_MS = 300
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


Pipe = Pipeline  # a pipeline of a fault-suite agent

SAFETY = Pipe("collision", "safety", SAFETY_DEADLINE_MS)
STANDARD = Pipe("detect", "standard", 2000)


class References:
    """onnxruntime sessions on the ONNX file behind each model version: the expected outputs."""

    def __init__(self) -> None:
        self._files: dict[str, Path] = {v: ZOO_CNN / v / "model.onnx" for v in ("1", "2")}
        self._sessions: dict[Path, Any] = {}
        self._cache: dict[tuple[str, int], np.ndarray[Any, Any]] = {}

    def alias(self, version: str, same_as: str) -> None:
        """`version` runs the same ONNX file as `same_as` (publisher_package re-signs zoo v2's model)."""
        self._files[version] = self._files[same_as]

    def expected(self, version: str, batch: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The output of `version` for `batch` (cached per batch object)."""
        key = (version, id(batch))
        if key not in self._cache:
            import onnxruntime as ort

            path = self._files[version]
            if path not in self._sessions:
                self._sessions[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self._cache[key] = self._sessions[path].run(None, {"input": batch})[0]
        return self._cache[key]

    def matches(self, version: str, batch: np.ndarray[Any, Any], got: np.ndarray[Any, Any]) -> bool:
        """Whether `got` is `version`'s answer for `batch` (float tolerance for batching differences)."""
        if version not in self._files:
            return False
        want = self.expected(version, batch)
        return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-5))


@dataclass
class Outcome:
    """One request: pipeline, HTTP status (0 = no answer), seconds, version, route, verdict, error text."""

    pipeline: str
    status: int
    latency_s: float
    version: str = ""
    route: str = ""
    correct: bool | None = None
    error: str = ""
    at: float = field(default_factory=time.monotonic)


class Traffic:
    """Requests against an agent (its URL re-read per request, so a restarted agent is followed).

    Paced pipelines send `rate_hz` requests a second; closed-loop ones keep `workers` requests in flight.
    Every 200 answer is compared with onnxruntime for the version the agent says answered it."""

    def __init__(
        self,
        url: Callable[[], str],
        refs: References,
        *,
        rows: int = 1,
        seed: int = 7,
        safety_url: Callable[[], str | None] | None = None,
    ) -> None:
        self.url = url
        # Where safety pipelines are called (the agent's safety cell); None: the main port, which forwards them.
        self.safety_url = safety_url
        self.refs = refs
        self.batch = np.random.default_rng(seed).standard_normal((rows, *INPUT_SHAPE)).astype(np.float32)
        self.body, length = encode_request(inputs={"input": self.batch})
        self.headers = {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"}
        self.outcomes: list[Outcome] = []
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Traffic:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.finish()

    def paced(self, pipeline: str, rate_hz: float) -> None:
        """Send to `pipeline` every 1/rate_hz seconds (safety traffic: short, regular)."""
        self._tasks.append(asyncio.create_task(self._paced(pipeline, 1.0 / rate_hz)))

    def closed_loop(self, pipeline: str, workers: int = 1) -> None:
        """Keep `workers` requests to `pipeline` in flight."""
        self._tasks += [asyncio.create_task(self._closed(pipeline)) for _ in range(workers)]

    async def finish(self) -> None:
        """Stop every sender and close the session (idempotent)."""
        self.stop.set()
        await asyncio.gather(*self._tasks)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _paced(self, pipeline: str, period_s: float) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.stop.is_set():
            await self.one(pipeline)
            next_at = max(next_at + period_s, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def _closed(self, pipeline: str) -> None:
        while not self.stop.is_set():
            outcome = await self.one(pipeline)
            if outcome.status in {0, 503}:
                await asyncio.sleep(0.02)  # no busy loop on a refused connection or a fast 503

    async def one(self, pipeline: str) -> Outcome:
        """Send one request and record its outcome."""
        assert self._session is not None
        start = time.perf_counter()
        try:
            async with self._session.post(
                f"{self._base(pipeline)}/v2/models/{pipeline}/infer", data=self.body, headers=self.headers
            ) as resp:
                raw = await resp.read()
                took = time.perf_counter() - start
                outcome = Outcome(pipeline, resp.status, took, route=resp.headers.get("X-Edgefleet-Route", ""))
                if resp.status == 200:
                    header, arrays = decode_response(raw, _int(resp.headers.get(HEADER_LENGTH)))
                    outcome.version = str(header.get("model_version", ""))
                    outcome.correct = self.refs.matches(outcome.version, self.batch, arrays["scores"])
                else:
                    outcome.error = raw[:300].decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = Outcome(pipeline, 0, time.perf_counter() - start, error=repr(exc))
        self.outcomes.append(outcome)
        return outcome

    def _base(self, pipeline: str) -> str:
        cell = self.safety_url() if self.safety_url is not None and pipeline == SAFETY.name else None
        return cell or self.url()

    def of(self, pipeline: str) -> list[Outcome]:
        """The outcomes of one pipeline."""
        return [o for o in self.outcomes if o.pipeline == pipeline]


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def p99(outcomes: Sequence[Outcome]) -> float:
    """99th percentile latency in seconds (0 if none)."""
    return float(np.percentile([o.latency_s for o in outcomes], 99)) if outcomes else 0.0


def failures(outcomes: Sequence[Outcome]) -> list[str]:
    """Human-readable non-200 or wrong outcomes."""
    return [f"{o.pipeline} {o.status} {o.version} correct={o.correct} {o.error[:120]}" for o in outcomes
            if o.status != 200 or not o.correct]  # fmt: skip


class FaultRig(Rig):
    """The e2e rig plus: a broker that can be restarted or killed, agents with the suite's pipelines, the
    hub's telemetry rows, and a check that no process survives the test."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.broker: Child | None = None
        self.restarts = 0
        self.refs = References()
        self.cell_urls: dict[str, str | None] = {}  # device id -> its safety cell's address (GET /v2 says it)

    async def start(self) -> None:
        tls = self.workdir / "tls"
        await stack.make_pki(self.sup, self.hub_dir, tls)
        self.broker, self.broker_port = await start_broker(self.sup, self.workdir, tls, "edgefleet/v1")
        await self.start_hub()
        await stack.push_models(self.sup, self.hub_dir)  # trusts the zoo key, pushes 1 and 2

    # --- broker -----------------------------------------------------------------------------------

    async def restart_broker(self, sig: signal.Signals = signal.SIGTERM, down_s: float = 0.0) -> None:
        """Stop the broker with `sig` (SIGKILL = crash), wait `down_s`, start it again on the same port."""
        await self.stop_broker(sig)
        await asyncio.sleep(down_s)
        await self.start_broker_again()

    async def stop_broker(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the broker with `sig` and reap it."""
        assert self.broker is not None
        os.killpg(self.broker.pid, sig)
        await asyncio.to_thread(self.broker.proc.wait, 10)

    async def start_broker_again(self) -> None:
        """Start mosquitto on the same port and config; wait until it accepts connections."""
        self.restarts += 1
        argv = [require_mosquitto(), "-c", str(self.workdir / "mosquitto.conf")]
        deadline = time.monotonic() + 15
        while True:
            self.broker = self.sup.spawn(f"mosquitto-r{self.restarts}-{time.monotonic_ns()}", argv)
            if await accepting(self.broker, self.broker_port, 5.0):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not come back on {self.broker_port}:\n{self.broker.tail()}")
            await asyncio.sleep(0.2)  # the port may still be held by the old socket: try again

    # --- agents -----------------------------------------------------------------------------------

    async def add_fault_agent(
        self,
        device_id: str,
        pipelines: Sequence[Pipe] = (SAFETY, STANDARD),
        *,
        start: bool = True,
        **toml: Any,
    ) -> Agent:
        """Provision a device (claim + `edge-agent provision`) and write its config; start it unless told."""
        agent = Agent(device_id, self.workdir / "agents" / device_id)
        await stack.provision(self.sup, self.hub_dir, device_id, {"fleet": "demo"}, agent.directory)
        agent_toml(agent.directory, pipelines, **toml)
        self.agents[device_id] = agent
        if start:
            await self.launch(agent)
        return agent

    async def launch(
        self, agent: Agent, *, pause_at: str | None = None, env: dict[str, str] | None = None, link: bool = True
    ) -> None:
        """`edge-agent serve` (optionally paused at a reconciler point); wait for ready (and the MQTT link)."""
        child_env = {PAUSE_ENV: pause_at or "", **(env or {})}
        n = sum(1 for c in self.sup.children if c.name.startswith(f"agent-{agent.device_id}-"))
        config = agent.directory / "agent.toml"
        agent.child, agent.url = await stack.start_agent(
            self.sup, f"agent-{agent.device_id}-{n}", config, env=child_env
        )
        self.cell_urls[agent.device_id] = await stack.safety_cell_url(agent.url)
        if link:
            await agent.child.wait_for(r"MQTT link up", 30)

    def link_ups(self, agent: Agent) -> int:
        """How many times the current agent process brought its MQTT link up."""
        assert agent.child is not None
        return agent.child.output().count("MQTT link up")

    async def reported(self, device_id: str) -> dict[str, Any]:
        """The device row's reported state ({} if none)."""
        device = (await self.api("GET", f"/api/v1/devices/{device_id}"))["device"]
        return device.get("reported") or {}

    async def converged_on(self, device_id: str, version: str) -> bool:
        """Reported state of the hub's latest desired revision says `version` is active."""
        desired = await self.desired(device_id)
        reported = await self.reported(device_id)
        models = {m["name"]: m for m in reported.get("models", [])}
        m = models.get(stack.MODEL)
        return bool(
            desired
            and reported.get("revision") == desired["revision"]
            and m
            and m["state"] == "active"
            and m["active_version"] == version
        )

    # --- hub telemetry ----------------------------------------------------------------------------

    def telemetry(self, device_id: str) -> list[tuple[str, int, float]]:
        """(boot_id, seq, sent_at) of every report the hub stored for `device_id`, by seq."""
        with sqlite3.connect(f"file:{self.hub_dir / 'hub.db'}?mode=ro", uri=True, timeout=10) as db:
            rows = db.execute(
                "SELECT boot_id, seq, sent_at FROM telemetry WHERE device_id = ? ORDER BY seq", (device_id,)
            ).fetchall()
        return [(str(b), int(s), float(t)) for b, s, t in rows]

    async def stored(self, device_id: str) -> list[tuple[str, int, float, float]]:
        """(boot_id, seq, sent_at, received_at) of every report the hub stored for `device_id`, by seq."""

        def read() -> list[tuple[str, int, float, float]]:
            with sqlite3.connect(f"file:{self.hub_dir / 'hub.db'}?mode=ro", uri=True, timeout=10) as db:
                rows = db.execute(
                    "SELECT boot_id, seq, sent_at, received_at FROM telemetry WHERE device_id = ? ORDER BY seq",
                    (device_id,),
                ).fetchall()
            return [(str(b), int(s), float(t), float(r)) for b, s, t, r in rows]

        return await asyncio.to_thread(read)

    # --- teardown ---------------------------------------------------------------------------------

    def assert_no_leftovers(self) -> None:
        """Every child and every process of its group is gone."""
        alive = [c.name for c in self.sup.children if c.proc.poll() is None or _group_alive(c.pid)]
        assert not alive, f"processes left behind: {alive}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def contiguous_per_boot(rows: Sequence[tuple[str, int, float]]) -> dict[str, list[int]]:
    """boot_id -> the seqs missing between its first and last stored report (empty lists = nothing lost)."""
    by_boot: dict[str, list[int]] = {}
    for boot, seq, _ in rows:
        by_boot.setdefault(boot, []).append(seq)
    return {b: sorted(set(range(min(s), max(s) + 1)) - set(s)) for b, s in by_boot.items()}
