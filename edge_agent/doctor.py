"""`edge-agent doctor`: print the hardware report, then run every zoo model on every usable runtime
and compare it with the CPU reference, so users can check TensorRT/CUDA paths on their own hardware."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

import numpy as np

from edge_agent.probe import HardwareReport, probe_hardware
from models.errors import ModelsError, RuntimeUnavailable
from models.runtimes.config import OnnxRuntimeConfig, RuntimeConfig, TensorRTConfig, TorchConfig
from models.runtimes.factory import create_runtime
from protocols.datatypes import numpy_dtype
from protocols.manifest import MANIFEST_FILE, Manifest

logger = logging.getLogger(__name__)

Status = Literal["PASS", "FAIL", "SKIPPED"]
# (rtol, atol) against the fp32 CPU reference.
TOLERANCE: dict[str, tuple[float, float]] = {"fp32": (1e-3, 1e-4), "fp16": (2e-2, 2e-2), "int8": (1e-1, 1e-1)}
_ORT_CHECKS = (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider"))


@dataclass(frozen=True)
class CheckResult:
    """One line of the doctor's table."""

    model: str
    runtime: str
    batch: str
    status: Status
    detail: str = ""


@dataclass(frozen=True)
class Candidate:
    """A runtime to check: its label, config, precision, or why it cannot run here."""

    label: str
    config: RuntimeConfig | None
    precision: str = "fp32"
    skip: str | None = None


def default_zoo_dir() -> Path:
    """The zoo shipped inside the models package."""
    import models

    return Path(models.__file__).parent / "zoo"


def find_packages(zoo_dir: Path) -> list[Path]:
    """Package directories `<zoo>/packages/<name>/<version>/` (or `<zoo>/<name>/<version>/`)."""
    base = zoo_dir / "packages" if (zoo_dir / "packages").is_dir() else zoo_dir
    return sorted(p.parent for p in base.glob(f"*/*/{MANIFEST_FILE}"))


def read_package_manifest(path: Path) -> Manifest:
    """The manifest via models.package when present, else parsed directly."""
    try:
        from models.package import open_package
    except ImportError:
        return Manifest.model_validate_json((path / MANIFEST_FILE).read_bytes())
    return open_package(path).manifest


def candidates(manifest: Manifest, report: HardwareReport, engine_dir: Path) -> list[Candidate]:
    """Runtimes to compare with the reference for this model on this machine."""
    out: list[Candidate] = []
    if manifest.format == "onnx":
        for short, provider in _ORT_CHECKS:
            cfg = OnnxRuntimeConfig(providers=(short,))
            if provider not in report.onnxruntime_providers:
                out.append(Candidate(f"onnxruntime/{short}", cfg, skip=f"{provider} not available"))
            else:
                out.append(Candidate(f"onnxruntime/{short}", cfg))
        for precision in ("fp32", *(p for p in manifest.precision if p == "fp16")):
            trt_cfg = TensorRTConfig(precision=precision, engine_cache_dir=engine_dir)
            skip = None if importlib.util.find_spec("tensorrt") else "tensorrt not installed"
            out.append(Candidate(f"tensorrt/{precision}", trt_cfg, precision=precision, skip=skip))
    else:
        skip = None if report.torch_cuda_available else "torch CUDA not available"
        out.append(Candidate("torch/cuda", TorchConfig(device="cuda"), skip=skip))
    return out


def reference_config(manifest: Manifest) -> RuntimeConfig:
    """onnxruntime on CPU for ONNX, torch on CPU for torch formats."""
    if manifest.format == "onnx":
        return OnnxRuntimeConfig(providers=("cpu",))
    return TorchConfig(device="cpu")


def make_batches(manifest: Manifest, seed: int = 0) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Deterministic random inputs at batch 1 and max_batch_size (one unbatched run if 0)."""
    sizes = [1] if manifest.max_batch_size <= 1 else [1, manifest.max_batch_size]
    rng = np.random.default_rng(seed)
    batches = []
    for size in sizes:
        feeds: dict[str, np.ndarray] = {}
        for spec in manifest.inputs:
            dtype = numpy_dtype(spec.datatype)
            shape = tuple(size if (i == 0 and manifest.max_batch_size) else max(d, 1) for i, d in enumerate(spec.shape))
            if dtype.kind == "f":
                feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind in "iu":
                feeds[spec.name] = rng.integers(0, 8, shape).astype(dtype)
            elif dtype.kind == "b":
                feeds[spec.name] = rng.integers(0, 2, shape).astype(dtype)
            else:
                raise ValueError(f"input {spec.name!r}: doctor cannot make {spec.datatype} data")
        batches.append((size if manifest.max_batch_size else 0, feeds))
    return batches


def compare(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], precision: str) -> str | None:
    """None if every output is within tolerance, else what differs."""
    rtol, atol = TOLERANCE[precision]
    for name, ref in want.items():
        out = got.get(name)
        if out is None or out.shape != ref.shape:
            return f"{name}: shape {None if out is None else out.shape} != {ref.shape}"
        if not np.allclose(out.astype(np.float64), ref.astype(np.float64), rtol=rtol, atol=atol):
            err = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
            return f"{name}: max abs error {err:.3g} (rtol {rtol}, atol {atol})"
    return None


async def _run_all(
    package: Path, manifest: Manifest, config: RuntimeConfig, batches: list[tuple[int, dict[str, np.ndarray]]]
) -> tuple[str, list[dict[str, np.ndarray]]]:
    """(provider that actually ran, outputs per batch)."""
    async with create_runtime(package, manifest, config) as rt:
        outputs = [await rt.infer(feeds) for _, feeds in batches]
        return rt.info.provider, outputs


async def check_model(package: Path, report: HardwareReport, engine_dir: Path) -> list[CheckResult]:
    """Reference run plus every candidate runtime for one package."""
    try:
        manifest = await asyncio.to_thread(read_package_manifest, package)
    except (ModelsError, ValueError, OSError) as exc:
        return [CheckResult(package.name, "-", "-", "FAIL", f"cannot read package: {exc}")]
    model = f"{manifest.name}:{manifest.version}"
    try:
        batches = make_batches(manifest)
    except ValueError as exc:
        return [CheckResult(model, "-", "-", "SKIPPED", str(exc))]
    ref_cfg = reference_config(manifest)
    ref_label = f"{ref_cfg.type}/cpu (reference)"
    try:
        _, reference = await _run_all(package, manifest, ref_cfg, batches)
    except RuntimeUnavailable as exc:
        return [CheckResult(model, ref_label, "-", "SKIPPED", str(exc))]
    except Exception as exc:
        return [CheckResult(model, ref_label, "-", "FAIL", f"{type(exc).__name__}: {exc}")]
    results = [CheckResult(model, ref_label, str(b), "PASS") for b, _ in batches]
    for cand in candidates(manifest, report, engine_dir):
        if cand.skip is not None or cand.config is None:
            results.append(CheckResult(model, cand.label, "-", "SKIPPED", cand.skip or ""))
            continue
        try:
            provider, outputs = await _run_all(package, manifest, cand.config, batches)
        except RuntimeUnavailable as exc:
            results.append(CheckResult(model, cand.label, "-", "SKIPPED", str(exc)))
            continue
        except Exception as exc:
            results.append(CheckResult(model, cand.label, "-", "FAIL", f"{type(exc).__name__}: {exc}"))
            continue
        if isinstance(cand.config, OnnxRuntimeConfig) and provider == "CPUExecutionProvider":
            # ORT silently falls back to CPU when a GPU provider cannot start: a fault on a GPU machine.
            status: Status = "FAIL" if report.gpus else "SKIPPED"
            results.append(CheckResult(model, cand.label, "-", status, "session fell back to CPUExecutionProvider"))
            continue
        for (batch, _), got, want in zip(batches, outputs, reference, strict=True):
            diff = compare(got, want, cand.precision)
            results.append(CheckResult(model, cand.label, str(batch), "FAIL" if diff else "PASS", diff or provider))
    return results


def format_report(report: HardwareReport) -> list[str]:
    """Human-readable lines of the hardware report."""
    lines = [f"machine      {report.machine}, {report.cpu_count} CPUs, RAM {report.memory_total_mb} MiB"]
    if report.jetson is not None:
        j = report.jetson
        lines.append(f"jetson       {j.model} (L4T {j.l4t_release}, JetPack {j.jetpack or 'unknown'})")
    for gpu in report.gpus:
        lines.append(
            f"gpu          {gpu.name} cc {gpu.compute_capability or '?'} mem {gpu.memory_total_mb or 'shared'} MiB"
        )
    util = "n/a" if report.gpu_utilization_pct is None else f"{report.gpu_utilization_pct:.1f} %"
    lines.append(f"gpu load     {util} (source: {report.gpu_load_source})")
    temp = "n/a" if report.cpu_temperature_c is None else f"{report.cpu_temperature_c:.1f} C"
    lines.append(f"cpu temp     {temp} (source: {report.cpu_temperature_source})")
    lines.append(f"tensorrt     {report.tensorrt_version or 'not installed'}")
    providers = ", ".join(report.onnxruntime_providers)
    lines.append(f"onnxruntime  {report.onnxruntime_version or 'not installed'} [{providers}]")
    cuda = {None: "not checked", True: "CUDA available", False: "no CUDA"}[report.torch_cuda_available]
    lines.append(f"torch        {report.torch_version or 'not installed'} ({cuda})")
    return lines


async def run_doctor(zoo_dir: Path | None, out: TextIO, *, probe_root: Path = Path("/")) -> int:
    """Print the hardware report and a PASS/FAIL/SKIPPED table; 0 if nothing failed."""
    report = await asyncio.to_thread(probe_hardware, probe_root, check_torch=True)
    for line in format_report(report):
        print(line, file=out)
    zoo = zoo_dir if zoo_dir is not None else default_zoo_dir()
    packages = find_packages(zoo)
    print(file=out)
    if not packages:
        print(f"no model packages under {zoo}", file=out)
        return 0
    results: list[CheckResult] = []
    # Engines built by the doctor are throw-away: it checks the toolchain, not the agent's cache.
    with tempfile.TemporaryDirectory(prefix="edgefleet-doctor-") as engines:
        for package in packages:
            results.extend(await check_model(package, report, Path(engines)))
    widths = [max(len(getattr(r, f)) for r in results) for f in ("model", "runtime", "batch")]
    header = ("MODEL", "RUNTIME", "BATCH")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print(f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:<{widths[2]}}  RESULT", file=out)
    for r in results:
        detail = f"  {r.detail}" if r.detail else ""
        reason = f" ({r.detail})" if r.status == "SKIPPED" else ""
        line = f"{r.model:<{widths[0]}}  {r.runtime:<{widths[1]}}  {r.batch:<{widths[2]}}  {r.status}"
        print(line + (reason if reason else detail), file=out)
    failed = sum(r.status == "FAIL" for r in results)
    passed = sum(r.status == "PASS" for r in results)
    skipped = sum(r.status == "SKIPPED" for r in results)
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped", file=out)
    return 1 if failed else 0
