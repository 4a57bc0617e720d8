"""TorchRuntime against a small module scripted/exported in the test."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.errors import InputError, RuntimeFailure, RuntimeUnavailable
from models.runtimes.config import TorchConfig
from models.runtimes.torch_runtime import TorchRuntime
from protocols.manifest import Manifest

torch = pytest.importorskip("torch", reason="torch not installed")


class _Net(torch.nn.Module):  # type: ignore[misc]  # torch is Any here (importorskip)
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, torch.sigmoid(y)


def _manifest(root: Path, file: str, fmt: str) -> Manifest:
    data = (root / file).read_bytes()
    return Manifest.model_validate(
        {
            "name": "net",
            "version": "1",
            "format": fmt,
            "model_file": file,
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [-1, 3]},
                {"name": "z", "datatype": "FP32", "shape": [-1, 3]},
            ],
            "max_batch_size": 8,
            "files": [{"path": file, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}],
        }
    )


@pytest.fixture
def scripted(tmp_path: Path) -> tuple[Path, Manifest, Any]:
    net = _Net().eval()
    with warnings.catch_warnings():
        # torch 2.13 deprecates scripting; TorchScript files from older exports must still load.
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
        torch.jit.script(net).save(str(tmp_path / "model.pt"))
    return tmp_path, _manifest(tmp_path, "model.pt", "torchscript"), net


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Manifest, Any]:
    net = _Net().eval()
    batch = torch.export.Dim("batch", min=1, max=8)
    ep = torch.export.export(net, (torch.zeros(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(tmp_path / "model.pt2"))
    return tmp_path, _manifest(tmp_path, "model.pt2", "torch_exported_program"), net


def _check_matches(out: dict[str, np.ndarray], net: Any, x: np.ndarray) -> None:
    with torch.inference_mode():
        y, z = net(torch.from_numpy(x))
    np.testing.assert_allclose(out["y"], y.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["z"], z.numpy(), rtol=1e-6, atol=1e-6)


async def test_torchscript_matches_direct_torch(scripted: tuple[Path, Manifest, Any]) -> None:
    root, manifest, net = scripted
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    async with TorchRuntime(root, manifest) as rt:
        assert rt.info.provider == "cpu"
        assert rt.info.detail["torch_version"] == torch.__version__
        out = await rt.infer({"x": x})
        assert list(out) == ["y", "z"]
        _check_matches(out, net, x)
        # Read-only inputs (as decoded from an HTTP body) work without a warning.
        ro = np.frombuffer(x.tobytes(), np.float32).reshape(5, 4)
        _check_matches(rt.run({"x": ro}), net, x)
        with pytest.raises(InputError, match="dtype"):
            rt.run({"x": x.astype(np.float64)})


async def test_exported_program_matches_direct_torch(exported: tuple[Path, Manifest, Any]) -> None:
    root, manifest, net = exported
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    async with TorchRuntime(root, manifest, TorchConfig(device="cpu")) as rt:
        _check_matches(rt.run({"x": x}), net, x)
        _check_matches(rt.run({"x": x[:1]}), net, x[:1])


async def test_output_count_mismatch_is_a_failure(scripted: tuple[Path, Manifest, Any]) -> None:
    root, manifest, _ = scripted
    one_output = manifest.model_copy(update={"outputs": manifest.outputs[:1]})
    async with TorchRuntime(root, one_output) as rt:
        with pytest.raises(RuntimeFailure, match="returned 2 outputs"):
            rt.run({"x": np.zeros((1, 4), np.float32)})


async def test_bad_file_and_format(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"not a model")
    manifest = _manifest(tmp_path, "model.pt", "torchscript")
    with pytest.raises(RuntimeFailure, match="could not load") as info:
        await TorchRuntime(tmp_path, manifest).load()
    assert info.value.__cause__ is not None
    with pytest.raises(RuntimeFailure, match="cannot run format"):
        await TorchRuntime(tmp_path, manifest.model_copy(update={"format": "onnx"})).load()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where CUDA is absent")
async def test_cuda_requested_without_cuda(scripted: tuple[Path, Manifest, Any]) -> None:
    root, manifest, _ = scripted
    with pytest.raises(RuntimeUnavailable, match="CUDA is not available"):
        await TorchRuntime(root, manifest, TorchConfig(device="cuda")).load()


def test_config_device_pattern() -> None:
    assert TorchConfig(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValueError):
        TorchConfig(device="gpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("fixture", ["scripted", "exported"])
async def test_cuda_matches_cpu(fixture: str, request: pytest.FixtureRequest) -> None:
    root, manifest, net = request.getfixturevalue(fixture)
    x = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    async with TorchRuntime(root, manifest, TorchConfig(device="cuda")) as rt:
        assert rt.info.provider.startswith("cuda")
        out = await rt.infer({"x": x})
    with torch.inference_mode():
        y, z = net(torch.from_numpy(x))
    np.testing.assert_allclose(out["y"], y.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(out["z"], z.numpy(), rtol=1e-3, atol=1e-4)
