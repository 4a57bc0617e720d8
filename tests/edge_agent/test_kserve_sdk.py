"""KServe's real Python SDK (kserve 0.21.0 `InferenceRESTClient`, in its own venv) against a real agent.

`make setup` builds `.venv-kserve` with the pinned SDK; without it these tests are skipped, saying so. The calls
are the SDK's own (tests/edge_agent/kserve_sdk/client.py runs in that venv); the answers are compared here with
onnxruntime run directly on the same model.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from agent_support import AgentProcess, Reference, sample

ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
CLIENT = Path(__file__).parent / "kserve_sdk" / "client.py"

pytestmark = pytest.mark.skipif(
    not KSERVE_PYTHON.exists(), reason="no .venv-kserve (run `make setup`: it installs kserve==0.21.0 there)"
)


def _run_sdk(agent: AgentProcess, model: str, input_name: str, array: np.ndarray, tmp_path: Path) -> dict[str, object]:
    np.save(tmp_path / "input.npy", array)
    argv = [str(KSERVE_PYTHON), str(CLIENT), agent.url, model, input_name, str(tmp_path / "input.npy"), str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result: dict[str, object] = json.loads((tmp_path / "result.json").read_text())
    return result


def test_kserve_sdk_health_and_infer_json_and_binary(agent: AgentProcess, reference: Reference, tmp_path: Path) -> None:
    batch = sample("tiny-mlp", 3, seed=11)
    result = _run_sdk(agent, "tiny-mlp", "input", batch, tmp_path)
    assert result["server_live"] is True and result["server_ready"] is True and result["model_ready"] is True
    expected = reference("tiny-mlp", batch)
    for encoding in ("json", "binary"):
        assert result[f"{encoding}_id"] == f"kserve-{encoding}"
        assert result[f"{encoding}_model"] == "tiny-mlp"
        assert result[f"{encoding}_outputs"] == ["logits"]
        got = np.load(tmp_path / f"logits-{encoding}.npy")
        np.testing.assert_array_equal(got, expected)  # bit for bit: JSON floats round-trip FP32 exactly
    assert "Request for unknown model" in str(result["unknown_model_error"])
    assert "404" in str(result["unknown_model_error"])


def test_kserve_sdk_on_an_image_model(agent: AgentProcess, reference: Reference, tmp_path: Path) -> None:
    image = sample("tiny-cnn", 2, seed=12)
    result = _run_sdk(agent, "tiny-cnn", "input", image, tmp_path)
    assert result["model_ready"] is True
    for encoding in ("json", "binary"):
        np.testing.assert_array_equal(np.load(tmp_path / f"scores-{encoding}.npy"), reference("tiny-cnn", image))
