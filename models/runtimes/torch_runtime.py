"""PyTorch backend for TorchScript and torch.export programs (for devices without TensorRT)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import RuntimeFailure, RuntimeUnavailable
from models.runtimes.base import InputValidator, Runtime, RuntimeInfo, Tensors
from models.runtimes.config import TorchConfig
from protocols.manifest import Manifest

logger = logging.getLogger(__name__)


def import_torch() -> Any:
    """The torch module, or RuntimeUnavailable."""
    try:
        import torch
    except ImportError as exc:
        raise RuntimeUnavailable("torch is not installed (pip install 'edgefleet[torch]')") from exc
    return torch


class TorchRuntime(Runtime):
    """Runs a TorchScript or exported program under torch.inference_mode on CPU or CUDA."""

    def __init__(self, package_dir: Path, manifest: Manifest, config: TorchConfig | None = None) -> None:
        super().__init__(package_dir, manifest)
        self.config = config or TorchConfig()
        self._validate = InputValidator(manifest)
        self._input_names = [t.name for t in manifest.inputs]
        self._output_names = [t.name for t in manifest.outputs]
        self._torch: Any = None
        self._module: Any = None
        self._device: Any = None
        self._stream: Any = None  # a high-priority CUDA stream (stream_priority = "high" on a GPU), else None
        self._info: RuntimeInfo | None = None

    @property
    def info(self) -> RuntimeInfo:
        """torch version and device (after load)."""
        if self._info is None:
            return RuntimeInfo(backend="torch", platform="pytorch_libtorch", provider="not loaded")
        return self._info

    async def load(self) -> None:
        """Load the module in a worker thread onto the configured device."""
        if self._module is not None:
            return
        if self.manifest.format not in ("torchscript", "torch_exported_program"):
            raise RuntimeFailure(f"torch runtime cannot run format {self.manifest.format!r}")
        torch = import_torch()
        device = torch.device(self.config.device)
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise RuntimeUnavailable(f"torch device {self.config.device} requested but CUDA is not available")
            index = device.index or 0
            if index >= torch.cuda.device_count():
                raise RuntimeUnavailable(f"torch device {self.config.device}: only {torch.cuda.device_count()} GPUs")
        if self.config.threads is not None:
            torch.set_num_threads(self.config.threads)  # process-wide in torch
        loop = asyncio.get_running_loop()
        self._module = await loop.run_in_executor(None, self._load_module, torch, device)
        self._torch, self._device = torch, device
        if device.type == "cuda" and self.config.stream_priority == "high":
            # torch: lower numbers are higher priorities; -1 is the high priority on every CUDA device.
            self._stream = torch.cuda.Stream(device=device, priority=-1)
        provider = str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
        logger.info(
            "model %s:%s runs on torch %s %s", self.manifest.name, self.manifest.version, torch.__version__, provider
        )
        self._info = RuntimeInfo(
            backend="torch",
            platform="pytorch_libtorch",
            provider=provider,
            detail={"torch_version": torch.__version__, "format": self.manifest.format},
        )

    def _load_module(self, torch: Any, device: Any) -> Any:
        path = self.package_dir / self.manifest.model_file
        try:
            if self.manifest.format == "torchscript":
                with warnings.catch_warnings():
                    # torch >= 2.13 deprecates TorchScript; packages made with it must still run.
                    warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning)
                    module = torch.jit.load(str(path), map_location=device)
            else:
                module = torch.export.load(str(path)).module().to(device)
        except Exception as exc:
            raise RuntimeFailure(f"torch could not load {path}: {exc}") from exc
        if hasattr(module, "eval") and self.manifest.format == "torchscript":
            module.eval()
        return module

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Run one batch; outputs in manifest order (a tensor, a tuple/list, or a dict by name)."""
        module, torch, device = self._module, self._torch, self._device
        if module is None:
            raise RuntimeFailure("runtime is not loaded")
        feeds = self._validate(inputs)
        try:
            with torch.inference_mode(), _on_stream(torch, self._stream):
                args = [torch.from_numpy(_writable(feeds[n])).to(device) for n in self._input_names]
                result = module(*args)
                return self._collect(result)
        except RuntimeFailure:
            raise
        except Exception as exc:
            raise RuntimeFailure(f"torch failed: {exc}") from exc

    def _collect(self, result: Any) -> Tensors:
        names = self._output_names
        if isinstance(result, Mapping):
            values = [result[n] for n in names]
        elif isinstance(result, list | tuple):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(names):
            raise RuntimeFailure(f"model returned {len(values)} outputs, manifest names {len(names)}")
        return {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}

    async def unload(self) -> None:
        """Drop the module (and cached CUDA memory). Idempotent."""
        module, self._module = self._module, None
        if module is not None and self._device is not None and self._device.type == "cuda":
            del module
            self._torch.cuda.empty_cache()


def _on_stream(torch: Any, stream: Any) -> contextlib.AbstractContextManager[Any]:
    """Run on `stream` (the copies back to the host in _collect synchronise with it), or the default one."""
    return contextlib.nullcontext() if stream is None else torch.cuda.stream(stream)


def _writable(arr: np.ndarray) -> np.ndarray:
    """A contiguous, writable array: torch.from_numpy warns on read-only buffers (e.g. HTTP bodies)."""
    if arr.flags.writeable and arr.flags.c_contiguous:
        return arr
    return np.array(arr, order="C", copy=True)
