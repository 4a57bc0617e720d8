"""MQTT and provisioning messages. Every message carries `v`, the protocol version."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    TypeAdapter,
    model_validator,
)

from protocols.common import DeviceId, Name, Sha256Hex, Version, WireModel
from protocols.pipeline import PipelineSpec, ShadowCompare
from protocols.signature import ManifestSignature

Labels = dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,63}$")], Annotated[str, Field(max_length=253)]]
# Every message's `v`; equal to protocols.common.PROTOCOL_VERSION.
V = Literal[1]


# --- shared parts -------------------------------------------------------------------------------


class HardwareSummary(WireModel):
    """What a device is: sent at provisioning and in the birth message."""

    platform: Literal["jetson", "x86_64-gpu", "x86_64-cpu", "aarch64-cpu", "other"] = Field(description="Kind of node.")
    model: str = Field(default="", max_length=200, description="Board or CPU model, e.g. Jetson AGX Orin.")
    l4t_release: str | None = Field(default=None, description="Jetson Linux release, e.g. 36.3.0.")
    gpu_name: str | None = Field(default=None, description="GPU name, if any.")
    compute_capability: str | None = Field(default=None, description="GPU compute capability, e.g. 8.7.")
    cpu_count: PositiveInt = Field(description="Logical CPUs.")
    ram_mb: NonNegativeInt = Field(description="Total RAM in MiB.")
    backends: tuple[str, ...] = Field(
        default=(), description="Usable runtimes: onnxruntime:<provider>, tensorrt:<ver>, torch:<device>."
    )


class InstalledModel(WireModel):
    """One model version installed on a device."""

    name: Name = Field(description="Model name.")
    version: Version = Field(description="Model version.")
    active: bool = Field(description="True if this version serves requests.")
    error: str | None = Field(
        default=None, max_length=2000, description="Why it failed to load or warm up (then it is not served)."
    )


# --- state (retained; birth or last will) ---------------------------------------------------------


class DeviceBirth(WireModel):
    """Retained on `state` after the agent (re)subscribes: the device is online."""

    v: V = Field(default=1, description="Protocol version.")
    status: Literal["online"] = Field(default="online", description="Discriminator.")
    device_id: DeviceId = Field(description="Device id (certificate CN).")
    boot_id: str = Field(min_length=1, max_length=64, description="Changes on every agent start.")
    agent_version: str = Field(max_length=64, description="edgefleet version of the agent.")
    sent_at: float = Field(description="Unix time (s) the message was made.")
    hardware: HardwareSummary = Field(description="What the device is.")
    models: tuple[InstalledModel, ...] = Field(default=(), description="Installed model versions.")
    pipelines: tuple[Name, ...] = Field(default=(), description="Pipelines served.")
    telemetry_interval_s: PositiveFloat = Field(description="Period of load reports.")


class DeviceOffline(WireModel):
    """The last will (reason `lost`) or a clean shutdown's last message on `state`."""

    v: V = Field(default=1, description="Protocol version.")
    status: Literal["offline"] = Field(default="offline", description="Discriminator.")
    device_id: DeviceId = Field(description="Device id (certificate CN).")
    reason: Literal["lost", "shutdown"] = Field(description="lost = broker fired the will; shutdown = clean stop.")


DeviceState = Annotated[DeviceBirth | DeviceOffline, Field(discriminator="status")]
DEVICE_STATE: TypeAdapter[DeviceBirth | DeviceOffline] = TypeAdapter(DeviceState)


# --- telemetry ---------------------------------------------------------------------------------


class RouteCounts(WireModel):
    """Where requests went since the last report."""

    local: NonNegativeInt = Field(default=0, description="Answered by the device.")
    cloud: NonNegativeInt = Field(default=0, description="Answered by a cloud pool.")
    rejected: NonNegativeInt = Field(default=0, description="Refused at admission (503).")
    expired: NonNegativeInt = Field(default=0, description="Deadline passed while queued (503).")


class PoolOffer(WireModel):
    """Overflow one pipeline sent to one cloud pool over the report interval (answered or not)."""

    pool: Name = Field(description="Pool name.")
    requests: NonNegativeInt = Field(description="Requests sent to the pool.")
    rows: NonNegativeInt = Field(description="Rows (batch entries) those requests carried.")


class TensorProfile(WireModel):
    """Streaming statistics of one tensor over the report interval (drift monitoring, docs/rollouts.md)."""

    name: str = Field(min_length=1, max_length=128, description="Tensor name.")
    values: NonNegativeInt = Field(description="Number of elements seen over the interval.")
    mean: float = Field(description="Mean of the elements.")
    std: NonNegativeFloat = Field(description="Standard deviation of the elements.")


class VersionProfile(WireModel):
    """What one model version of a pipeline saw and answered over the interval (answered requests only)."""

    version: Version = Field(description="Model version that answered.")
    requests: NonNegativeInt = Field(description="Requests profiled.")
    inputs: tuple[TensorProfile, ...] = Field(default=(), description="Per input tensor (numeric ones).")
    outputs: tuple[TensorProfile, ...] = Field(default=(), description="Per output tensor (numeric ones).")
    classes: tuple[NonNegativeInt, ...] = Field(
        default=(), max_length=1024, description="Top-1 class histogram of the first output, for classifiers."
    )


class ShadowStats(WireModel):
    """Shadow comparisons of one pipeline over the interval (the shadow's outputs are never returned)."""

    version: Version = Field(description="The shadow version.")
    sampled: NonNegativeInt = Field(default=0, description="Requests picked for the shadow.")
    compared: NonNegativeInt = Field(default=0, description="Shadow runs compared with the served outputs.")
    agreed: NonNegativeInt = Field(default=0, description="Compared runs that agreed (top-1 or within tolerance).")
    dropped: NonNegativeInt = Field(default=0, description="Picked but not run: the device had a backlog.")
    failed: NonNegativeInt = Field(default=0, description="Shadow runs that failed or expired.")
    max_abs_diff: NonNegativeFloat | None = Field(default=None, description="Largest output difference seen.")


class PipelineLoad(WireModel):
    """Load of one pipeline over the report interval."""

    name: Name = Field(description="Pipeline name.")
    model: Name = Field(description="Model name.")
    version: Version | None = Field(default=None, description="Model version serving.")
    priority: Literal["safety", "standard", "best_effort"] = Field(description="Priority class.")
    requests_per_s: NonNegativeFloat = Field(description="Requests received per second.")
    routes: RouteCounts = Field(description="Where requests went.")
    errors: NonNegativeInt = Field(default=0, description="Requests answered with a 4xx/5xx other than 503.")
    p50_ms: NonNegativeFloat | None = Field(default=None, description="Median latency; None if no requests.")
    p99_ms: NonNegativeFloat | None = Field(default=None, description="99th percentile latency.")
    queue_depth: NonNegativeInt = Field(default=0, description="Requests queued at report time.")
    offered: tuple[PoolOffer, ...] = Field(default=(), description="Overflow sent to each cloud pool.")
    shadow: ShadowStats | None = Field(default=None, description="Shadow comparisons, when the pipeline has one.")
    profiles: tuple[VersionProfile, ...] = Field(
        default=(), description="Input/output statistics per answering version (drift monitoring)."
    )


class DeviceLoad(WireModel):
    """Device-wide load. GPU fields are None when no source exists, with `gpu_source` saying why."""

    cpu_percent: NonNegativeFloat = Field(description="CPU utilisation over the interval, 0-100 x cores.")
    ram_used_mb: NonNegativeInt = Field(description="RAM in use, MiB.")
    ram_total_mb: NonNegativeInt = Field(description="RAM total, MiB.")
    temperature_c: float | None = Field(default=None, description="Hottest thermal zone, Celsius.")
    gpu_util_percent: NonNegativeFloat | None = Field(default=None, description="GPU utilisation 0-100.")
    gpu_mem_used_mb: NonNegativeInt | None = Field(default=None, description="GPU memory in use, MiB.")
    gpu_mem_total_mb: NonNegativeInt | None = Field(default=None, description="GPU memory total, MiB.")
    gpu_source: str = Field(description="Where GPU figures came from (nvml, jetson-sysfs:<path>, unavailable).")


class LoadReport(WireModel):
    """Periodic load report on `telemetry` (QoS 1; kept on disk until the hub's `TelemetryAck` names it)."""

    v: V = Field(default=1, description="Protocol version.")
    device_id: DeviceId = Field(description="Device id.")
    boot_id: str = Field(min_length=1, max_length=64, description="Agent start this sequence belongs to.")
    seq: NonNegativeInt = Field(description="Per-device sequence number, +1 per report, persisted across restarts.")
    sent_at: float = Field(description="Unix time (s) the report was made (not when it was delivered).")
    interval_s: PositiveFloat = Field(description="Length of the interval the figures cover.")
    pipelines: tuple[PipelineLoad, ...] = Field(default=(), description="Per-pipeline load.")
    device: DeviceLoad = Field(description="Device-wide load.")
    models: tuple[InstalledModel, ...] = Field(default=(), description="Installed model versions.")


# A run of stored sequence numbers, first and last included.
SeqRange = tuple[NonNegativeInt, NonNegativeInt]


class TelemetryAck(WireModel):
    """Hub -> device on `telemetry/ack` (QoS 1): these reports of one boot are in the hub's store.

    Sent after the database commit (a report stored earlier and received again is acknowledged again);
    the agent keeps each report on disk until an ack names it (docs/telemetry.md)."""

    v: V = Field(default=1, description="Protocol version.")
    device_id: DeviceId = Field(description="Device whose reports are acknowledged.")
    boot_id: str = Field(min_length=1, max_length=64, description="Agent start the sequence numbers belong to.")
    ranges: tuple[SeqRange, ...] = Field(
        min_length=1, max_length=1024, description="Stored seqs as [first, last] runs, both included, ascending."
    )
    sent_at: float = Field(description="Unix time (s) the hub made the ack.")


# --- desired / reported state ----------------------------------------------------------------------


class DesiredModel(WireModel):
    """A model version the device must have active."""

    name: Name = Field(description="Model name.")
    version: Version = Field(description="Model version.")
    sha256: Sha256Hex = Field(description="sha256 of the package archive (.tar) at `url`.")
    size: NonNegativeInt = Field(description="Size of the package archive in bytes.")
    url: str = Field(min_length=1, max_length=2048, description="HTTPS URL of the package archive on the hub.")
    signature: ManifestSignature = Field(description="Hub signature over the package manifest.")


class PoolEndpoint(WireModel):
    """A cloud GPU pool speaking KServe V2 over HTTP(S)."""

    name: Name = Field(description="Pool name.")
    url: str = Field(min_length=1, max_length=2048, description="Base URL; requests go to {url}/v2/models/...")
    models: tuple[Name, ...] = Field(default=(), description="Models it serves; empty = same names as local.")
    cost: PositiveFloat = Field(default=1.0, description="Relative cost per request; best-effort goes cheapest.")


class ApplyPolicy(WireModel):
    """When the agent may switch to a new version after it is prepared and warm."""

    mode: Literal["immediate", "safety_idle", "window"] = Field(
        default="immediate", description="immediate; when safety pipelines are idle; or in a window (UTC)."
    )
    window_start_utc: str | None = Field(default=None, pattern=r"^\d\d:\d\d$", description="HH:MM, mode=window.")
    window_end_utc: str | None = Field(default=None, pattern=r"^\d\d:\d\d$", description="HH:MM, mode=window.")
    safety_idle_ms: PositiveInt = Field(default=500, description="Quiet time that counts as idle.")


class DesiredTrial(WireModel):
    """A rollout step on the device: a candidate version tried next to the desired (serving) version of its
    model, on that model's pipelines (docs/rollouts.md). Removing the trial removes the candidate."""

    mode: Literal["shadow", "split"] = Field(
        description="shadow: sees `share` of the inputs, never answers; split: answers `share` of the requests."
    )
    share: float = Field(gt=0.0, le=1.0, description="Share of the pipelines' requests (0..1).")
    candidate: DesiredModel = Field(description="The candidate version's package (same model name).")
    compare: ShadowCompare = Field(default="auto", description="How shadow outputs are compared (shadow mode).")
    tolerance: NonNegativeFloat = Field(default=1e-3, description="Max abs difference that still agrees.")
    allow_safety: bool = Field(default=False, description="Apply to safety pipelines too (the operator's say-so).")


class DesiredState(WireModel):
    """Retained on `desired`: what the hub wants the device to run. `revision` only grows."""

    v: V = Field(default=1, description="Protocol version.")
    device_id: DeviceId = Field(description="Device id.")
    revision: PositiveInt = Field(description="Monotonically increasing; older revisions are ignored.")
    issued_at: float = Field(description="Unix time (s) the hub wrote it.")
    models: tuple[DesiredModel, ...] = Field(default=(), description="Models and versions to run.")
    pipelines: tuple[PipelineSpec, ...] = Field(default=(), description="Pipelines to serve.")
    pools: tuple[PoolEndpoint, ...] = Field(default=(), description="Cloud pools for overflow.")
    apply: ApplyPolicy = Field(default_factory=ApplyPolicy, description="When to activate new versions.")
    rollout_id: str | None = Field(default=None, max_length=64, description="Rollout that wrote it, if any.")
    trials: tuple[DesiredTrial, ...] = Field(
        default=(), description="Candidate versions tried next to desired models (rollout shadow/split steps)."
    )

    @model_validator(mode="after")
    def _trials_match_models(self) -> DesiredState:
        desired = {m.name: m.version for m in self.models}
        seen: set[str] = set()
        for t in self.trials:
            name = t.candidate.name
            if name not in desired or desired[name] == t.candidate.version or name in seen:
                raise ValueError(f"trial of {name!r}: needs the model desired at another version, once")
            seen.add(name)
        return self


ModelPhase = Literal["pending", "downloading", "verifying", "preparing", "warming", "held", "active", "failed"]


class ModelReport(WireModel):
    """Reconciliation progress of one model on a device."""

    name: Name = Field(description="Model name.")
    version: Version = Field(description="Version being reconciled (desired).")
    state: ModelPhase = Field(description="Where reconciliation of this version is.")
    active_version: Version | None = Field(default=None, description="Version serving right now.")
    progress: float | None = Field(default=None, ge=0, le=1, description="Download progress 0-1.")
    error: str | None = Field(default=None, max_length=2000, description="Why it failed.")


class ReportedState(WireModel):
    """Retained on `reported`: what the device has reconciled for a revision."""

    v: V = Field(default=1, description="Protocol version.")
    device_id: DeviceId = Field(description="Device id.")
    revision: NonNegativeInt = Field(description="Desired revision these reports refer to.")
    updated_at: float = Field(description="Unix time (s).")
    models: tuple[ModelReport, ...] = Field(default=(), description="Per-model state.")
    trials: tuple[ModelReport, ...] = Field(
        default=(), description="Per desired trial: its candidate version (`active` = loaded and applied)."
    )
    converged: bool = Field(description="True when every desired model (and trial) is active.")


class DeviceEvent(WireModel):
    """An event on `events`: install progress, warnings, errors."""

    v: V = Field(default=1, description="Protocol version.")
    device_id: DeviceId = Field(description="Device id.")
    at: float = Field(description="Unix time (s).")
    level: Literal["info", "warning", "error"] = Field(description="Severity.")
    kind: str = Field(pattern=r"^[a-z0-9_.]{1,64}$", description="Dotted event kind, e.g. install.verified.")
    message: str = Field(max_length=2000, description="Human-readable text.")
    model: Name | None = Field(default=None, description="Model concerned, if any.")
    version: Version | None = Field(default=None, description="Version concerned, if any.")
    revision: NonNegativeInt | None = Field(default=None, description="Desired revision concerned, if any.")


# --- provisioning (HTTPS, device -> hub) ------------------------------------------------------------


class ProvisionRequest(WireModel):
    """POSTed by `edge-agent provision`: a CSR for the device's own key, plus what it is."""

    v: V = Field(default=1, description="Protocol version.")
    claim_token: str = Field(min_length=16, max_length=256, description="Claim token from the operator.")
    csr_pem: str = Field(min_length=1, max_length=16384, description="PEM CSR; CN is ignored, the hub sets it.")
    hardware: HardwareSummary = Field(description="What the device is.")
    device_id: DeviceId | None = Field(
        default=None, description="Device id wanted (e.g. on re-provisioning); the hub may assign one."
    )


class SigningKey(WireModel):
    """A trusted model-signing public key."""

    key_id: str = Field(pattern=r"^[0-9a-f]{16}$", description="Key id.")
    public_key_pem: str = Field(min_length=1, max_length=4096, description="Ed25519 public key, PEM.")


class ProvisionResponse(WireModel):
    """The hub's answer: the device's certificate, where the broker is, and which keys to trust."""

    v: V = Field(default=1, description="Protocol version.")
    device_id: DeviceId = Field(description="Assigned device id = certificate CN.")
    certificate_pem: str = Field(description="Device certificate, signed by the hub CA.")
    ca_chain_pem: str = Field(description="CA certificate(s) to trust for the broker and hub.")
    broker_url: str = Field(description="mqtts://host:port of the broker.")
    hub_url: str = Field(description="https:// base URL of the hub (artifacts, API).")
    topic_prefix: str = Field(description="MQTT topic prefix.")
    signing_keys: tuple[SigningKey, ...] = Field(min_length=1, description="Keys model packages must be signed by.")
    labels: Labels = Field(default_factory=dict, description="Labels from the claim.")
    telemetry_interval_s: PositiveFloat = Field(default=10.0, description="Period of load reports.")


MESSAGE_MODELS: tuple[type[WireModel], ...] = (
    PipelineSpec,
    HardwareSummary,
    DeviceBirth,
    DeviceOffline,
    LoadReport,
    TelemetryAck,
    DesiredState,
    ReportedState,
    DeviceEvent,
    ProvisionRequest,
    ProvisionResponse,
)
