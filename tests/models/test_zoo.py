"""The committed zoo packages: they verify with the zoo key and run in onnxruntime at batch 1 and 8."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.package import open_package, verify_package
from models.zoo import ZOO_MODELS, ZOO_PUBLIC_KEY_FILE, zoo_package_path, zoo_trusted_keys
from protocols.manifest import TensorSpec

EXPECTED = {
    "mobilenet-v2": (TensorSpec(name="input", datatype="FP32", shape=(-1, 3, 160, 160)), "scores", 10),
    "tiny-cnn": (TensorSpec(name="input", datatype="FP32", shape=(-1, 3, 64, 64)), "scores", 4),
    "tiny-mlp": (TensorSpec(name="input", datatype="FP32", shape=(-1, 64)), "logits", 10),
}
FP32_MODELS = [m for m in ZOO_MODELS if m[0] in EXPECTED]
# Committed bytes per model.onnx: the tiny models stay under 1 MB; mobilenet-v2 (0.70 M FP32 weights) is 2.8 MB.
MAX_MODEL_BYTES = {"mobilenet-v2": 3_000_000}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def sample(spec: TensorSpec, batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *spec.shape[1:])).astype(np.float32)


@pytest.mark.parametrize(("name", "version"), FP32_MODELS)
def test_zoo_package_verifies_with_the_zoo_key(name: str, version: str) -> None:
    pkg = open_package(zoo_package_path(name, version))
    verify_package(pkg, zoo_trusted_keys())
    spec, output, classes = EXPECTED[name]
    assert (pkg.manifest.name, pkg.manifest.version) == (name, version)
    assert pkg.manifest.inputs == (spec,)
    assert pkg.manifest.outputs == (TensorSpec(name=output, datatype="FP32", shape=(-1, classes)),)
    assert pkg.manifest.max_batch_size == 8
    assert pkg.model_path.stat().st_size < MAX_MODEL_BYTES.get(name, 1_000_000)


@pytest.mark.parametrize(("name", "version"), FP32_MODELS)
@pytest.mark.parametrize("batch", [1, 8])
def test_zoo_model_runs_in_onnxruntime(name: str, version: str, batch: int) -> None:
    spec, output, classes = EXPECTED[name]
    sess = session(zoo_package_path(name, version) / "model.onnx")
    (result,) = sess.run([output], {"input": sample(spec, batch)})
    assert result.shape == (batch, classes)
    assert result.dtype == np.float32
    assert np.isfinite(result).all()


def test_batched_rows_equal_single_rows() -> None:
    spec, output, _ = EXPECTED["tiny-cnn"]
    sess = session(zoo_package_path("tiny-cnn", 1) / "model.onnx")
    batch = sample(spec, 8)
    (together,) = sess.run([output], {"input": batch})
    for i in range(8):
        (alone,) = sess.run([output], {"input": batch[i : i + 1]})
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-5, atol=1e-6)


def test_tiny_cnn_versions_differ() -> None:
    spec, output, _ = EXPECTED["tiny-cnn"]
    x = sample(spec, 2)
    (v1,) = session(zoo_package_path("tiny-cnn", 1) / "model.onnx").run([output], {"input": x})
    (v2,) = session(zoo_package_path("tiny-cnn", 2) / "model.onnx").run([output], {"input": x})
    assert not np.allclose(v1, v2)


def test_only_the_public_key_is_committed() -> None:
    assert ZOO_PUBLIC_KEY_FILE.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    zoo_dir = ZOO_PUBLIC_KEY_FILE.parent
    assert not [p for p in zoo_dir.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]


def test_unknown_zoo_package() -> None:
    with pytest.raises(LookupError, match=r"no zoo package tiny-cnn/9 .*tiny-mlp/1"):
        zoo_package_path("tiny-cnn", 9)


def test_export_reproduces_the_committed_models(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from models.zoo.export import ENTRIES, export_onnx
    from models.zoo.nets import TinyCNN

    for entry in ENTRIES:
        if entry.net is None:
            continue  # built without torch: test_text_echo_is_rebuilt_byte_for_byte
        spec, output, _ = EXPECTED[entry.name]
        export_onnx(entry, tmp_path / f"{entry.name}-{entry.version}.onnx")
        x = sample(spec, 3)
        (fresh,) = session(tmp_path / f"{entry.name}-{entry.version}.onnx").run([output], {"input": x})
        (committed,) = session(zoo_package_path(entry.name, entry.version) / "model.onnx").run([output], {"input": x})
        np.testing.assert_allclose(fresh, committed, rtol=1e-5, atol=1e-6)
    torch.manual_seed(1)
    with torch.no_grad():
        reference = TinyCNN().eval()(torch.from_numpy(sample(EXPECTED["tiny-cnn"][0], 2))).numpy()
    (onnx_out,) = session(zoo_package_path("tiny-cnn", 1) / "model.onnx").run(
        ["scores"], {"input": sample(EXPECTED["tiny-cnn"][0], 2)}
    )
    np.testing.assert_allclose(onnx_out, reference, rtol=1e-4, atol=1e-5)


def test_mobilenet_v2_is_the_torch_network_and_its_scores_keep_their_scale() -> None:
    torch = pytest.importorskip("torch")
    from models.zoo.nets import MobileNetV2

    spec, output, _ = EXPECTED["mobilenet-v2"]
    x = sample(spec, 2)
    torch.manual_seed(1)
    with torch.no_grad():
        reference = MobileNetV2().eval()(torch.from_numpy(x)).numpy()
    (scores,) = session(zoo_package_path("mobilenet-v2", 1) / "model.onnx").run([output], {"input": x})
    np.testing.assert_allclose(scores, reference, rtol=1e-3, atol=1e-4)
    # Untrained weights with fan-out init shrink activations ~1e8-fold (scores ~1e-8, which any atol would
    # match); the zoo's init keeps them of order one, so the comparisons above and in the export test bite.
    assert 0.05 < float(np.abs(scores).mean()) < 100.0
    assert not np.allclose(scores[0], scores[1], atol=1e-3)


def test_mobilenet_v2_batched_rows_equal_single_rows() -> None:
    spec, output, _ = EXPECTED["mobilenet-v2"]
    sess = session(zoo_package_path("mobilenet-v2", 1) / "model.onnx")
    batch = sample(spec, 4, seed=3)
    (together,) = sess.run([output], {"input": batch})
    for i in range(4):
        (alone,) = sess.run([output], {"input": batch[i : i + 1]})
        np.testing.assert_allclose(alone[0], together[i], rtol=1e-4, atol=1e-5)


def test_text_echo_is_a_signed_string_identity() -> None:
    pkg = open_package(zoo_package_path("text-echo", 1))
    verify_package(pkg, zoo_trusted_keys())
    spec = TensorSpec(name="text", datatype="BYTES", shape=(-1, 1))
    assert pkg.manifest.inputs == (spec,)
    assert pkg.manifest.outputs == (TensorSpec(name="echo", datatype="BYTES", shape=(-1, 1)),)
    assert pkg.manifest.max_batch_size == 8


def test_text_echo_is_rebuilt_byte_for_byte() -> None:
    from models.zoo.export import text_echo_onnx

    assert text_echo_onnx() == (zoo_package_path("text-echo", 1) / "model.onnx").read_bytes()


async def test_onnx_runtime_passes_bytes_through_string_tensors() -> None:
    from models.errors import InputError
    from models.runtimes.onnx import OnnxRuntime

    pkg = open_package(zoo_package_path("text-echo", 1))
    runtime = OnnxRuntime(pkg.path, pkg.manifest)
    await runtime.load()
    text = np.array([[b"hello"], ["w\u00f6rld".encode()], [b""]], dtype=object)
    echo = runtime.run({"text": text})["echo"]
    # onnxruntime alone turns b"hello" into the text "b'hello'"; the runtime hands it str and returns bytes.
    assert echo.dtype == object and echo.tolist() == text.tolist()
    with pytest.raises(InputError, match="not UTF-8"):
        runtime.run({"text": np.array([[b"\xff"]], dtype=object)})
    await runtime.unload()


def test_export_without_torch_resigns_the_committed_models(tmp_path: Path) -> None:
    from models.signing import generate_keypair, key_id
    from models.zoo import PACKAGES_DIR
    from models.zoo.export import export_zoo

    private, public = generate_keypair()
    paths = export_zoo(tmp_path, private, reuse_from=PACKAGES_DIR)
    assert sorted((p.parent.name, p.name) for p in paths) == sorted(ZOO_MODELS)
    for path in paths:
        pkg = open_package(path)
        verify_package(pkg, {key_id(public): public})
        committed = zoo_package_path(pkg.manifest.name, pkg.manifest.version) / "model.onnx"
        assert pkg.model_path.read_bytes() == committed.read_bytes()
