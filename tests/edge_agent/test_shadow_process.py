"""Shadow mode in a real `edge-agent serve` process: the same inputs on a pipeline without a shadow and on one
whose tiny-cnn v1 shadows 10 % of the requests give identical responses; the serving p99 of both is
measured in alternating blocks and printed (not asserted: the machine is shared)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import aiohttp
import numpy as np
import pytest
from agent_support import AgentProcess, start_agent

from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE

pytestmark = pytest.mark.slow

BLOCKS = 4
PER_BLOCK = 250
CONCURRENCY = 1  # closed loop, one client: the device is idle between requests, so shadows run


@pytest.fixture(scope="module")
def shadow_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    path = tmp_path_factory.mktemp("shadow") / "agent.toml"
    path.write_text(
        f"""
standalone = true
model_dirs = ["{PACKAGES_DIR}"]
trusted_keys = ["{ZOO_PUBLIC_KEY_FILE}"]

[http]
port = 0

[runtime]
type = "onnxruntime"
intra_op_threads = 1
inter_op_threads = 1

[[pipelines]]
name = "plain"
model = "tiny-cnn"
version = "2"

[[pipelines]]
name = "shadowed"
model = "tiny-cnn"
version = "2"
shadow_version = "1"
shadow_share = 0.1
shadow_compare = "max_abs_diff"
"""
    )
    agent = start_agent(["serve", "--config", str(path)])
    yield agent
    assert agent.stop() == 0, "".join(agent.output)


def _bodies() -> list[tuple[bytes, str]]:
    rng = np.random.default_rng(11)
    out = []
    for _ in range(64):
        pixels = rng.standard_normal((1, 3, 64, 64)).astype(np.float32).tobytes()
        head = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32",
                         "parameters": {"binary_data_size": len(pixels)}}]}
        ).encode()  # fmt: skip
        out.append((head + pixels, str(len(head))))
    return out


async def _block(url: str, pipeline: str, bodies: list[tuple[bytes, str]]) -> tuple[list[float], dict[int, str]]:
    """PER_BLOCK requests by CONCURRENCY closed-loop clients: latencies, and body index -> outputs seen."""
    latencies: list[float] = []
    answers: dict[int, str] = {}
    todo = list(range(PER_BLOCK))

    async def worker(session: aiohttp.ClientSession) -> None:
        while todo:
            i = todo.pop()
            body, length = bodies[i % len(bodies)]
            start = time.perf_counter()
            headers = {"Inference-Header-Content-Length": length}
            async with session.post(f"{url}/v2/models/{pipeline}/infer", data=body, headers=headers) as resp:
                payload = await resp.json()
            latencies.append(time.perf_counter() - start)
            assert resp.status == 200 and payload["model_version"] == "2", payload
            answers[i % len(bodies)] = json.dumps(payload["outputs"])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
    return latencies, answers


async def test_shadow_never_changes_a_response_p99_measured(shadow_agent: AgentProcess) -> None:
    bodies = _bodies()
    await _block(shadow_agent.url, "plain", bodies)  # warm-up
    lat: dict[str, list[float]] = {"plain": [], "shadowed": []}
    seen: dict[str, dict[int, str]] = {"plain": {}, "shadowed": {}}
    for _ in range(BLOCKS):
        for pipeline in ("plain", "shadowed"):
            latencies, answers = await _block(shadow_agent.url, pipeline, bodies)
            lat[pipeline] += latencies
            seen[pipeline].update(answers)
    assert seen["plain"] == seen["shadowed"]  # byte-identical outputs for every input
    p99 = {k: float(np.percentile(v, 99)) * 1000 for k, v in lat.items()}
    p50 = {k: float(np.percentile(v, 50)) * 1000 for k, v in lat.items()}
    with open("/proc/loadavg") as f:
        load = f.read().strip()
    print(
        f"shadow p99: plain {p99['plain']:.2f} ms, shadowed (10 %) {p99['shadowed']:.2f} ms "
        f"({(p99['shadowed'] / p99['plain'] - 1) * 100:+.1f} %); p50 {p50['plain']:.2f} / {p50['shadowed']:.2f} ms; "
        f"{BLOCKS * PER_BLOCK} requests each, {CONCURRENCY} clients; loadavg {load}"
    )
