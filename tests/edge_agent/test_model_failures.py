"""A model that fails to load or warm up is reported not ready while the other models serve (real agent, HTTP)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from agent_support import start_agent
from rig.onnx_models import broken_onnx

from models.package import build_package
from models.signing import generate_keypair, save_public_key
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE
from protocols.manifest import TensorSpec


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _broken_models(root: Path) -> tuple[Path, Path]:
    """`warmup-fails` (loads, fails at its first run) and `load-fails` (not an ONNX graph), signed."""
    private, public = generate_keypair()
    key = root / "test.pub"
    save_public_key(public, key)
    models = root / "models"
    cnn_in = (TensorSpec(name="input", datatype="FP32", shape=(-1, 3, 64, 64)),)
    cnn_out = (TensorSpec(name="scores", datatype="FP32", shape=(-1, 4)),)
    broken_onnx(root / "broken.onnx")
    (root / "garbage.onnx").write_bytes(b"this is not an ONNX model")
    for name, graph in (("warmup-fails", "broken.onnx"), ("load-fails", "garbage.onnx")):
        build_package(
            root / graph,
            models / name / "1",
            name=name,
            version="1",
            inputs=cnn_in,
            outputs=cnn_out,
            max_batch_size=8,
            private_key=private,
        )
    return models, key


def test_failed_models_are_not_ready_and_the_rest_serve(tmp_path: Path) -> None:
    models, key = _broken_models(tmp_path)
    args = ["serve", "--standalone", "--port", "0", "--model-dir", str(PACKAGES_DIR), "--model-dir", str(models)]
    agent = start_agent([*args, "--trust", str(ZOO_PUBLIC_KEY_FILE), "--trust", str(key)])
    try:
        url = agent.url
        assert _get(f"{url}/v2/health/live") == (200, {"live": True})
        assert _get(f"{url}/v2/health/ready") == (400, {"ready": False})  # Triton's strict readiness
        for name in ("warmup-fails", "load-fails"):
            assert _get(f"{url}/v2/models/{name}/ready") == (400, {"name": name, "ready": False})
            status, body = _post(f"{url}/v2/models/{name}/infer", {"inputs": []})
            assert status == 503
            assert body == {"error": f"Request for unknown model: '{name}' has no available versions"}
        assert _get(f"{url}/v2/models/tiny-mlp/ready") == (200, {"name": "tiny-mlp", "ready": True})
        row = np.zeros(64, np.float32).tolist()
        tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": row}
        status, body = _post(f"{url}/v2/models/tiny-mlp/infer", {"inputs": [tensor]})
        assert status == 200 and body["outputs"][0]["shape"] == [1, 10]
        with urllib.request.urlopen(f"{url}/metrics") as resp:
            metrics = resp.read().decode()
        ready_lines = [line for line in metrics.splitlines() if line.startswith("edgefleet_model_ready{")]
        assert 'edgefleet_model_ready{name="warmup-fails",version="1"} 0.0' in ready_lines
        assert 'edgefleet_model_ready{name="tiny-mlp",version="1"} 1.0' in ready_lines
    finally:
        assert agent.stop() == 0, "".join(agent.output)
    output = "".join(agent.output)
    assert "model warmup-fails:1 failed to load or warm up" in output
    assert "model load-fails:1 failed to load or warm up" in output


async def test_failed_models_are_in_the_installed_list_telemetry_sends(tmp_path: Path, aiohttp_client: Any) -> None:
    from agent_support import standalone_config

    from edge_agent.app import Agent

    models, key = _broken_models(tmp_path)
    agent = Agent(standalone_config(model_dirs=[PACKAGES_DIR, models], trusted_keys=[ZOO_PUBLIC_KEY_FILE, key]))
    await aiohttp_client(agent.http)
    await agent.startup
    installed = {(m.name, m.version): m for m in agent._installed()}  # what LoadReport.models carries
    assert installed[("tiny-mlp", "1")].active and installed[("tiny-mlp", "1")].error is None
    broken = installed[("load-fails", "1")]
    assert not broken.active and broken.error is not None and "onnxruntime" in broken.error
    assert installed[("warmup-fails", "1")].error
