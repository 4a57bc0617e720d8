"""onnxruntime backend: one InferenceSession on the best available execution provider."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import InputError, RuntimeFailure, RuntimeUnavailable
from models.runtimes.base import InputValidator, Runtime, RuntimeInfo, Tensors
from models.runtimes.config import OnnxRuntimeConfig, OrtProvider
from protocols.manifest import Manifest, TensorSpec

logger = logging.getLogger(__name__)

PROVIDER_NAMES: dict[OrtProvider, str] = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# ORT's type strings for the V2 datatypes we check at load time.
_ORT_TYPES: dict[str, str] = {
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)",
    "UINT64": "tensor(uint64)",
    "INT8": "tensor(int8)",
    "INT16": "tensor(int16)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "FP16": "tensor(float16)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
    "BYTES": "tensor(string)",
}


def select_providers(config: OnnxRuntimeConfig, available: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Providers to request, in preference order, with their options; CPU always last."""
    chosen: list[tuple[str, dict[str, str]]] = []
    for short in config.providers:
        name = PROVIDER_NAMES[short]
        if name not in available or short == "cpu":
            continue
        chosen.append((name, provider_options(short, config)))
    chosen.append((PROVIDER_NAMES["cpu"], {}))
    return chosen


def provider_options(provider: OrtProvider, config: OnnxRuntimeConfig) -> dict[str, str]:
    """onnxruntime provider options for one provider, as the strings ORT expects."""
    if provider == "cuda":
        return {"device_id": str(config.device_id)}
    if provider == "tensorrt":
        opts = {"device_id": str(config.device_id), "trt_fp16_enable": str(config.trt_fp16)}
        if config.trt_engine_cache_dir is not None:
            opts["trt_engine_cache_enable"] = "True"
            opts["trt_engine_cache_path"] = str(config.trt_engine_cache_dir)
        if config.trt_timing_cache_dir is not None:
            opts["trt_timing_cache_enable"] = "True"
            opts["trt_timing_cache_path"] = str(config.trt_timing_cache_dir)
        return opts
    return {}


class OnnxRuntime(Runtime):
    """Runs an ONNX model with onnxruntime; reports the provider that actually runs it."""

    def __init__(self, package_dir: Path, manifest: Manifest, config: OnnxRuntimeConfig | None = None) -> None:
        super().__init__(package_dir, manifest)
        self.config = config or OnnxRuntimeConfig()
        self._session: Any = None
        self._info: RuntimeInfo | None = None
        self._validate = InputValidator(manifest)
        self._input_names = frozenset(t.name for t in manifest.inputs)
        self._output_names = [t.name for t in manifest.outputs]
        # V2 BYTES are `bytes`; onnxruntime's Python binding takes and gives `str` for tensor(string) (it
        # would turn b"x" into the text "b'x'"), so string tensors are converted at this boundary.
        self._string_inputs = tuple(t.name for t in manifest.inputs if t.datatype == "BYTES")
        self._string_outputs = tuple(t.name for t in manifest.outputs if t.datatype == "BYTES")

    @property
    def info(self) -> RuntimeInfo:
        """Provider that actually runs the model (after load)."""
        if self._info is None:
            return RuntimeInfo(backend="onnxruntime", platform="onnxruntime_onnx", provider="not loaded")
        return self._info

    async def load(self) -> None:
        """Create the session in a worker thread."""
        if self._session is not None:
            return
        if self.manifest.format != "onnx":
            raise RuntimeFailure(f"onnxruntime cannot run format {self.manifest.format!r}")
        loop = asyncio.get_running_loop()
        self._session, self._info = await loop.run_in_executor(None, self._create_session)

    def _create_session(self) -> tuple[Any, RuntimeInfo]:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeUnavailable("onnxruntime is not installed (pip install onnxruntime)") from exc
        path = self.package_dir / self.manifest.model_file
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.config.intra_op_threads is not None:
            so.intra_op_num_threads = self.config.intra_op_threads
        if self.config.inter_op_threads is not None:
            so.inter_op_num_threads = self.config.inter_op_threads
        if not self.config.allow_spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        chosen = select_providers(self.config, ort.get_available_providers())
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=so,
                providers=[name for name, _ in chosen],
                provider_options=[opts for _, opts in chosen],
            )
        except Exception as exc:
            raise RuntimeFailure(f"onnxruntime could not load {path}: {exc}") from exc
        self._check_metadata(session)
        actual = session.get_providers()[0]
        requested = ",".join(self.config.providers)
        logger.info(
            "model %s:%s runs on %s (requested %s, onnxruntime %s)",
            self.manifest.name,
            self.manifest.version,
            actual,
            requested,
            ort.__version__,
        )
        precision = "fp16" if actual == PROVIDER_NAMES["tensorrt"] and self.config.trt_fp16 else "fp32"
        info = RuntimeInfo(
            backend="onnxruntime",
            platform="onnxruntime_onnx",
            provider=actual,
            precision=precision,
            detail={
                "onnxruntime_version": ort.__version__,
                "requested_providers": requested,
                "session_providers": ",".join(session.get_providers()),
            },
        )
        return session, info

    def _check_metadata(self, session: Any) -> None:
        """The manifest must name the model's real inputs and outputs with the right types."""
        model_in = {i.name: i.type for i in session.get_inputs()}
        model_out = {o.name: o.type for o in session.get_outputs()}
        for kind, specs, actual in (
            ("input", self.manifest.inputs, model_in),
            ("output", self.manifest.outputs, model_out),
        ):
            for spec in specs:
                _check_spec(kind, spec, actual)
        missing = set(model_in) - self._input_names
        if missing:
            raise RuntimeFailure(f"model inputs {sorted(missing)} are not in the manifest")

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Run one batch; wrong names, dtypes or shapes raise InputError, ORT errors RuntimeFailure."""
        session = self._session
        if session is None:
            raise RuntimeFailure("runtime is not loaded")
        feeds = self._validate(inputs)
        for name in self._string_inputs:
            feeds[name] = _to_text(name, feeds[name])
        try:
            results = session.run(self._output_names, feeds)
        except Exception as exc:
            raise RuntimeFailure(f"onnxruntime failed: {exc}") from exc
        outputs = dict(zip(self._output_names, results, strict=True))
        for name in self._string_outputs:
            outputs[name] = _to_bytes(outputs[name])
        return outputs

    async def unload(self) -> None:
        """Drop the session."""
        self._session = None


def _to_text(name: str, array: np.ndarray) -> np.ndarray:
    """An object array of UTF-8 `bytes` (or `str`) as `str`, the only string type onnxruntime reads as is."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1).tolist()):
        if isinstance(item, bytes):
            try:
                flat[i] = item.decode()
            except UnicodeDecodeError:
                raise InputError(
                    f"input {name!r}: BYTES element {i} is not UTF-8 (onnxruntime string tensors hold text)"
                ) from None
        elif isinstance(item, str):
            flat[i] = item
        else:
            raise InputError(f"input {name!r}: BYTES element {i} is {type(item).__name__}, not bytes")
    return out


def _to_bytes(array: np.ndarray) -> np.ndarray:
    """onnxruntime's `str` elements back as UTF-8 `bytes` (V2 BYTES)."""
    out = np.empty(array.shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(array.reshape(-1).tolist()):
        flat[i] = item.encode() if isinstance(item, str) else item
    return out


def _check_spec(kind: str, spec: TensorSpec, actual: dict[str, str]) -> None:
    if spec.name not in actual:
        raise RuntimeFailure(f"manifest {kind} {spec.name!r} is not a model {kind} (model has {sorted(actual)})")
    expected = _ORT_TYPES[spec.datatype]
    if actual[spec.name] != expected:
        raise RuntimeFailure(f"{kind} {spec.name!r}: model type {actual[spec.name]}, manifest says {spec.datatype}")
