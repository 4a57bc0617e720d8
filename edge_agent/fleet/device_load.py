"""Adapter from the hardware probe (edge_agent.probe) to the wire's HardwareSummary and DeviceLoad."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from edge_agent import probe
from protocols.messages import DeviceLoad, HardwareSummary

log = logging.getLogger(__name__)


class DeviceLoadSource(Protocol):
    """What telemetry reads for the device-wide part of a report."""

    def sample(self) -> DeviceLoad:
        """Device load since the previous sample (blocking file reads: call it off the event loop)."""
        ...


def gpu_source_name(source: str) -> str:
    """The probe's source as the wire names it: nvml, jetson-sysfs:<path> or unavailable."""
    if source in ("nvml", probe.UNAVAILABLE) or ":" in source:
        return source
    return f"jetson-sysfs:{source}"


def hardware_summary(report: probe.HardwareReport) -> HardwareSummary:
    """The birth/provisioning HardwareSummary of a probe report."""
    if report.jetson is not None:
        platform = "jetson"
    elif report.machine in ("x86_64", "AMD64"):
        platform = "x86_64-gpu" if report.gpus else "x86_64-cpu"
    elif report.machine in ("aarch64", "arm64"):
        platform = "aarch64-cpu"
    else:
        platform = "other"
    gpu = report.gpus[0] if report.gpus else None
    backends = [f"onnxruntime:{p}" for p in report.onnxruntime_providers]
    if report.tensorrt_version:
        backends.append(f"tensorrt:{report.tensorrt_version}")
    if report.torch_version:
        backends.append(f"torch:{'cuda' if report.torch_cuda_available else 'cpu'}")
    model = (report.jetson.model if report.jetson else None) or _cpu_model()
    return HardwareSummary(
        platform=platform,
        model=(model or "")[:200],
        l4t_release=report.jetson.l4t_release if report.jetson else None,
        gpu_name=gpu.name if gpu else None,
        compute_capability=gpu.compute_capability if gpu else None,
        cpu_count=max(1, report.cpu_count),
        ram_mb=report.memory_total_mb or 0,
        backends=tuple(backends),
    )


def _cpu_model(root: Path = Path("/")) -> str | None:
    try:
        for line in (root / "proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


class ProbeLoadSource:
    """DeviceLoad from `probe.sample_load`, keeping the previous sample for CPU deltas. Thread-safe."""

    def __init__(self, root: Path = Path("/"), *, nvml: Any = None, cpu_count: int | None = None) -> None:
        self.root = root
        self.nvml = nvml
        self.cpu_count = cpu_count or os.cpu_count() or 1
        self._lock = threading.Lock()
        # Prime the CPU counters so the first report already covers an interval.
        self._previous = probe.sample_load(root, nvml=nvml)

    def sample(self) -> DeviceLoad:
        """Sample now; GPU figures are None with gpu_source saying why, never a silent 0."""
        with self._lock:
            current = probe.sample_load(self.root, nvml=self.nvml, previous=self._previous)
            self._previous = current
        # The wire counts CPU as 0-100 per core (top's convention); the probe gives 0-100 overall.
        cpu = (current.cpu_percent or 0.0) * self.cpu_count
        return DeviceLoad(
            cpu_percent=round(cpu, 1),
            ram_used_mb=current.memory_used_mb or 0,
            ram_total_mb=current.memory_total_mb or 0,
            temperature_c=current.cpu_temperature_c,
            gpu_util_percent=current.gpu_utilization_pct,
            gpu_mem_used_mb=current.gpu_memory_used_mb,
            gpu_mem_total_mb=current.gpu_memory_total_mb,
            gpu_source=gpu_source_name(current.gpu_load_source),
        )
