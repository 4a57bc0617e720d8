"""The small interface every runtime backend implements."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.errors import InputError
from protocols.datatypes import numpy_dtype
from protocols.manifest import Manifest, TensorSpec

Tensors = dict[str, np.ndarray]


class RuntimeInfo(BaseModel):
    """What actually runs a model, reported in logs, metadata and telemetry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field(description="Backend type: onnxruntime, tensorrt or torch.")
    platform: str = Field(description="V2 platform string: onnxruntime_onnx, tensorrt_plan, pytorch_libtorch.")
    provider: str = Field(description="Execution provider/device that actually runs, e.g. CPUExecutionProvider.")
    precision: str = Field(default="fp32", description="Precision the model runs at.")
    detail: dict[str, str] = Field(default_factory=dict, description="Backend-specific facts (versions, cache).")


class _Tail(tuple[int, ...]):
    """Every dim after the batch axis is fixed: one tuple compare checks them all (the hot path)."""


def _fixed_dims(shape: tuple[int, ...]) -> tuple[Any, ...]:
    """`_Tail(shape[1:])` when only the batch axis is dynamic, else (axis, size) pairs of fixed dims."""
    if shape and shape[0] == -1 and -1 not in shape[1:]:
        return _Tail(shape[1:])
    return tuple((i, s) for i, s in enumerate(shape) if s != -1)


class InputValidator:
    """Checks a batch against the manifest (names, exact dtypes, ranks, fixed dims, max batch); no casting."""

    __slots__ = ("_checks", "_max_batch", "_names")

    def __init__(self, manifest: Manifest) -> None:
        self._checks = tuple(
            (t.name, numpy_dtype(t.datatype), len(t.shape), _fixed_dims(t.shape)) for t in manifest.inputs
        )
        self._names = frozenset(t.name for t in manifest.inputs)
        self._max_batch = manifest.max_batch_size

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs in manifest order; InputError on any mismatch."""
        feeds: dict[str, np.ndarray] = {}
        max_batch = self._max_batch
        try:
            for name, dtype, rank, fixed in self._checks:
                arr = inputs[name]
                if arr.dtype != dtype:
                    raise InputError(f"input {name!r}: dtype {arr.dtype} given, {dtype} expected")
                shape = arr.shape
                if len(shape) != rank or (
                    shape[1:] != fixed if type(fixed) is _Tail else any(shape[i] != s for i, s in fixed)
                ):
                    raise InputError(f"input {name!r}: shape {shape} does not fit the model")
                if max_batch and shape[0] > max_batch:
                    raise InputError(f"input {name!r}: batch {shape[0]} exceeds max_batch_size {max_batch}")
                feeds[name] = arr
        except KeyError as exc:
            raise InputError(f"missing input {exc.args[0]!r}") from None
        if len(inputs) != len(feeds):
            raise InputError(f"unknown inputs {sorted(set(inputs) - self._names)}")
        return feeds


class Runtime(abc.ABC):
    """A loaded model. `run` blocks and is called from a worker thread; the rest is async.

    Lifecycle: `await load()` -> any number of `run(batch)` -> `await unload()`. Usable as
    `async with runtime:`. Inputs and outputs are numpy arrays keyed by tensor name, with the
    batch axis first when the manifest's max_batch_size > 0.
    """

    def __init__(self, package_dir: Path, manifest: Manifest) -> None:
        self.package_dir = package_dir
        self.manifest = manifest

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Input metadata (from the manifest)."""
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Output metadata (from the manifest)."""
        return self.manifest.outputs

    @property
    @abc.abstractmethod
    def info(self) -> RuntimeInfo:
        """Which backend/provider actually runs the model."""

    @abc.abstractmethod
    async def load(self) -> None:
        """Load the model (and build/compile it if needed). Raises RuntimeFailure."""

    @abc.abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Run one batch synchronously. Raises RuntimeFailure. Thread-safe for one caller at a time."""

    @abc.abstractmethod
    async def unload(self) -> None:
        """Release the model's resources. Idempotent."""

    async def infer(self, inputs: Mapping[str, np.ndarray], executor: Executor | None = None) -> Tensors:
        """Run one batch off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self.run, inputs)

    async def aclose(self) -> None:
        """Alias of unload, for resource symmetry."""
        await self.unload()

    async def __aenter__(self) -> Self:
        await self.load()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.unload()
