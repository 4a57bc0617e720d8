"""The model registry: loaded model versions, their input checks, and the version each model is served at."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.errors import InvalidInput, NotFound, Unavailable
from edge_agent.scheduler.queue import QueueKey
from edge_agent.store import version_key
from models.runtimes.base import Runtime
from models.zoo import LABELS_FILE
from protocols.datatypes import numpy_dtype
from protocols.manifest import Manifest, TensorSpec

__all__ = ["LoadedModel", "ModelRegistry"]


def _tensor_meta(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


@dataclass(eq=False)
class LoadedModel:
    """One loaded version of a model: its runtime, limits and precomputed input checks."""

    manifest: Manifest
    runtime: Runtime
    max_batch_size: int
    ready: bool = False
    key: QueueKey = field(init=False)
    label: str = field(init=False)  # "name:version": metric labels and messages
    # (name, datatype, dtype, spec shape) per input, in manifest order.
    checks: tuple[tuple[str, str, np.dtype[Any], tuple[int, ...]], ...] = field(init=False)
    output_names: tuple[str, ...] = field(init=False)
    text_inputs: tuple[str, ...] = field(init=False)
    labels: tuple[str, ...] = field(init=False)  # the package's labels.txt, for classification outputs

    def __post_init__(self) -> None:
        self.key = QueueKey(self.manifest.name, self.manifest.version)
        self.label = str(self.key)
        self.checks = tuple((t.name, t.datatype, numpy_dtype(t.datatype), t.shape) for t in self.manifest.inputs)
        self.output_names = tuple(t.name for t in self.manifest.outputs)
        # onnxruntime's string tensors carry text: BYTES that are not UTF-8 are refused per request (400),
        # not in the batch, where they would fail every request batched with them.
        onnx = self.manifest.format == "onnx"
        self.text_inputs = tuple(t.name for t in self.manifest.inputs if onnx and t.datatype == "BYTES")
        self.labels = ()
        if any(f.path == LABELS_FILE for f in self.manifest.files):  # verified with the package's other files
            text = (self.runtime.package_dir / LABELS_FILE).read_text(encoding="utf-8")
            self.labels = tuple(line.strip() for line in text.splitlines())

    @property
    def name(self) -> str:
        """Model name."""
        return self.manifest.name

    @property
    def version(self) -> str:
        """Model version."""
        return self.manifest.version

    def validate(self, inputs: Mapping[str, np.ndarray[Any, Any]]) -> int:
        """Check inputs strictly against the metadata; returns the request's row count."""
        batching = self.max_batch_size > 0
        rows = -1
        for name, datatype, dtype, spec in self.checks:
            array = inputs.get(name)
            if array is None:
                raise InvalidInput(f"missing input {name!r} for model {self.label!r}")
            if array.dtype != dtype:
                raise InvalidInput(f"input {name!r}: datatype mismatch, model expects {datatype}")
            shape = array.shape
            if len(shape) != len(spec) or any(s not in (-1, a) for s, a in zip(spec, shape, strict=True)):
                raise InvalidInput(f"input {name!r}: shape {list(shape)} does not match model shape {list(spec)}")
            if batching:
                if rows == -1:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise InvalidInput(f"input {name!r}: batch size {shape[0]} differs from other inputs ({rows})")
        if len(inputs) != len(self.checks):
            extra = sorted(set(inputs) - {c[0] for c in self.checks})
            raise InvalidInput(f"unexpected input(s) {extra} for model {self.label!r}")
        for name in self.text_inputs:
            _check_text(name, inputs[name])
        if not batching:
            return 1
        if rows < 1 or rows > self.max_batch_size:
            raise InvalidInput(f"batch size {rows} is outside 1..{self.max_batch_size} for model {self.label!r}")
        return rows

    def metadata(self, name: str, versions: list[str]) -> dict[str, Any]:
        """V2 model metadata under a V2 model (pipeline) name."""
        return {
            "name": name,
            "versions": versions,
            "platform": self.runtime.info.platform,
            "inputs": [_tensor_meta(t) for t in self.manifest.inputs],
            "outputs": [_tensor_meta(t) for t in self.manifest.outputs],
        }


def _check_text(name: str, array: np.ndarray[Any, Any]) -> None:
    for i, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            try:
                item.decode()
            except UnicodeDecodeError:
                raise InvalidInput(f"input {name!r}: BYTES element {i} is not UTF-8 text, as the model needs") from None


class ModelRegistry:
    """Loaded models (name -> version -> LoadedModel) and the active version of each name."""

    def __init__(self) -> None:
        self._models: dict[str, dict[str, LoadedModel]] = {}
        self._active: dict[str, str] = {}
        # name -> version -> why, for versions that failed to load or warm up at start (not served).
        self._failed: dict[str, dict[str, str]] = {}

    def add(self, model: LoadedModel) -> None:
        """Register a loaded version; it serves requests only once it is activated."""
        self._models.setdefault(model.name, {})[model.version] = model
        self._failed.pop(model.name, None)  # a version that loads replaces the failed ones

    def fail(self, name: str, version: str, reason: str) -> None:
        """Record a version that failed to load or warm up: the server is not ready while one is recorded."""
        self._failed.setdefault(name, {})[version] = reason

    def failures(self) -> dict[str, dict[str, str]]:
        """A copy: name -> version -> why it failed, for models that have no loaded version instead."""
        return {name: dict(versions) for name, versions in self._failed.items()}

    def unknown(self, name: str, version: str | None = None) -> NotFound | Unavailable:
        """Triton's error for a name that resolves to nothing: failed to load (503) or not found (404)."""
        if name in self._failed and not self._models.get(name):
            return Unavailable(f"Request for unknown model: '{name}' has no available versions")
        if version is None:
            return NotFound(f"Request for unknown model: '{name}' is not found")
        return NotFound(f"Request for unknown model: '{name}' version {version} is not found")

    def remove(self, name: str, version: str) -> LoadedModel | None:
        """Forget a loaded version; returns it, or None if it was not loaded."""
        return self._models.get(name, {}).pop(version, None)

    def versions(self, name: str) -> dict[str, LoadedModel]:
        """Loaded versions of a model (the live mapping; empty if none)."""
        return self._models.get(name, {})

    def installed(self, name: str) -> bool:
        """True once a version of `name` was loaded (its entry stays when its versions are unloaded)."""
        return name in self._models

    def names(self) -> Iterator[str]:
        """Names of the loaded models."""
        return iter(self._models)

    def all(self) -> Iterator[LoadedModel]:
        """Every loaded version."""
        for versions in self._models.values():
            yield from versions.values()

    def snapshot(self) -> dict[str, dict[str, LoadedModel]]:
        """A copy: name -> version -> model."""
        return {name: dict(versions) for name, versions in self._models.items()}

    def activate_defaults(self, active: Mapping[str, str]) -> None:
        """Make `active[name]` (or the newest loaded version) the active version of every loaded model."""
        for name, versions in self._models.items():
            self._active[name] = active.get(name) or max(versions, key=version_key)

    def set_default(self, name: str, version: str) -> None:
        """Make `version` active only if `name` has no active version yet."""
        self._active.setdefault(name, version)

    def activate(self, name: str, version: str) -> None:
        """Make a loaded version the one new requests go to; NotFound if it is not loaded."""
        if version not in self._models.get(name, {}):
            raise NotFound(f"model {name!r} version {version!r} is not loaded")
        self._active[name] = version

    def deactivate(self, name: str) -> None:
        """Make no version of `name` active (before unloading all of them: explicit unload)."""
        self._active.pop(name, None)

    def active_version(self, name: str) -> str | None:
        """The version new requests for model `name` go to."""
        return self._active.get(name)

    def active_ready(self) -> bool:
        """True if every loaded model's active version is warmed up and none failed (Triton's strict readiness)."""
        if self._failed:
            return False
        for name, versions in self._models.items():
            if not versions:
                continue  # every version unloaded (explicit unload): not served, not a readiness concern
            active = self._active.get(name)
            model = versions.get(active) if active is not None else None
            if model is None or not model.ready:
                return False
        return True
