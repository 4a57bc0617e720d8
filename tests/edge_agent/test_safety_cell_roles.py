"""How one config splits into the safety cell's and the main process's, and the cell's GPU stream priority."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.cell.priority import SPIN_FREE_ENV, child_env
from edge_agent.cell.roles import cell_config, has_cell, main_config, safety_names
from edge_agent.config import AgentConfig
from models.runtimes.tensorrt import create_stream


def _config(**extra: Any) -> AgentConfig:
    values: dict[str, Any] = {
        "state_dir": Path("/tmp/s"),
        "pipelines": [
            {"name": "collision", "model": "tiny-cnn", "priority": "safety", "deadline_ms": 50},
            {"name": "shelf", "model": "tiny-cnn", "priority": "best_effort", "deadline_ms": 500},
        ],
        "safety_cell": {"port": 9001},
        "fleet": {},
    }
    values.update(extra)
    return AgentConfig.model_validate(values)


def test_the_cell_gets_the_safety_pipelines_and_no_fleet_the_main_process_the_rest() -> None:
    config = _config()
    assert has_cell(config) and safety_names(config) == {"collision"}
    cell = cell_config(config)
    assert [p.name for p in cell.pipelines] == ["collision"]
    assert cell.fleet is None and cell.pools == [] and not cell.expose_models and cell.model_dirs == []
    assert cell.http.port == 9001
    main = main_config(config)
    assert [p.name for p in main.pipelines] == ["shelf"] and main.fleet is not None


@pytest.mark.parametrize(
    ("extra", "cell"),
    [
        ({"safety_cell": {"enabled": False}}, False),
        ({"pipelines": [{"name": "a", "model": "m", "priority": "standard", "deadline_ms": 5}]}, False),
        ({"standalone": True, "state_dir": None}, False),
        ({}, True),
    ],
)
def test_one_process_without_safety_pipelines_standalone_or_disabled(extra: dict[str, Any], cell: bool) -> None:
    assert has_cell(_config(**extra)) is cell


def test_the_cell_port_must_differ_from_the_main_port() -> None:
    with pytest.raises(ValueError, match="port of its own"):
        _config(http={"port": 9001})


@pytest.mark.parametrize("backend", ["tensorrt", "torch"])
def test_the_cell_runs_gpu_backends_on_a_high_priority_stream(backend: str) -> None:
    assert cell_config(_config(runtime={"type": backend})).runtime.stream_priority == "high"  # type: ignore[union-attr]
    assert main_config(_config(runtime={"type": backend})).runtime.stream_priority == "normal"  # type: ignore[union-attr]


class _Cudart:
    """cuda-python's cudart at the GPU boundary: records the stream calls (no GPU on this machine)."""

    class cudaError_t:
        cudaSuccess = 0

    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def cudaStreamCreate(self) -> tuple[int, str]:
        self.calls.append(("create",))
        return 0, "stream"

    def cudaDeviceGetStreamPriorityRange(self) -> tuple[int, int, int]:
        return 0, 0, -5  # (err, least, greatest): lower is higher, as CUDA documents

    def cudaStreamCreateWithPriority(self, flags: int, priority: int) -> tuple[int, str]:
        self.calls.append(("with_priority", flags, priority))
        return 0, "high-stream"


def test_high_stream_priority_uses_the_devices_greatest_priority() -> None:
    cudart = _Cudart()
    assert create_stream(cudart, "high") == "high-stream"
    assert create_stream(cudart, "normal") == "stream"
    assert cudart.calls == [("with_priority", 1, -5), ("create",)]


def test_the_cells_onnxruntime_threads_never_spin_and_its_children_start_spin_free() -> None:
    assert cell_config(_config(runtime={"type": "onnxruntime"})).runtime.allow_spinning is False  # type: ignore[union-attr]
    assert main_config(_config(runtime={"type": "onnxruntime"})).runtime.allow_spinning is True  # type: ignore[union-attr]
    # The cell always gets the spin-free settings; the main process keeps an operator's own choice.
    operator = {"OPENBLAS_NUM_THREADS": "4", "PATH": "/bin"}
    assert child_env("cell", operator) == {**operator, **SPIN_FREE_ENV}
    assert child_env("main", operator)["OPENBLAS_NUM_THREADS"] == "4"
    assert child_env("main", {})["OMP_WAIT_POLICY"] == "PASSIVE"
