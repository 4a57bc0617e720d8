"""Issue 16, drift end to end: real mosquitto, `cloud-hub serve` (ingest), a provisioned `edge-agent serve`
reporting every second. Its tiny-cnn pipeline gets N(0, 1) inputs, then the same inputs + 3 sigma: the hub
flags drift within two scored reports of the shift, and never before it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from rollout_support import PIPELINE, Rig, until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DEVICE = "drift-1"
UNSHIFTED_REPORTS = 4


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    try:
        await r.start()
        yield r
    finally:
        r.stop()


def _bodies(shift: float) -> list[tuple[bytes, str]]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(32):
        pixels = (rng.standard_normal((1, 3, 64, 64)) + shift).astype(np.float32).tobytes()
        head = json.dumps(
            {"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32",
                         "parameters": {"binary_data_size": len(pixels)}}]}
        ).encode()  # fmt: skip
        out.append((head + pixels, str(len(head))))
    return out


async def _load(url: str, shift: list[float], stop: asyncio.Event, failures: list[str]) -> None:
    bodies = {0.0: _bodies(0.0), 3.0: _bodies(3.0)}
    n = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while not stop.is_set():
            body, length = bodies[shift[0]][n % 32]
            n += 1
            headers = {"Inference-Header-Content-Length": length}
            async with session.post(f"{url}/v2/models/{PIPELINE}/infer", data=body, headers=headers) as response:
                if response.status != 200:
                    failures.append(f"{response.status} {await response.text()}")
            await asyncio.sleep(0.01)


async def _row(rig: Rig) -> dict[str, Any] | None:
    rows = (await rig.api("GET", f"/api/v1/drift?device={DEVICE}"))["drift"]
    return next((r for r in rows if r["pipeline"] == PIPELINE), None)


async def test_shifted_inputs_flagged_at_the_hub_within_two_reports(rig: Rig) -> None:
    agent = await rig.add_agent(DEVICE, {})
    shift, stop, failures = [0.0], asyncio.Event(), []
    load = asyncio.create_task(_load(agent.url, shift, stop, failures))
    try:
        seen: list[dict[str, Any]] = []

        async def scored(n: int) -> bool:
            row = await _row(rig)
            if row is not None and row["reference"] == "window":
                seen.append(row)
                return bool(row["scored_reports"] >= n)
            return False

        await until(lambda: scored(UNSHIFTED_REPORTS), 60, "reference window and unshifted reports")
        unshifted = list({r["scored_reports"]: r["psi"] for r in seen if r["psi"] is not None}.values())
        assert not any(r["drifted"] for r in seen), seen[-1]
        before = seen[-1]["scored_reports"]
        shift[0] = 3.0
        started = time.monotonic()
        flagged: dict[str, Any] = {}

        async def drifted() -> bool:
            row = await _row(rig)
            if row is not None and row["drifted"]:
                flagged.update(row)
                return True
            return False

        await until(drifted, 30, "drift flagged")
        after = flagged["scored_reports"] - before
        print(
            f"drift e2e: unshifted PSI {[round(p, 4) for p in unshifted]}; +3 sigma flagged at scored report "
            f"{after} after the shift ({time.monotonic() - started:.1f} s, 1 s interval), PSI {flagged['psi']:.2f}"
        )
        assert after <= 2, flagged
        assert not failures, failures[:3]
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await load
