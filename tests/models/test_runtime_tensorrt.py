"""TensorRT backend: pure helpers here; real engine builds only where TensorRT exists."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.errors import InputError, RuntimeFailure, RuntimeUnavailable
from models.runtimes.config import TensorRTConfig
from models.runtimes.tensorrt import (
    TensorRTRuntime,
    engine_cache_path,
    engine_file_name,
    profile_shapes,
    trt_major,
    write_atomic,
)
from protocols.manifest import Manifest

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(
    not HAVE_TRT, reason="tensorrt not installed (only runs where TensorRT exists, e.g. Jetson/JetPack)"
)
SHA = "ab" * 32


def write_cnn_package(root: Path, *, max_batch_size: int = 4) -> Manifest:
    """A Conv-Relu-GlobalAveragePool-Gemm model: x[-1,3,16,16] FP32 -> logits[-1,5]."""
    rng = np.random.default_rng(7)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "cw"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "cb"),
        numpy_helper.from_array(rng.standard_normal((8, 5)).astype(np.float32), "fw"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(data)
    return Manifest.model_validate(
        {
            "name": "cnn",
            "version": "1",
            "format": "onnx",
            "model_file": "model.onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 16, 16]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 5]}],
            "max_batch_size": max_batch_size,
            "files": [{"path": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}],
        }
    )


# --- helpers: run everywhere -----------------------------------------------------------------------


def test_engine_file_name() -> None:
    assert engine_file_name(SHA, "10.3.0", "8.7", "fp16") == "abababababababab-trt10.3.0-sm87-fp16.plan"
    assert engine_file_name(SHA, "8.6.2", "7.2", "int8") == "abababababababab-trt8.6.2-sm72-int8.plan"
    with pytest.raises(ValueError, match="compute capability"):
        engine_file_name(SHA, "10.3.0", "sm_87", "fp16")
    with pytest.raises(ValueError, match="TensorRT version"):
        engine_file_name(SHA, "../10", "8.7", "fp16")


def test_engine_cache_path_uses_model_file_sha(tmp_path: Path) -> None:
    manifest = write_cnn_package(tmp_path / "pkg")
    sha = manifest.file("model.onnx").sha256
    path = engine_cache_path(tmp_path / "cache", manifest, "10.3.0", "8.7", "fp32")
    assert path == tmp_path / "cache" / f"{sha[:16]}-trt10.3.0-sm87-fp32.plan"
    # Every part of the key changes the file.
    others = {
        engine_cache_path(tmp_path, manifest, "10.4.0", "8.7", "fp32").name,
        engine_cache_path(tmp_path, manifest, "10.3.0", "8.6", "fp32").name,
        engine_cache_path(tmp_path, manifest, "10.3.0", "8.7", "fp16").name,
    }
    assert len(others) == 3 and path.name not in others


def test_profile_shapes_dynamic_batch(tmp_path: Path) -> None:
    manifest = write_cnn_package(tmp_path, max_batch_size=8)
    assert profile_shapes(manifest) == {"x": ((1, 3, 16, 16), (8, 3, 16, 16), (8, 3, 16, 16))}
    assert profile_shapes(manifest, max_batch=4, opt_batch=2) == {"x": ((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16))}
    # opt is clamped to max.
    assert profile_shapes(manifest, max_batch=4, opt_batch=16)["x"][1] == (4, 3, 16, 16)


def test_profile_shapes_static_and_invalid(tmp_path: Path) -> None:
    manifest = write_cnn_package(tmp_path)
    static = manifest.model_copy(
        update={
            "max_batch_size": 0,
            "inputs": (manifest.inputs[0].model_copy(update={"shape": (1, 3, 16, 16)}),),
        }
    )
    assert profile_shapes(static) == {}
    dyn = manifest.model_copy(update={"inputs": (manifest.inputs[0].model_copy(update={"shape": (-1, 3, -1, -1)}),)})
    with pytest.raises(RuntimeFailure, match="dynamic non-batch dimension"):
        profile_shapes(dyn)


def test_write_atomic(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "e.plan"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["e.plan"]  # no temp files left


def test_trt_major() -> None:
    assert trt_major("10.3.0") == 10
    assert trt_major("8.6.2.3") == 8


def test_config_validation() -> None:
    cfg = TensorRTConfig.model_validate({"type": "tensorrt", "precision": "int8", "workspace_mb": 512})
    assert cfg.precision == "int8"
    with pytest.raises(ValueError):
        TensorRTConfig.model_validate({"type": "tensorrt", "precision": "fp8"})
    with pytest.raises(ValueError):
        TensorRTConfig.model_validate({"type": "tensorrt", "workspace": 1})


@pytest.mark.skipif(HAVE_TRT, reason="checks the message shown where tensorrt is absent")
async def test_load_without_tensorrt_is_unavailable(tmp_path: Path) -> None:
    manifest = write_cnn_package(tmp_path)
    rt = TensorRTRuntime(tmp_path, manifest, TensorRTConfig(engine_cache_dir=tmp_path / "cache"))
    with pytest.raises(RuntimeUnavailable, match="tensorrt is not installed"):
        await rt.load()
    assert rt.info.provider == "not loaded"
    with pytest.raises(RuntimeFailure, match="not loaded"):
        rt.run({"x": np.zeros((1, 3, 16, 16), np.float32)})
    await rt.unload()


# --- real engines: only where TensorRT (and a CUDA GPU) exists -------------------------------------


def _ort_reference(root: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(["logits"], {"x": x})[0]
    return out


@needs_trt
@pytest.mark.tensorrt
@pytest.mark.cuda
@pytest.mark.parametrize(("precision", "rtol", "atol"), [("fp32", 1e-3, 1e-4), ("fp16", 2e-2, 2e-2)])
async def test_engine_matches_onnxruntime(tmp_path: Path, precision: str, rtol: float, atol: float) -> None:
    manifest = write_cnn_package(tmp_path / "pkg", max_batch_size=4)
    cfg = TensorRTConfig(precision=precision, engine_cache_dir=tmp_path / "cache", workspace_mb=256)  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    async with TensorRTRuntime(tmp_path / "pkg", manifest, cfg) as rt:
        assert rt.info.backend == "tensorrt"
        assert rt.info.detail["engine_source"] == "built"
        for batch in (1, 3, 4):
            x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
            out = await rt.infer({"x": x})
            np.testing.assert_allclose(out["logits"], _ort_reference(tmp_path / "pkg", x), rtol=rtol, atol=atol)
        with pytest.raises(InputError):
            rt.run({"x": np.zeros((5, 3, 16, 16), np.float32)})


@needs_trt
@pytest.mark.tensorrt
@pytest.mark.cuda
async def test_engine_cache_and_timing_cache_are_reused(tmp_path: Path) -> None:
    manifest = write_cnn_package(tmp_path / "pkg")
    cfg = TensorRTConfig(precision="fp32", engine_cache_dir=tmp_path / "cache", timing_cache=tmp_path / "timing.cache")
    async with TensorRTRuntime(tmp_path / "pkg", manifest, cfg) as rt:
        engine = Path(rt.info.detail["engine"])
    assert engine.is_file() and engine.parent == tmp_path / "cache"
    assert (tmp_path / "timing.cache").stat().st_size > 0
    async with TensorRTRuntime(tmp_path / "pkg", manifest, cfg) as rt:
        assert rt.info.detail["engine_source"] == "cache"
    # A corrupt cached engine is rebuilt, not fatal.
    engine.write_bytes(b"garbage")
    async with TensorRTRuntime(tmp_path / "pkg", manifest, cfg) as rt:
        assert rt.info.detail["engine_source"] == "built"
        x = np.ones((2, 3, 16, 16), np.float32)
        np.testing.assert_allclose(
            rt.run({"x": x})["logits"], _ort_reference(tmp_path / "pkg", x), rtol=1e-3, atol=1e-4
        )


async def test_background_build_logs_progress(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging
    import time

    from models.runtimes.tensorrt import _await_with_progress

    caplog.set_level(logging.INFO, logger="models.runtimes.tensorrt")

    def slow_build() -> bytes:
        time.sleep(0.25)
        return b"engine"

    fut = asyncio.get_running_loop().run_in_executor(None, slow_build)
    assert await _await_with_progress(fut, "m:1", 0.05) == b"engine"
    assert "still building TensorRT engine for m:1" in caplog.text
