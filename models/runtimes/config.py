"""Per-backend runtime configs, discriminated on `type`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

OrtProvider = Literal["tensorrt", "cuda", "cpu"]
TrtPrecision = Literal["fp32", "fp16", "int8"]


class _Config(BaseModel):
    """Base of runtime configs: unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxRuntimeConfig(_Config):
    """onnxruntime session options and execution providers."""

    type: Literal["onnxruntime"] = Field(default="onnxruntime", description="Backend discriminator.")
    providers: tuple[OrtProvider, ...] = Field(
        default=("tensorrt", "cuda", "cpu"),
        min_length=1,
        description="Execution providers in preference order; those not installed are skipped, CPU is always last.",
    )
    intra_op_threads: PositiveInt | None = Field(
        default=None, description="Threads inside one operator; None = onnxruntime's default (one per core)."
    )
    inter_op_threads: PositiveInt | None = Field(
        default=None, description="Threads across independent operators; None = onnxruntime's default."
    )
    allow_spinning: bool = Field(
        default=True,
        description=(
            "Let onnxruntime's thread-pool threads busy-wait for work between runs (lower latency, burns CPU). "
            "The safety cell turns it off: a spinning real-time thread would hold a core."
        ),
    )
    trt_fp16: bool = Field(default=False, description="Let the TensorRT execution provider use FP16 kernels.")
    trt_engine_cache_dir: Path | None = Field(
        default=None, description="Directory where the TensorRT execution provider caches engines; None = no cache."
    )
    trt_timing_cache_dir: Path | None = Field(
        default=None, description="Directory of the TensorRT execution provider's timing cache; None = no cache."
    )
    device_id: NonNegativeInt = Field(default=0, description="CUDA device index for the CUDA/TensorRT providers.")


class TensorRTConfig(_Config):
    """Native TensorRT: engine built on the device from the package's ONNX model, then cached."""

    type: Literal["tensorrt"] = Field(default="tensorrt", description="Backend discriminator.")
    precision: TrtPrecision = Field(
        default="fp16", description="Build precision; int8 needs a model with Q/DQ nodes (explicit quantization)."
    )
    workspace_mb: PositiveInt = Field(default=1024, description="Builder workspace memory pool limit in MiB.")
    engine_cache_dir: Path = Field(
        default=Path("/var/cache/edgefleet/engines"), description="Directory of built engines (.plan files)."
    )
    timing_cache: Path | None = Field(
        default=None, description="Timing cache file, loaded before and saved after a build; None = none."
    )
    max_batch_size: PositiveInt | None = Field(
        default=None, description="Largest batch of the optimization profile; None = the manifest's max_batch_size."
    )
    opt_batch_size: PositiveInt | None = Field(
        default=None, description="Batch size TensorRT tunes kernels for; None = the profile's maximum."
    )
    build_in_background: bool = Field(
        default=True,
        description=(
            "Build the engine in a worker thread and log progress while load() awaits it; "
            "False builds in the calling thread (offline compile tools)."
        ),
    )
    device_id: NonNegativeInt = Field(default=0, description="CUDA device index.")
    stream_priority: Literal["normal", "high"] = Field(
        default="normal",
        description=(
            "CUDA stream priority of inference: high = the device's greatest priority (the safety cell sets it), "
            "so its kernels are scheduled ahead of normal-priority streams' pending work on the same GPU."
        ),
    )


class TorchConfig(_Config):
    """PyTorch for TorchScript or torch.export programs."""

    type: Literal["torch"] = Field(default="torch", description="Backend discriminator.")
    device: Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?)$")] = Field(
        default="cpu", description="Torch device: cpu, cuda or cuda:N."
    )
    threads: PositiveInt | None = Field(
        default=None, description="torch.set_num_threads for CPU inference; None = torch's default."
    )
    stream_priority: Literal["normal", "high"] = Field(
        default="normal",
        description=(
            "CUDA stream priority of inference: high = the device's greatest priority (the safety cell sets it), "
            "so its kernels are scheduled ahead of normal-priority streams' pending work on the same GPU."
        ),
    )


RuntimeConfig = Annotated[OnnxRuntimeConfig | TensorRTConfig | TorchConfig, Field(discriminator="type")]
