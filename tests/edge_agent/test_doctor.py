"""The doctor: hardware report plus a PASS/FAIL/SKIPPED table over a zoo built in the test."""

from __future__ import annotations

import hashlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.doctor import compare, default_zoo_dir, find_packages, make_batches, run_doctor
from protocols.manifest import Manifest

PROBE = Path(__file__).parent / "data" / "probe"


def _write_package(root: Path, *, output_name: str = "y", max_batch_size: int = 4) -> Path:
    """A one-layer ONNX model x[-1,4] -> y[-1,2] with its manifest, as `<root>/packages/lin/1/`."""
    pkg = root / "packages" / "lin" / "1"
    pkg.mkdir(parents=True)
    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(4, 2) / 8, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Tanh", ["m"], ["y"])],
        "lin",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    (pkg / "model.onnx").write_bytes(data)
    manifest = Manifest.model_validate(
        {
            "name": "lin",
            "version": "1",
            "format": "onnx",
            "model_file": "model.onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": output_name, "datatype": "FP32", "shape": [-1, 2]}],
            "max_batch_size": max_batch_size,
            "precision": ["fp32", "fp16"],
            "files": [{"path": "model.onnx", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}],
        }
    )
    (pkg / "manifest.json").write_text(manifest.model_dump_json())
    return pkg


async def test_passes_on_cpu_and_explains_skips(tmp_path: Path) -> None:
    _write_package(tmp_path)
    out = io.StringIO()
    rc = await run_doctor(tmp_path, out, probe_root=PROBE / "x86-cpu")
    text = out.getvalue()
    assert rc == 0, text
    assert "gpu load     n/a (source: unavailable)" in text
    assert "lin:1  onnxruntime/cpu (reference)  1      PASS" in text
    assert "lin:1  onnxruntime/cpu (reference)  4      PASS" in text
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt/fp32" in text and "SKIPPED (tensorrt not installed)" in text
        assert "tensorrt/fp16" in text
    assert "FAIL" not in text
    assert text.rstrip().endswith("0 failed, " + text.rstrip().rsplit("0 failed, ", 1)[1])


async def test_jetson_report_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    rc = await run_doctor(tmp_path / "empty-zoo", out, probe_root=PROBE / "jetson-orin-jp6")
    text = out.getvalue()
    assert rc == 0
    assert "NVIDIA Jetson AGX Orin Developer Kit (L4T 36.3.0, JetPack 6.0)" in text
    assert "43.7 % (source: /sys/devices/platform/gpu.0/load)" in text
    assert "no model packages under" in text


async def test_broken_package_fails(tmp_path: Path) -> None:
    _write_package(tmp_path, output_name="wrong")
    out = io.StringIO()
    rc = await run_doctor(tmp_path, out, probe_root=PROBE / "x86-cpu")
    assert rc == 1
    assert "FAIL" in out.getvalue() and "'wrong' is not a model output" in out.getvalue()


def test_make_batches_is_deterministic(tmp_path: Path) -> None:
    manifest = Manifest.model_validate_json((_write_package(tmp_path) / "manifest.json").read_bytes())
    first, again = make_batches(manifest), make_batches(manifest)
    assert [b for b, _ in first] == [1, 4]
    assert first[1][1]["x"].shape == (4, 4) and first[1][1]["x"].dtype == np.float32
    np.testing.assert_array_equal(first[1][1]["x"], again[1][1]["x"])


def test_compare_tolerances() -> None:
    ref = {"y": np.array([1.0, 2.0], np.float32)}
    assert compare({"y": ref["y"] + 5e-5}, ref, "fp32") is None
    assert compare({"y": ref["y"] + 1e-2}, ref, "fp32") is not None
    assert compare({"y": ref["y"] + 1e-2}, ref, "fp16") is None
    assert "shape" in (compare({"y": ref["y"][:1]}, ref, "fp32") or "")
    assert "shape" in (compare({}, ref, "fp32") or "")


def test_find_packages_accepts_zoo_or_packages_dir(tmp_path: Path) -> None:
    pkg = _write_package(tmp_path)
    assert find_packages(tmp_path) == [pkg]
    assert find_packages(tmp_path / "packages") == [pkg]


@pytest.mark.skipif(not find_packages(default_zoo_dir()), reason="the shipped zoo has no packages yet")
async def test_shipped_zoo_passes_here() -> None:
    out = io.StringIO()
    rc = await run_doctor(None, out, probe_root=PROBE / "x86-cpu")
    assert rc == 0, out.getvalue()
