"""Hardware probe: Jetson/L4T, GPU (sysfs on Jetson, NVML elsewhere), CPU, RAM, temperature, runtimes.

Everything is read below an injectable filesystem root and NVML is injectable, so tests replay
recorded files from real boards. Heavy libraries are imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import platform
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

UNAVAILABLE = "unavailable"
# Jetson GPU load files, per mille, in the order they are tried (Orin first, then Nano/Xavier).
_JETSON_LOAD_FILES = ("sys/devices/platform/gpu.0/load", "sys/devices/gpu.0/load")
_GPU_DEVFREQ = re.compile(r"gpu|ga10b|gv11b|gp10b|gm20b", re.IGNORECASE)
_CPU_ZONE = re.compile(r"cpu|x86_pkg_temp|soc", re.IGNORECASE)
_TEGRA_RELEASE = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)")
# L4T release -> JetPack (NVIDIA's JetPack archive); unknown releases report None.
_JETPACK = {
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "35.3.1": "5.1.1",
    "35.4.1": "5.1.2",
    "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JetsonInfo(_Frozen):
    """A Jetson board and its L4T/JetPack release."""

    model: str | None = Field(description="Board model from /proc/device-tree/model.")
    l4t_release: str | None = Field(description="L4T release, e.g. 35.4.1, from /etc/nv_tegra_release.")
    jetpack: str | None = Field(description="JetPack release matching the L4T release, if known.")


class GpuInfo(_Frozen):
    """One GPU as NVML (discrete) or sysfs (Jetson, integrated) sees it."""

    name: str = Field(description="GPU name.")
    memory_total_mb: int | None = Field(description="Dedicated memory in MiB; None when shared with the CPU.")
    memory_used_mb: int | None = Field(description="Used dedicated memory in MiB; None when shared.")
    compute_capability: str | None = Field(description='CUDA compute capability, e.g. "8.7".')
    utilization_pct: float | None = Field(description="GPU busy percent; None when no source could be read.")


class HardwareReport(_Frozen):
    """What this device is and what it can run, for the doctor, the birth message and provisioning."""

    machine: str = Field(description="CPU architecture (platform.machine()).")
    cpu_count: int = Field(description="Logical CPUs.")
    memory_total_mb: int | None = Field(description="RAM from /proc/meminfo, MiB.")
    memory_available_mb: int | None = Field(description="MemAvailable from /proc/meminfo, MiB.")
    cpu_temperature_c: float | None = Field(description="CPU temperature in Celsius; None if no thermal zone.")
    cpu_temperature_source: str = Field(description='Thermal zone used, or "unavailable".')
    jetson: JetsonInfo | None = Field(description="Jetson facts; None on other machines.")
    gpus: tuple[GpuInfo, ...] = Field(description="GPUs found (integrated Jetson GPU or NVML devices).")
    gpu_utilization_pct: float | None = Field(description="Load of the first GPU; None, never 0, if unknown.")
    gpu_load_source: str = Field(description='Where GPU load was read (a sysfs path, "nvml") or "unavailable".')
    tensorrt_version: str | None = Field(description="Importable TensorRT version, None if absent or not checked.")
    onnxruntime_version: str | None = Field(description="onnxruntime version, None if absent or not checked.")
    onnxruntime_providers: tuple[str, ...] = Field(description="onnxruntime's available execution providers.")
    torch_version: str | None = Field(description="torch version; None if absent or not checked.")
    torch_cuda_available: bool | None = Field(description="torch.cuda.is_available(); None if not checked.")


class GpuLoad(_Frozen):
    """GPU utilisation and where it came from."""

    utilization_pct: float | None = Field(description="Busy percent, None if unknown.")
    source: str = Field(description='Source read, or "unavailable".')


class LoadSample(_Frozen):
    """One telemetry sample; pass it back as `previous` so the next sample can compute CPU %."""

    gpu_utilization_pct: float | None = Field(description="GPU busy percent; None if unknown.")
    gpu_load_source: str = Field(description='Where GPU load was read, or "unavailable".')
    gpu_memory_used_mb: int | None = Field(description="Used GPU memory (NVML); None on shared-memory Jetsons.")
    gpu_memory_total_mb: int | None = Field(description="Total GPU memory (NVML); None on shared-memory Jetsons.")
    cpu_percent: float | None = Field(description="CPU busy percent since `previous`; None on the first sample.")
    memory_used_mb: int | None = Field(description="MemTotal - MemAvailable, MiB.")
    memory_total_mb: int | None = Field(description="MemTotal, MiB.")
    cpu_temperature_c: float | None = Field(description="CPU temperature in Celsius, None if unknown.")
    cpu_times: tuple[int, int] | None = Field(description="(busy, total) jiffies from /proc/stat, for the next delta.")


# --- file readers ------------------------------------------------------------------------------


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(errors="replace")
    except OSError:
        return None


def read_jetson(root: Path) -> JetsonInfo | None:
    """Jetson model and L4T release; None if neither file exists."""
    release_text = _read(root, "etc/nv_tegra_release")
    model_text = _read(root, "proc/device-tree/model")
    if release_text is None and (model_text is None or "jetson" not in model_text.lower()):
        return None
    model = model_text.rstrip("\x00\n ").strip() if model_text else None
    release = None
    if release_text and (m := _TEGRA_RELEASE.search(release_text)):
        release = f"{m[1]}.{m[2]}.{m[3]}"
    return JetsonInfo(model=model or None, l4t_release=release, jetpack=_JETPACK.get(release or ""))


def read_meminfo(root: Path) -> dict[str, int]:
    """/proc/meminfo as {key: kB}."""
    out: dict[str, int] = {}
    for line in (_read(root, "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0])
    return out


def read_cpu_temperature(root: Path) -> tuple[float | None, str]:
    """(Celsius, source) from the CPU thermal zone, else the first readable zone."""
    zones = sorted((root / "sys/class/thermal").glob("thermal_zone*"), key=lambda p: _zone_index(p.name))
    readable: list[tuple[str, float, str]] = []
    for zone in zones:
        raw = _read(zone, "temp")
        if raw is None or not raw.strip().lstrip("-").isdigit():
            continue
        kind = (_read(zone, "type") or "").strip()
        readable.append((kind, int(raw) / 1000.0, f"{zone.name} ({kind or 'unknown'})"))
    for kind, celsius, source in readable:
        if _CPU_ZONE.search(kind):
            return celsius, source
    if readable:
        return readable[0][1], readable[0][2]
    return None, UNAVAILABLE


def _zone_index(name: str) -> int:
    digits = name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else 1 << 30


def read_jetson_gpu_load(root: Path) -> GpuLoad:
    """Jetson GPU load (per mille in sysfs) from the first source that reads, naming it."""
    candidates = list(_JETSON_LOAD_FILES)
    for node in sorted((root / "sys/class/devfreq").glob("*")):
        if _GPU_DEVFREQ.search(node.name):
            candidates.append(f"sys/class/devfreq/{node.name}/device/load")
    for rel in candidates:
        raw = _read(root, rel)
        if raw is not None and raw.strip().isdigit():
            return GpuLoad(utilization_pct=int(raw) / 10.0, source=f"/{rel}")
    return GpuLoad(utilization_pct=None, source=UNAVAILABLE)


def read_cpu_times(root: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of the aggregate `cpu` line of /proc/stat."""
    for line in (_read(root, "proc/stat") or "").splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:] if v.isdigit()]
            if len(values) < 4:
                return None
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            total = sum(values[:8])  # guest time is already in user/nice
            return total - idle, total
    return None


# --- NVML -------------------------------------------------------------------------------------


def load_nvml() -> Any:
    """The pynvml module (nvidia-ml-py), or None if not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def read_nvml_gpus(nvml: Any) -> tuple[GpuInfo, ...]:
    """Discrete GPUs through NVML; empty if NVML is absent or has no driver."""
    if nvml is None:
        return ()
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no usable GPU
        logger.debug("NVML unavailable: %s", exc)
        return ()
    try:
        gpus = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
            try:
                util: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except Exception as exc:  # not supported on some boards / MIG: say so rather than 0
                logger.debug("NVML utilisation of GPU %s unavailable: %s", i, exc)
                util = None
            gpus.append(
                GpuInfo(
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_total_mb=int(mem.total) >> 20,
                    memory_used_mb=int(mem.used) >> 20,
                    compute_capability=f"{major}.{minor}",
                    utilization_pct=util,
                )
            )
        return tuple(gpus)
    except Exception as exc:
        logger.warning("NVML query failed: %s", exc)
        return ()
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            logger.debug("nvmlShutdown failed: %s", exc)


# --- libraries ----------------------------------------------------------------------------------


def _tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception as exc:  # a broken install (missing libnvinfer) is "absent" here
        logger.warning("tensorrt is installed but does not import: %s", exc)
        return None
    return str(tensorrt.__version__)


def _onnxruntime() -> tuple[str | None, tuple[str, ...]]:
    try:
        import onnxruntime
    except ImportError:
        return None, ()
    return str(onnxruntime.__version__), tuple(onnxruntime.get_available_providers())


def _torch() -> tuple[str | None, bool | None]:
    if importlib.util.find_spec("torch") is None:
        return None, None
    import torch

    return str(torch.__version__), bool(torch.cuda.is_available())


# --- public entry points ------------------------------------------------------------------------

_AUTO: Any = object()


def probe_hardware(
    root: Path = Path("/"), *, nvml: Any = _AUTO, check_libraries: bool = True, check_torch: bool = False
) -> HardwareReport:
    """Probe this device. `nvml`: a pynvml-like object, None to skip NVML, default = import pynvml."""
    jetson = read_jetson(root)
    mem = read_meminfo(root)
    temp, temp_source = read_cpu_temperature(root)
    gpus: tuple[GpuInfo, ...]
    if jetson is not None:
        # NVML does not work on Jetson: the integrated GPU's load comes from sysfs.
        load = read_jetson_gpu_load(root)
        gpus = (
            GpuInfo(
                name=f"{jetson.model or 'Jetson'} integrated GPU",
                memory_total_mb=None,
                memory_used_mb=None,
                compute_capability=None,
                utilization_pct=load.utilization_pct,
            ),
        )
    else:
        gpus = read_nvml_gpus(load_nvml() if nvml is _AUTO else nvml)
        util = gpus[0].utilization_pct if gpus else None
        load = GpuLoad(utilization_pct=util, source="nvml" if util is not None else UNAVAILABLE)
    trt_version = _tensorrt_version() if check_libraries else None
    ort_version, providers = _onnxruntime() if check_libraries else (None, ())
    torch_version, torch_cuda = _torch() if check_torch else (None, None)
    return HardwareReport(
        machine=platform.machine(),
        cpu_count=os.cpu_count() or 1,
        memory_total_mb=mem["MemTotal"] >> 10 if "MemTotal" in mem else None,
        memory_available_mb=mem["MemAvailable"] >> 10 if "MemAvailable" in mem else None,
        cpu_temperature_c=temp,
        cpu_temperature_source=temp_source,
        jetson=jetson,
        gpus=gpus,
        gpu_utilization_pct=load.utilization_pct,
        gpu_load_source=load.source,
        tensorrt_version=trt_version,
        onnxruntime_version=ort_version,
        onnxruntime_providers=providers,
        torch_version=torch_version,
        torch_cuda_available=torch_cuda,
    )


def sample_load(root: Path = Path("/"), *, nvml: Any = None, previous: LoadSample | None = None) -> LoadSample:
    """One cheap telemetry sample. Pass an initialised-on-demand `nvml` (pynvml) on discrete-GPU hosts."""
    mem = read_meminfo(root)
    temp, _ = read_cpu_temperature(root)
    times = read_cpu_times(root)
    cpu_percent = None
    if times is not None and previous is not None and previous.cpu_times is not None:
        busy = times[0] - previous.cpu_times[0]
        total = times[1] - previous.cpu_times[1]
        cpu_percent = round(100.0 * busy / total, 1) if total > 0 else None
    load = read_jetson_gpu_load(root)
    gpu_used = gpu_total = None
    if load.source == UNAVAILABLE and nvml is not None:
        gpus = read_nvml_gpus(nvml)
        if gpus:
            first = gpus[0]
            gpu_used, gpu_total = first.memory_used_mb, first.memory_total_mb
            if first.utilization_pct is not None:
                load = GpuLoad(utilization_pct=first.utilization_pct, source="nvml")
    total_kb, avail_kb = mem.get("MemTotal"), mem.get("MemAvailable")
    return LoadSample(
        gpu_utilization_pct=load.utilization_pct,
        gpu_load_source=load.source,
        gpu_memory_used_mb=gpu_used,
        gpu_memory_total_mb=gpu_total,
        cpu_percent=cpu_percent,
        memory_used_mb=(total_kb - avail_kb) >> 10 if total_kb is not None and avail_kb is not None else None,
        memory_total_mb=total_kb >> 10 if total_kb is not None else None,
        cpu_temperature_c=temp,
        cpu_times=times,
    )
