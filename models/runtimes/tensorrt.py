"""Native TensorRT backend: build an engine from the package's ONNX model on the device, cache it, run it.

Written against NVIDIA's documented Python API (TensorRT 8.6 and 10.x). Device memory and the stream
come from cuda-python (`cuda.bindings.runtime`, formerly `cuda.cudart`), the approach of NVIDIA's own
TensorRT Python samples. Both modules are imported only when a runtime loads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from models.atomic import write_atomic
from models.errors import RuntimeFailure, RuntimeUnavailable
from models.runtimes.base import InputValidator, Runtime, RuntimeInfo, Tensors
from models.runtimes.config import TensorRTConfig
from protocols.datatypes import numpy_dtype
from protocols.manifest import Manifest

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]
PROGRESS_INTERVAL_S = 15.0


# --- pure helpers (tested without TensorRT) ------------------------------------------------------


def engine_file_name(model_sha256: str, trt_version: str, compute_capability: str, precision: str) -> str:
    """Cache file name of an engine: `<sha[:16]>-trt<ver>-sm<cc>-<prec>.plan` (cc "8.7" -> sm87)."""
    sm = compute_capability.replace(".", "")
    if not sm.isdigit():
        raise ValueError(f"bad compute capability {compute_capability!r}")
    if not trt_version or any(c in trt_version for c in "/\\ "):
        raise ValueError(f"bad TensorRT version {trt_version!r}")
    return f"{model_sha256[:16]}-trt{trt_version}-sm{sm}-{precision}.plan"


def engine_cache_path(
    cache_dir: Path, manifest: Manifest, trt_version: str, compute_capability: str, precision: str
) -> Path:
    """Where the engine for this model, TensorRT version, GPU and precision is cached."""
    sha = manifest.file(manifest.model_file).sha256
    return cache_dir / engine_file_name(sha, trt_version, compute_capability, precision)


def profile_shapes(manifest: Manifest, max_batch: int | None = None, opt_batch: int | None = None) -> ProfileShapes:
    """(min, opt, max) shape per input for the dynamic batch axis; empty when every shape is static."""
    limit = max_batch if max_batch is not None else manifest.max_batch_size
    shapes: ProfileShapes = {}
    for spec in manifest.inputs:
        rest = spec.shape[1:] if manifest.max_batch_size > 0 else spec.shape
        if -1 in rest:
            raise RuntimeFailure(
                f"input {spec.name!r} has a dynamic non-batch dimension {spec.shape}; "
                "TensorRT needs those fixed in the manifest"
            )
        if manifest.max_batch_size == 0:
            continue
        if limit < 1:
            raise RuntimeFailure("max batch size of the optimization profile must be >= 1")
        opt = min(opt_batch if opt_batch is not None else limit, limit)
        shapes[spec.name] = ((1, *rest), (opt, *rest), (limit, *rest))
    return shapes


def trt_major(version: str) -> int:
    """Major version of a TensorRT version string."""
    return int(version.split(".", 1)[0])


# --- imports of the optional stack ---------------------------------------------------------------


def import_tensorrt() -> Any:
    """The tensorrt module, or RuntimeUnavailable."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeUnavailable(
            "tensorrt is not installed (it comes with JetPack on Jetson; on x86 install NVIDIA's "
            "TensorRT wheels from pypi.nvidia.com)"
        ) from exc
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime API module (new or old location), or RuntimeUnavailable."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise RuntimeUnavailable("cuda-python is not installed (pip install cuda-python)") from exc
    return cudart


def _check(cudart: Any, result: Any, what: str) -> Any:
    """Unpack a cuda-python `(err, *values)` result; RuntimeFailure unless cudaSuccess."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeFailure(f"{what} failed: {name.decode() if isinstance(name, bytes) else name}")
    return values[0] if len(values) == 1 else values


def create_stream(cudart: Any, priority: str) -> Any:
    """The runtime's CUDA stream; "high" = the greatest priority the device offers
    (cudaDeviceGetStreamPriorityRange: lower numbers are higher priorities; a non-blocking stream)."""
    if priority != "high":
        return _check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")
    _least, greatest = _check(cudart, cudart.cudaDeviceGetStreamPriorityRange(), "cudaDeviceGetStreamPriorityRange")
    flags = cudart.cudaStreamNonBlocking
    return _check(cudart, cudart.cudaStreamCreateWithPriority(flags, greatest), "cudaStreamCreateWithPriority")


def compute_capability(cudart: Any, device_id: int) -> str:
    """Compute capability of a CUDA device as "major.minor"."""
    attr = cudart.cudaDeviceAttr
    major = _check(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMajor, device_id), "cc")
    minor = _check(cudart, cudart.cudaDeviceGetAttribute(attr.cudaDevAttrComputeCapabilityMinor, device_id), "cc")
    return f"{major}.{minor}"


# --- building ------------------------------------------------------------------------------------


def build_engine(trt: Any, model_path: Path, manifest: Manifest, config: TensorRTConfig) -> bytes:
    """Parse the ONNX model and build a serialized engine (blocking, minutes on a Jetson)."""
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    # Explicit batch is the only mode in TensorRT 10 (the flag is gone); 8.x needs it spelled out.
    flags = 0 if trt_major(trt.__version__) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(model_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeFailure(f"TensorRT could not parse {model_path}: {errors}")
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_mb << 20)
    if config.precision in ("fp16", "int8"):
        if not builder.platform_has_fast_fp16:
            logger.warning("this GPU has no fast FP16; building %s anyway", config.precision)
        cfg.set_flag(trt.BuilderFlag.FP16)
    if config.precision == "int8":
        # Explicit quantization only: the ONNX model must carry Q/DQ nodes (no calibrator here).
        cfg.set_flag(trt.BuilderFlag.INT8)
    shapes = profile_shapes(manifest, config.max_batch_size, config.opt_batch_size)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        cfg.add_optimization_profile(profile)
    timing_cache = _attach_timing_cache(cfg, config.timing_cache)
    monitor = _progress_monitor(trt, manifest.name)
    if monitor is not None:
        cfg.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, cfg)
    if serialized is None:
        raise RuntimeFailure(f"TensorRT failed to build an engine for {model_path} (see the TensorRT log)")
    if timing_cache is not None and config.timing_cache is not None:
        write_atomic(config.timing_cache, bytes(cfg.get_timing_cache().serialize()))
    return bytes(serialized)


def _attach_timing_cache(cfg: Any, path: Path | None) -> Any:
    """Load the timing cache file (or start an empty one) into the builder config."""
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = cfg.create_timing_cache(data)
    if not cfg.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", path)
        cache = cfg.create_timing_cache(b"")
        cfg.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _progress_monitor(trt: Any, model: str) -> Any:
    """A builder progress monitor that logs phases (TensorRT >= 10), or None."""
    base: Any = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class _Monitor(base):  # type: ignore[misc]  # tensorrt has no stubs
        def __init__(self) -> None:
            base.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            logger.info("building %s: %s (%s steps)", model, phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            logger.debug("building %s: %s step %s done", model, phase_name, step)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            logger.debug("building %s: %s finished", model, phase_name)

    return _Monitor()


async def _await_with_progress(fut: asyncio.Future[bytes], model: str, interval_s: float) -> bytes:
    """Await a background build, logging "still building" every `interval_s`."""
    start = time.monotonic()
    while True:
        done, _ = await asyncio.wait({fut}, timeout=interval_s)
        if done:
            return fut.result()
        logger.info("still building TensorRT engine for %s, %s s", model, round(time.monotonic() - start))


# --- the runtime ---------------------------------------------------------------------------------


class TensorRTRuntime(Runtime):
    """Runs a cached (or freshly built) TensorRT engine on one CUDA stream."""

    progress_interval_s = PROGRESS_INTERVAL_S

    def __init__(self, package_dir: Path, manifest: Manifest, config: TensorRTConfig | None = None) -> None:
        super().__init__(package_dir, manifest)
        self.config = config or TensorRTConfig()
        limit = self.config.max_batch_size
        batched = manifest.max_batch_size > 0
        effective = manifest if limit is None or not batched else manifest.model_copy(update={"max_batch_size": limit})
        self._validate = InputValidator(effective)
        self._output_names = [t.name for t in manifest.outputs]
        self._output_dtypes = [numpy_dtype(t.datatype) for t in manifest.outputs]
        self._cudart: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self._info: RuntimeInfo | None = None
        self._lock = threading.Lock()

    @property
    def info(self) -> RuntimeInfo:
        """TensorRT version, GPU and engine file (after load)."""
        if self._info is None:
            return RuntimeInfo(backend="tensorrt", platform="tensorrt_plan", provider="not loaded")
        return self._info

    async def load(self) -> None:
        """Load the cached engine or build it (in the background, with progress), then allocate buffers."""
        if self._context is not None:
            return
        if self.manifest.format != "onnx":
            raise RuntimeFailure(f"TensorRT builds from ONNX, not {self.manifest.format!r}")
        trt = import_tensorrt()
        cudart = import_cudart()
        _check(cudart, cudart.cudaSetDevice(self.config.device_id), "cudaSetDevice")
        cc = compute_capability(cudart, self.config.device_id)
        path = engine_cache_path(
            self.config.engine_cache_dir, self.manifest, trt.__version__, cc, self.config.precision
        )
        loop = asyncio.get_running_loop()
        trt_runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = None
        source = "cache"
        if path.is_file():
            data = await loop.run_in_executor(None, path.read_bytes)
            engine = trt_runtime.deserialize_cuda_engine(data)
            if engine is None:
                logger.warning("cached engine %s does not deserialize; rebuilding", path)
        if engine is None:
            source = "built"
            data = await self._build(trt, path)
            engine = trt_runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise RuntimeFailure(f"TensorRT could not deserialize the engine it just built ({path})")
        self._cudart = cudart
        self._engine = engine
        try:
            self._setup(trt)
        except BaseException:
            await self.unload()
            raise
        logger.info(
            "model %s:%s runs on TensorRT %s sm%s %s (%s engine %s)",
            self.manifest.name,
            self.manifest.version,
            trt.__version__,
            cc,
            self.config.precision,
            source,
            path,
        )
        self._info = RuntimeInfo(
            backend="tensorrt",
            platform="tensorrt_plan",
            provider=f"cuda:{self.config.device_id}",
            precision=self.config.precision,
            detail={
                "tensorrt_version": trt.__version__,
                "compute_capability": cc,
                "engine": str(path),
                "engine_source": source,
            },
        )

    async def _build(self, trt: Any, path: Path) -> bytes:
        model_path = self.package_dir / self.manifest.model_file
        name = f"{self.manifest.name}:{self.manifest.version}"
        logger.info("building TensorRT engine for %s (%s) -> %s", name, self.config.precision, path)
        start = time.monotonic()

        def build() -> bytes:
            data = build_engine(trt, model_path, self.manifest, self.config)
            write_atomic(path, data)
            return data

        if self.config.build_in_background:
            fut = asyncio.get_running_loop().run_in_executor(None, build)
            data = await _await_with_progress(fut, name, self.progress_interval_s)
        else:
            data = build()
        logger.info("built TensorRT engine for %s in %.1f s", name, time.monotonic() - start)
        return data

    def _setup(self, trt: Any) -> None:
        """Execution context, stream, and device buffers sized for the largest batch."""
        cudart, engine = self._cudart, self._engine
        self._context = context = engine.create_execution_context()
        self._stream = create_stream(cudart, self.config.stream_priority)
        shapes = profile_shapes(self.manifest, self.config.max_batch_size, self.config.opt_batch_size)
        for spec in self.manifest.inputs:
            if spec.name in shapes:
                context.set_input_shape(spec.name, shapes[spec.name][2])
        for spec in (*self.manifest.inputs, *self.manifest.outputs):
            want = numpy_dtype(spec.datatype)
            have = np.dtype(trt.nptype(engine.get_tensor_dtype(spec.name)))
            if have != want:
                raise RuntimeFailure(f"engine tensor {spec.name!r} is {have}, manifest says {spec.datatype}")
            nbytes = max(1, math.prod(context.get_tensor_shape(spec.name)) * want.itemsize)
            ptr = _check(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc")
            self._buffers[spec.name] = (int(ptr), nbytes)
            context.set_tensor_address(spec.name, int(ptr))

    def run(self, inputs: Mapping[str, np.ndarray]) -> Tensors:
        """Copy inputs in, execute on the runtime's stream, copy outputs back."""
        context = self._context
        if context is None:
            raise RuntimeFailure("runtime is not loaded")
        feeds = self._validate(inputs)
        cudart, stream, buffers = self._cudart, self._stream, self._buffers
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        with self._lock:
            keep = []  # host arrays must outlive the async copies
            for name, arr in feeds.items():
                host = np.ascontiguousarray(arr)
                keep.append(host)
                if not context.set_input_shape(name, host.shape):
                    raise RuntimeFailure(f"TensorRT rejected shape {host.shape} for {name!r}")
                _check(
                    cudart,
                    cudart.cudaMemcpyAsync(buffers[name][0], host.ctypes.data, host.nbytes, h2d, stream),
                    "cudaMemcpyAsync",
                )
            if not context.execute_async_v3(stream):
                raise RuntimeFailure("TensorRT execute_async_v3 failed")
            outputs: Tensors = {}
            for name, dtype in zip(self._output_names, self._output_dtypes, strict=True):
                out = np.empty(tuple(context.get_tensor_shape(name)), dtype)
                _check(
                    cudart,
                    cudart.cudaMemcpyAsync(out.ctypes.data, buffers[name][0], out.nbytes, d2h, stream),
                    "cudaMemcpyAsync",
                )
                outputs[name] = out
            _check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            del keep
        return outputs

    async def unload(self) -> None:
        """Free device buffers and the stream, drop the engine. Idempotent."""
        cudart = self._cudart
        if cudart is not None:
            for ptr, _ in self._buffers.values():
                cudart.cudaFree(ptr)
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
        self._buffers = {}
        self._stream = None
        self._context = None
        self._engine = None
