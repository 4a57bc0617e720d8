"""Real processes: an agent (safety + best-effort pipelines on tiny-cnn) and a standalone pool, under overload."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from agent_support import AgentProcess, Reference, sample, start_agent

from edge_agent.http.v2 import ROUTE_HEADER
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE
from protocols.binary import HEADER_LENGTH, decode_response, encode_request

pytestmark = pytest.mark.slow

BE_DEADLINE_S = 0.050
# Overload = more inference work than the device takes, made with bounded concurrency: BE_CLIENTS closed-loop
# clients with 8-row requests against a best-effort queue of BE_QUEUE requests, so the local queue stays full
# and the rest must overflow (or be shed). Not an HTTP flood beyond what one Python loop can parse: that
# would measure the test's and the agent's HTTP stacks on 2 shared cores, not the scheduler.
BE_CLIENTS = 8
BE_BACKOFF_S = 0.01  # after a 503, as a client honouring it would (bounds the dead-pool phase's request rate)
BE_QUEUE = 4
SAFETY_SAMPLES = 100  # per phase, every 20 ms, so one scheduling hiccup of this shared machine is not the p99
# The test checks routing and relative latency; the 50 ms safety deadline itself is the bench's business
# (a shared 2-core CI machine cannot promise 50 ms at p99 even without load).
SAFETY_DEADLINE_MS = 2000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# As bench/overload.py does on this 2-core machine: the agent gets CPU 0, the pool and the best-effort load CPU 1
# (the safety client is light and left to the OS), so the agent's latency is not the OS sharing its core.
AGENT_CPU, LOAD_CPU = (
    ({0}, {1}) if len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0) else (None, None)
)


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of a process and of its children (the agent's safety cell and main process, started by
    its supervisor, exist already with their runtime threads)."""
    if cpus is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                pin(int(child), cpus)


def start_pool(port: int) -> AgentProcess:
    args = ["serve", "--standalone", "--model-dir", str(PACKAGES_DIR), "--trust", str(ZOO_PUBLIC_KEY_FILE)]
    pool = start_agent([*args, "--port", str(port), "--threads", "1"])
    pin(pool.proc.pid, LOAD_CPU)
    return pool


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A pool process and an agent process whose config names it."""
    pool_port = free_port()
    cell_port = free_port()
    pool = start_pool(pool_port)
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
state_dir = "state"
model_dirs = ["{PACKAGES_DIR}"]
trusted_keys = ["{ZOO_PUBLIC_KEY_FILE}"]
expose_models = false

[http]
port = 0

[runtime]
type = "onnxruntime"
intra_op_threads = 1
inter_op_threads = 1

[scheduler.queue_limits]
best_effort = {BE_QUEUE}

[offload]
probe_interval_s = 0.1
[offload.breaker]
consecutive_failures = 3
open_s = 0.5

[safety_cell]
port = {cell_port}

[[pipelines]]
name = "collision"
model = "tiny-cnn"
priority = "safety"
deadline_ms = {SAFETY_DEADLINE_MS}

[[pipelines]]
name = "shelf"
model = "tiny-cnn"
priority = "best_effort"
deadline_ms = {int(BE_DEADLINE_S * 1000)}

[[pools]]
name = "pool-a"
url = "http://127.0.0.1:{pool_port}"
"""
    )
    agent = start_agent(["serve", "--config", str(config)])
    pin(agent.proc.pid, AGENT_CPU)
    state: dict[str, Any] = {
        "pool": pool,
        "pool_port": pool_port,
        "agent": agent,
        "cell": f"http://127.0.0.1:{cell_port}",
    }
    yield state
    agent.stop()
    state["pool"].stop()


# name, status, route, seconds, body, header length, finished at (time.monotonic(): one clock for every process)
Result = tuple[str, int, str, float, bytes, str | None, float]


async def post(session: aiohttp.ClientSession, url: str, name: str, body: tuple[bytes, int | None]) -> Result:
    data, length = body
    start = time.perf_counter()
    async with session.post(f"{url}/v2/models/{name}/infer", data=data, headers={HEADER_LENGTH: str(length)}) as resp:
        raw = await resp.read()
        route = resp.headers.get(ROUTE_HEADER, "-")
        elapsed = time.perf_counter() - start
        return name, resp.status, route, elapsed, raw, resp.headers.get(HEADER_LENGTH), time.monotonic()


async def best_effort_clients(url: str, results: Any, stop: Any) -> None:
    """BE_CLIENTS closed loops of 8-row requests until `stop` is set; every answer goes to `results`."""
    body = encode_request(inputs={"input": sample("tiny-cnn", 8, seed=1)})
    connector = aiohttp.TCPConnector(limit=BE_CLIENTS)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def client() -> None:
            while not stop.is_set():
                try:
                    result = await post(session, url, "shelf", body)
                except (aiohttp.ClientError, TimeoutError):
                    result = ("shelf", 0, "-", 0.0, b"", None, time.monotonic())
                results.put(result)
                if result[1] != 200:
                    await asyncio.sleep(BE_BACKOFF_S)

        await asyncio.gather(*(client() for _ in range(BE_CLIENTS)))


def best_effort_process(url: str, results: Any, stop: Any) -> None:
    """The best-effort load in a process of its own, so the safety client's loop measures only the agent."""
    pin(os.getpid(), LOAD_CPU)
    asyncio.run(best_effort_clients(url, results, stop))


class Load:
    """Best-effort load in a child process (enough to overload the device) and paced safety requests here."""

    def __init__(self, session: aiohttp.ClientSession, url: str, safety_url: str) -> None:
        self.session = session
        self.url = url
        self.safety_url = safety_url  # the safety cell's own listener
        self.safety = encode_request(inputs={"input": sample("tiny-cnn", 1, seed=2)})
        self.results: list[Result] = []
        ctx = multiprocessing.get_context("spawn")
        self._be_results: Any = ctx.Queue()
        self._stop = ctx.Event()
        self._process = ctx.Process(target=best_effort_process, args=(url, self._be_results, self._stop), daemon=True)

    def start_best_effort(self) -> None:
        self._process.start()

    def stop_best_effort(self) -> None:
        if self._process.pid is None:
            return
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:  # let the child's queue feeder finish
                self._be_results.get(timeout=0.2)
        self._process.join(15)
        if self._process.is_alive():
            self._process.kill()
        self._process.join()

    async def safety_paced(self, count: int, interval_s: float = 0.02) -> None:
        for _ in range(count):
            self.results.append(await post(self.session, self.safety_url, "collision", self.safety))
            await asyncio.sleep(interval_s)

    def take(self) -> list[Result]:
        """Every answer so far: the child's arrive in order of completion, so read up to one from now on."""
        taken, self.results = self.results, []
        now = time.monotonic()
        with contextlib.suppress(queue.Empty):
            while self._process.pid is not None and not self._stop.is_set():
                result = self._be_results.get(timeout=1.0)
                taken.append(result)
                if result[6] >= now:
                    break
        return taken


def p99(latencies: list[float]) -> float:
    return float(np.percentile(latencies, 99))


async def metric(session: aiohttp.ClientSession, url: str, pattern: str) -> float:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_overload_offloads_best_effort_keeps_safety_local_and_survives_the_pool_dying(
    rig: dict[str, Any], reference: Reference
) -> None:
    url = rig["agent"].url
    connector = aiohttp.TCPConnector(limit=4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        load = Load(session, url, rig["cell"])
        try:
            # Baseline: safety alone.
            await load.safety_paced(SAFETY_SAMPLES)
            baseline = [r[3] for r in load.take()]
            assert len(baseline) == SAFETY_SAMPLES
            base_p99 = p99(baseline)

            # Overload: best-effort clients saturate the device; overflow must go to the pool.
            load.start_best_effort()
            await asyncio.sleep(1.5)  # the child starts (spawn) and fills the local queue
            load.take()
            await load.safety_paced(SAFETY_SAMPLES)
            phase = load.take()
            be = [r for r in phase if r[0] == "shelf"]
            safety = [r for r in phase if r[0] == "collision"]
            assert {r[1] for r in safety} == {200} and {r[2] for r in safety} == {"local"}  # never offloaded
            cloud = [r for r in be if r[1] == 200 and r[2] == "cloud"]
            assert cloud, f"no best-effort request was offloaded: {sorted({(r[1], r[2]) for r in be})}"
            assert any(r[2] == "local" for r in be if r[1] == 200)
            header, arrays = decode_response(cloud[0][4], int(cloud[0][5] or 0))
            assert header["parameters"]["edgefleet_route"] == "cloud"
            np.testing.assert_array_equal(arrays["scores"], reference("tiny-cnn", sample("tiny-cnn", 8, seed=1)))
            overload_p99 = p99([r[3] for r in safety])

            # The pool dies: the breaker opens, best effort gets fast 503s, safety is unaffected.
            rig["pool"].proc.kill()
            rig["pool"].stop()
            await asyncio.sleep(1.0)
            dead_from = time.monotonic()
            load.take()
            await load.safety_paced(SAFETY_SAMPLES)
            phase = load.take()
            phase = [r for r in phase if r[6] >= dead_from]  # answers still in transit from before
            assert await metric(session, url, r'^edgefleet_pool_breaker_state\{pool="pool-a"\} (\S+)$') == 2.0
            be = [r for r in phase if r[0] == "shelf"]
            safety = [r for r in phase if r[0] == "collision"]
            assert {r[1] for r in safety} == {200} and {r[2] for r in safety} == {"local"}
            assert not [r for r in be if r[2] == "cloud"]
            # Those that cannot make it are shed at intake (before their body is read) or rejected at admission,
            # at once; others may still expire in the queue when the estimate was optimistic (503 at their
            # deadline, never run).
            rejected = [r[3] for r in be if r[1] == 503 and b"cannot be met" in r[4]]
            assert rejected and {r[1] for r in be} <= {200, 503}
            assert float(np.median(rejected)) < BE_DEADLINE_S * 0.8, rejected
            dead_p99 = p99([r[3] for r in safety])
            # Safety is measured from this process, the best-effort load runs in another one; the agent, the pool
            # and the load still share 2 cores, and HTTP intake is one event loop, so safety pays for a few
            # best-effort bodies in the loop ahead of it (measured here: p99 4-20 ms alone, 20-65 ms under this
            # load). Inference itself never queues behind best effort (the dedicated safety lane).
            for value in (overload_p99, dead_p99):
                assert value < max(10 * base_p99, base_p99 + 0.075), (base_p99, overload_p99, dead_p99)

            # The pool returns on the same port: half-open probe, closed, traffic flows to it again.
            rig["pool"] = start_pool(rig["pool_port"])
            end = time.monotonic() + 15
            while time.monotonic() < end:
                await asyncio.sleep(0.3)
                if [r for r in load.take() if r[0] == "shelf" and r[2] == "cloud"]:
                    break
            else:
                pytest.fail("no best-effort request reached the restarted pool")
        finally:
            load.stop_best_effort()
        assert await metric(session, url, r'^edgefleet_pool_breaker_state\{pool="pool-a"\} (\S+)$') == 0.0
        safety_cloud = r'^edgefleet_routes_total\{model="collision",route="cloud"\} (\S+)$'
        assert (
            await metric(session, rig["cell"], r'^edgefleet_routes_total\{model="collision",route="local"\} (\S+)$') > 0
        )
        assert await metric(session, rig["cell"], safety_cloud) == 0.0
