"""Hardware probe against files recorded from real boards, and a fake NVML at the library boundary."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.probe import (
    UNAVAILABLE,
    probe_hardware,
    read_cpu_times,
    read_jetson,
    read_jetson_gpu_load,
    sample_load,
)

DATA = Path(__file__).parent / "data" / "probe"


@dataclass
class _Mem:
    total: int
    used: int


@dataclass
class _Util:
    gpu: int


class FakeNvml:
    """Stands in for pynvml (the driver boundary): one GPU, or an init failure."""

    def __init__(self, *, fail_init: bool = False, util: int | None = 37) -> None:
        self.fail_init = fail_init
        self.util = util
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"NVIDIA L4"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Mem:
        return _Mem(total=23034 << 20, used=1201 << 20)

    def nvmlDeviceGetCudaComputeCapability(self, handle: int) -> tuple[int, int]:
        return 8, 9

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Util:
        if self.util is None:
            raise RuntimeError("Not Supported")
        return _Util(gpu=self.util)


def test_orin_jetpack6() -> None:
    report = probe_hardware(DATA / "jetson-orin-jp6", nvml=FakeNvml(), check_libraries=False)
    assert report.jetson is not None
    assert report.jetson.model == "NVIDIA Jetson AGX Orin Developer Kit"
    assert report.jetson.l4t_release == "36.3.0"
    assert report.jetson.jetpack == "6.0"
    assert report.gpu_utilization_pct == pytest.approx(43.7)
    assert report.gpu_load_source == "/sys/devices/platform/gpu.0/load"
    assert len(report.gpus) == 1 and report.gpus[0].memory_total_mb is None  # shared memory; NVML not used
    assert report.memory_total_mb == 64335836 >> 10
    assert report.memory_available_mb == 60812340 >> 10
    assert report.cpu_temperature_c == pytest.approx(48.312)
    assert report.cpu_temperature_source == "thermal_zone0 (cpu-thermal)"
    assert report.tensorrt_version is None and report.torch_cuda_available is None


def test_xavier_jetpack5_zero_load_is_a_reading() -> None:
    report = probe_hardware(DATA / "jetson-xavier-jp5", check_libraries=False)
    assert report.jetson is not None
    assert report.jetson.model == "NVIDIA Jetson Xavier NX Developer Kit"
    assert report.jetson.l4t_release == "35.4.1"
    assert report.jetson.jetpack == "5.1.2"
    # An idle GPU reads 0 from a named source: that is a real 0, not a missing value.
    assert report.gpu_utilization_pct == 0.0
    assert report.gpu_load_source == "/sys/devices/gpu.0/load"
    assert report.cpu_temperature_c == pytest.approx(41.5)
    assert report.cpu_temperature_source == "thermal_zone0 (CPU-therm)"


def test_x86_cpu_only_has_no_gpu_and_says_so() -> None:
    report = probe_hardware(DATA / "x86-cpu", nvml=FakeNvml(fail_init=True), check_libraries=False)
    assert report.jetson is None
    assert report.gpus == ()
    assert report.gpu_utilization_pct is None
    assert report.gpu_load_source == UNAVAILABLE
    assert report.cpu_temperature_c == pytest.approx(52.0)
    assert report.cpu_temperature_source == "thermal_zone1 (x86_pkg_temp)"
    assert report.memory_total_mb == 16318012 >> 10


def test_x86_with_discrete_gpu_through_nvml() -> None:
    nvml = FakeNvml()
    report = probe_hardware(DATA / "x86-cpu", nvml=nvml, check_libraries=False)
    (gpu,) = report.gpus
    assert gpu.name == "NVIDIA L4"
    assert gpu.compute_capability == "8.9"
    assert (gpu.memory_total_mb, gpu.memory_used_mb) == (23034, 1201)
    assert report.gpu_utilization_pct == 37.0
    assert report.gpu_load_source == "nvml"
    assert nvml.shutdowns == 1


def test_nvml_without_utilisation_is_unavailable_not_zero() -> None:
    report = probe_hardware(DATA / "x86-cpu", nvml=FakeNvml(util=None), check_libraries=False)
    assert report.gpus[0].utilization_pct is None
    assert report.gpu_utilization_pct is None
    assert report.gpu_load_source == UNAVAILABLE


def test_devfreq_fallback_and_nothing(tmp_path: Path) -> None:
    shutil.copytree(DATA / "jetson-orin-jp6", tmp_path / "orin")
    (tmp_path / "orin/sys/devices/platform/gpu.0/load").unlink()
    assert read_jetson_gpu_load(tmp_path / "orin").source == UNAVAILABLE
    node = tmp_path / "orin/sys/class/devfreq/17000000.gpu/device"
    node.mkdir(parents=True)
    (node / "load").write_text("125\n")
    load = read_jetson_gpu_load(tmp_path / "orin")
    assert load.utilization_pct == pytest.approx(12.5)
    assert load.source == "/sys/class/devfreq/17000000.gpu/device/load"
    report = probe_hardware(tmp_path / "orin", check_libraries=False)
    assert report.gpu_load_source == load.source


def test_jetson_detection_edge_cases(tmp_path: Path) -> None:
    assert read_jetson(tmp_path) is None
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("garbage\n")
    info = read_jetson(tmp_path)
    assert info is not None and info.l4t_release is None and info.model is None
    (tmp_path / "etc/nv_tegra_release").write_text("# R99 (release), REVISION: 1.0, GCID: 1\n")
    info = read_jetson(tmp_path)
    assert info is not None and info.l4t_release == "99.1.0" and info.jetpack is None


def test_report_is_frozen() -> None:
    report = probe_hardware(DATA / "x86-cpu", nvml=None, check_libraries=False)
    with pytest.raises(ValueError, match="frozen"):
        report.cpu_count = 3  # type: ignore[misc]


def test_libraries_checked_lazily() -> None:
    report = probe_hardware(DATA / "x86-cpu", nvml=None)
    assert report.onnxruntime_version is not None
    assert "CPUExecutionProvider" in report.onnxruntime_providers
    assert report.torch_version is None  # torch only when asked


@pytest.mark.skipif(
    "torch" not in sys.modules and not __import__("importlib").util.find_spec("torch"), reason="torch not installed"
)
def test_torch_check_on_request() -> None:
    report = probe_hardware(DATA / "x86-cpu", nvml=None, check_libraries=False, check_torch=True)
    assert report.torch_version is not None
    assert isinstance(report.torch_cuda_available, bool)


def test_sample_load_cpu_percent_and_memory(tmp_path: Path) -> None:
    root = tmp_path / "orin"
    shutil.copytree(DATA / "jetson-orin-jp6", root)
    first = sample_load(root)
    assert first.cpu_percent is None
    assert first.cpu_times == read_cpu_times(root)
    assert first.gpu_utilization_pct == pytest.approx(43.7)
    assert first.gpu_load_source == "/sys/devices/platform/gpu.0/load"
    assert first.memory_used_mb == (64335836 - 60812340) >> 10
    assert first.gpu_memory_used_mb is None
    # 100 more jiffies of which 25 busy -> 25 %.
    (root / "proc/stat").write_text("cpu  184543 312 60231 9823487 2211 0 1408 0 0 0\n")
    second = sample_load(root, previous=first)
    assert second.cpu_percent == pytest.approx(25.0)


def test_sample_load_nvml_and_none(tmp_path: Path) -> None:
    sample = sample_load(DATA / "x86-cpu", nvml=FakeNvml())
    assert sample.gpu_load_source == "nvml"
    assert sample.gpu_utilization_pct == 37.0
    assert (sample.gpu_memory_used_mb, sample.gpu_memory_total_mb) == (1201, 23034)
    bare = sample_load(tmp_path)
    assert bare.gpu_load_source == UNAVAILABLE
    assert bare.gpu_utilization_pct is None
    assert bare.memory_total_mb is None and bare.cpu_temperature_c is None and bare.cpu_times is None
