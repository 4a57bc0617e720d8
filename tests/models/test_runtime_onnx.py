"""OnnxRuntime against a small ONNX model built in the test."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.errors import InputError, RuntimeFailure
from models.runtimes.config import OnnxRuntimeConfig
from models.runtimes.onnx import OnnxRuntime, provider_options, select_providers
from protocols.manifest import Manifest


def write_mlp_package(root: Path, *, max_batch_size: int = 8, seed: int = 0) -> Manifest:
    """Write a two-layer MLP (x[-1,4] FP32 -> y[-1,3], z[-1,3]) and its manifest under `root`."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("MatMul", ["hr", "w2"], ["y"]),
        helper.make_node("Sigmoid", ["y"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(data)
    manifest = Manifest.model_validate(
        {
            "name": "mlp",
            "version": "1",
            "format": "onnx",
            "model_file": "model.onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [
                {"name": "z", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
            ],
            "max_batch_size": max_batch_size,
            "files": [{"path": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}],
        }
    )
    (root / "manifest.json").write_text(manifest.model_dump_json())
    return manifest


@pytest.fixture
def package(tmp_path: Path) -> tuple[Path, Manifest]:
    return tmp_path, write_mlp_package(tmp_path)


def _reference(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y, z = sess.run(["y", "z"], {"x": x})
    return {"y": y, "z": z}


async def test_runs_and_matches_plain_session(package: tuple[Path, Manifest]) -> None:
    root, manifest = package
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    async with OnnxRuntime(root, manifest) as rt:
        out = await rt.infer({"x": x})
        assert list(out) == ["z", "y"]  # manifest order
        ref = _reference(root / "model.onnx", x)
        np.testing.assert_array_equal(out["y"], ref["y"])
        np.testing.assert_array_equal(out["z"], ref["z"])
        assert rt.run({"x": x[:1]})["y"].shape == (1, 3)


async def test_info_reports_actual_provider(package: tuple[Path, Manifest], caplog: pytest.LogCaptureFixture) -> None:
    root, manifest = package
    caplog.set_level(logging.INFO, logger="models.runtimes.onnx")
    rt = OnnxRuntime(root, manifest, OnnxRuntimeConfig(providers=("cuda", "cpu")))
    assert rt.info.provider == "not loaded"
    await rt.load()
    try:
        # No GPU here: whatever was requested, CPU is what runs, and that is what we report.
        assert rt.info.provider == "CPUExecutionProvider"
        assert rt.info.detail["onnxruntime_version"] == ort.__version__
        assert rt.info.detail["requested_providers"] == "cuda,cpu"
        assert "runs on CPUExecutionProvider" in caplog.text
    finally:
        await rt.unload()
    await rt.unload()  # idempotent


def test_select_providers_orders_and_falls_back_to_cpu() -> None:
    cfg = OnnxRuntimeConfig(providers=("tensorrt", "cuda"), trt_fp16=True, trt_engine_cache_dir=Path("/c"))
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    chosen = select_providers(cfg, available)
    assert [n for n, _ in chosen] == available
    assert chosen[0][1]["trt_fp16_enable"] == "True"
    assert chosen[0][1]["trt_engine_cache_enable"] == "True"
    assert chosen[0][1]["trt_engine_cache_path"] == "/c"
    assert "trt_timing_cache_enable" not in chosen[0][1]
    assert chosen[1][1] == {"device_id": "0"}
    assert [n for n, _ in select_providers(cfg, ["CPUExecutionProvider"])] == ["CPUExecutionProvider"]
    assert [n for n, _ in select_providers(OnnxRuntimeConfig(providers=("cpu", "cuda")), available)] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_provider_options_timing_cache() -> None:
    cfg = OnnxRuntimeConfig(trt_timing_cache_dir=Path("/t"), device_id=1)
    opts = provider_options("tensorrt", cfg)
    assert opts["trt_timing_cache_enable"] == "True"
    assert opts["trt_timing_cache_path"] == "/t"
    assert opts["device_id"] == "1"
    assert provider_options("cpu", cfg) == {}


async def test_input_errors(package: tuple[Path, Manifest]) -> None:
    root, manifest = package
    async with OnnxRuntime(root, manifest) as rt:
        with pytest.raises(InputError, match="dtype"):
            rt.run({"x": np.zeros((1, 4), np.float64)})
        with pytest.raises(InputError, match="missing input 'x'"):
            rt.run({"w": np.zeros((1, 4), np.float32)})
        with pytest.raises(InputError, match="shape"):
            rt.run({"x": np.zeros((1, 5), np.float32)})
        with pytest.raises(InputError, match="shape"):
            rt.run({"x": np.zeros((4,), np.float32)})
        with pytest.raises(InputError, match="exceeds max_batch_size"):
            rt.run({"x": np.zeros((9, 4), np.float32)})
        with pytest.raises(InputError, match="unknown inputs"):
            rt.run({"x": np.zeros((1, 4), np.float32), "extra": np.zeros(1)})


async def test_ort_error_is_wrapped(package: tuple[Path, Manifest]) -> None:
    root, manifest = package
    async with OnnxRuntime(root, manifest) as rt:
        # Non-contiguous float32 is fine; an empty batch is valid too. Force ORT itself to fail instead.
        rt._output_names = ["nope"]
        with pytest.raises(RuntimeFailure) as info:
            rt.run({"x": np.zeros((1, 4), np.float32)})
        assert info.value.__cause__ is not None


async def test_run_before_load_fails(package: tuple[Path, Manifest]) -> None:
    root, manifest = package
    with pytest.raises(RuntimeFailure, match="not loaded"):
        OnnxRuntime(root, manifest).run({"x": np.zeros((1, 4), np.float32)})


async def test_manifest_mismatch_fails_at_load(tmp_path: Path) -> None:
    manifest = write_mlp_package(tmp_path)
    bad = manifest.model_copy(
        update={"outputs": (manifest.outputs[0].model_copy(update={"name": "other"}), manifest.outputs[1])}
    )
    with pytest.raises(RuntimeFailure, match="'other' is not a model output"):
        await OnnxRuntime(tmp_path, bad).load()
    bad_type = manifest.model_copy(update={"inputs": (manifest.inputs[0].model_copy(update={"datatype": "FP16"}),)})
    with pytest.raises(RuntimeFailure, match="manifest says FP16"):
        await OnnxRuntime(tmp_path, bad_type).load()


async def test_corrupt_model_fails_at_load(tmp_path: Path) -> None:
    manifest = write_mlp_package(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(RuntimeFailure, match="could not load") as info:
        await OnnxRuntime(tmp_path, manifest).load()
    assert info.value.__cause__ is not None


async def test_wrong_format_rejected(tmp_path: Path) -> None:
    manifest = write_mlp_package(tmp_path).model_copy(update={"format": "torchscript"})
    with pytest.raises(RuntimeFailure, match="cannot run format"):
        await OnnxRuntime(tmp_path, manifest).load()


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        OnnxRuntimeConfig.model_validate({"type": "onnxruntime", "provider": ["cpu"]})
    with pytest.raises(ValueError):
        OnnxRuntimeConfig.model_validate({"providers": ["rocm"]})


# --- factory ------------------------------------------------------------------------------------


async def test_factory_defaults_to_onnxruntime(package: tuple[Path, Manifest]) -> None:
    from models.runtimes.factory import create_runtime

    root, manifest = package
    rt = create_runtime(root, manifest, None)
    assert isinstance(rt, OnnxRuntime)
    async with rt:
        assert rt.info.backend == "onnxruntime"


def test_factory_rejects_mismatched_backend(package: tuple[Path, Manifest]) -> None:
    from models.runtimes.config import TorchConfig
    from models.runtimes.factory import create_runtime

    root, manifest = package
    with pytest.raises(RuntimeFailure, match="backend torch cannot run a onnx model"):
        create_runtime(root, manifest, TorchConfig())


def test_factory_import_is_light_and_backends_reported() -> None:
    import subprocess
    import sys

    code = (
        "import sys, models.runtimes.factory as f; "
        "heavy = [m for m in ('onnxruntime', 'torch', 'tensorrt') if m in sys.modules]; "
        "assert not heavy, heavy; "
        "r = {b.backend: b for b in f.available_backends()}; "
        "assert r['onnxruntime'].installed and r['onnxruntime'].version; "
        "assert not [m for m in ('onnxruntime', 'torch', 'tensorrt') if m in sys.modules]"
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root)})


def test_runtime_config_union_discriminates() -> None:
    from pydantic import TypeAdapter

    from models.runtimes.config import RuntimeConfig, TensorRTConfig, TorchConfig

    adapter: TypeAdapter[RuntimeConfig] = TypeAdapter(RuntimeConfig)
    assert isinstance(adapter.validate_python({"type": "tensorrt"}), TensorRTConfig)
    assert isinstance(adapter.validate_python({"type": "torch", "device": "cuda:0"}), TorchConfig)
    assert isinstance(adapter.validate_python({"type": "onnxruntime"}), OnnxRuntimeConfig)
    with pytest.raises(ValueError):
        adapter.validate_python({"type": "openvino"})
