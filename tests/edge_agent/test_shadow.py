"""Shadow mode through the agent's HTTP app (real scheduler, real onnxruntime): the shadow never changes a
response, a self-shadow agrees everywhere, the zoo's tiny-cnn v1 shadowing v2 is told apart, and the
agreement statistics land in the pipeline's load (telemetry)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from agent_support import standalone_config
from pydantic import ValidationError

from edge_agent.app import Agent
from edge_agent.serving.shadow import agreement
from models.zoo import zoo_package_path
from protocols.pipeline import PipelineSpec

REQUESTS = 100
SHARE = 0.2


def test_agreement_metric() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], dtype=np.float32)
    assert agreement({"s": scores}, {"s": scores + 0.05}, 1e-3) == (True, pytest.approx(0.05, abs=1e-6))
    assert agreement({"s": scores}, {"s": scores[:, ::-1]}, 1.0)[0] is False  # top-1 differs
    assert agreement({"s": scores}, {"s": scores + 0.05}, 1e-3, "max_abs_diff")[0] is False
    assert agreement({"s": scores}, {"s": scores + 0.05}, 0.1, "max_abs_diff")[0] is True
    values = np.array([1.0, 2.0], dtype=np.float32)  # not a classifier: the tolerance decides
    assert agreement({"v": values}, {"v": values + 1e-4}, 1e-3)[0] is True
    assert agreement({"v": values}, {"v": values + 1e-2}, 1e-3)[0] is False
    assert agreement({"v": values}, {"v": np.zeros(3, dtype=np.float32)}, 1.0)[0] is False  # shape differs
    text = np.array([b"a", b"b"], dtype=object)
    assert agreement({"t": text}, {"t": text.copy()}, 0.0)[0] is True
    assert agreement({"t": text}, {"t": text[::-1]}, 0.0)[0] is False


def test_safety_shadow_needs_the_operators_flag() -> None:
    with pytest.raises(ValidationError, match="allow_safety_split"):
        PipelineSpec(name="p", model="m", priority="safety", shadow_version="1", shadow_share=0.1)
    with pytest.raises(ValidationError, match="needs a shadow_version"):
        PipelineSpec(name="p", model="m", shadow_share=0.1)


def _pipelines() -> list[dict[str, Any]]:
    common = {"model": "tiny-cnn", "version": "2", "shadow_share": SHARE}
    return [
        {"name": "v1-shadow", "shadow_version": "1", "shadow_compare": "max_abs_diff", **common},
        {"name": "self-shadow", "shadow_version": "2", **common},
    ]


async def test_shadow_never_changes_a_response_and_reports_agreement(aiohttp_client: Any) -> None:
    agent = Agent(standalone_config(pipelines=_pipelines()))
    client = await aiohttp_client(agent.http)
    await agent.startup
    session = ort.InferenceSession(
        str(zoo_package_path("tiny-cnn", "2") / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(5)
    for name in ("v1-shadow", "self-shadow"):
        for _ in range(REQUESTS):
            x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
            body = {
                "inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": x.ravel().tolist()}]
            }
            resp = await client.post(f"/v2/models/{name}/infer", json=body)
            payload = await resp.json()
            assert resp.status == 200, payload
            assert payload["model_version"] == "2"
            expected = session.run(None, {"input": x})[0]
            got = np.asarray(payload["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # the served answer, unchanged
    await agent.core.scheduler.drain()  # let the last shadow runs finish
    loads = {load.name: load for load in agent.core.stats.snapshot(1.0)}
    for name in ("v1-shadow", "self-shadow"):
        shadow = loads[name].shadow
        assert shadow is not None
        print(f"{name}: {shadow.model_dump()}")
        assert abs(shadow.sampled - SHARE * REQUESTS) <= 2
        assert shadow.compared + shadow.dropped + shadow.failed == shadow.sampled
        assert shadow.compared >= shadow.sampled // 2  # sequential requests: the device is idle
    self_shadow, v1 = loads["self-shadow"].shadow, loads["v1-shadow"].shadow
    assert self_shadow is not None and v1 is not None
    assert self_shadow.agreed == self_shadow.compared and (self_shadow.max_abs_diff or 0.0) < 1e-5
    assert (v1.max_abs_diff or 0.0) > 1e-3  # a different model: its scores differ
    assert v1.agreed < v1.compared  # and max_abs_diff at the default tolerance (1e-3) says so
