"""Pick and construct a runtime backend for a package; report which backends this machine has."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from models.errors import RuntimeFailure
from models.runtimes.base import Runtime
from models.runtimes.config import OnnxRuntimeConfig, RuntimeConfig, TensorRTConfig, TorchConfig
from protocols.manifest import Manifest

_SUPPORTED_FORMATS = {
    "onnxruntime": ("onnx",),
    "tensorrt": ("onnx",),
    "torch": ("torchscript", "torch_exported_program"),
}


def default_config(manifest: Manifest) -> RuntimeConfig:
    """Default backend for a format: onnxruntime for ONNX, torch for TorchScript/exported programs."""
    if manifest.format == "onnx":
        return OnnxRuntimeConfig()
    return TorchConfig()


def create_runtime(package_dir: Path, manifest: Manifest, config: RuntimeConfig | None = None) -> Runtime:
    """An unloaded runtime for the package; the backend module is imported only here."""
    cfg = config if config is not None else default_config(manifest)
    if manifest.format not in _SUPPORTED_FORMATS[cfg.type]:
        raise RuntimeFailure(f"backend {cfg.type} cannot run a {manifest.format} model")
    if isinstance(cfg, OnnxRuntimeConfig):
        from models.runtimes.onnx import OnnxRuntime

        return OnnxRuntime(package_dir, manifest, cfg)
    if isinstance(cfg, TensorRTConfig):
        from models.runtimes.tensorrt import TensorRTRuntime

        return TensorRTRuntime(package_dir, manifest, cfg)
    from models.runtimes.torch_runtime import TorchRuntime

    return TorchRuntime(package_dir, manifest, cfg)


class BackendAvailability(BaseModel):
    """Whether a backend's Python package is installed, and its version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field(description="Backend type: onnxruntime, tensorrt or torch.")
    installed: bool = Field(description="True if the backend's Python package can be imported.")
    version: str | None = Field(default=None, description="Installed distribution version, if known.")


def _version(*distributions: str) -> str | None:
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def available_backends() -> tuple[BackendAvailability, ...]:
    """Installed backends, found without importing them (cheap; see edge_agent.probe for devices)."""
    found = []
    for backend, module, dists in (
        ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
        ("tensorrt", "tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu11")),
        ("torch", "torch", ("torch",)),
    ):
        installed = importlib.util.find_spec(module) is not None
        found.append(
            BackendAvailability(backend=backend, installed=installed, version=_version(*dists) if installed else None)
        )
    return tuple(found)
