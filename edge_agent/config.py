"""The agent's configuration: one TOML file, validated by pydantic (unknown keys are errors)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)

from edge_agent.errors import ConfigError
from models.runtimes.config import OnnxRuntimeConfig, RuntimeConfig
from protocols.common import Name
from protocols.messages import PoolEndpoint
from protocols.pipeline import PipelineSpec

__all__ = [
    "AgentConfig",
    "BatchingConfig",
    "BreakerConfig",
    "ClassLimits",
    "FleetConfig",
    "HttpConfig",
    "ModelBatching",
    "OffloadConfig",
    "PipelineSpec",
    "PoolEndpoint",
    "SafetyCellConfig",
    "SchedulerConfig",
    "load_config",
]

MiB = 1 << 20
# Measured with bench/serving.py: waiting for a batch to grow while the runtime is idle only adds latency
# for closed-loop clients; batches still form under load because requests queue while a batch runs.
DEFAULT_MAX_QUEUE_DELAY_MS = 0.0


class _Config(BaseModel):
    """Base of config sections: unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpConfig(_Config):
    """The local V2 HTTP endpoint."""

    host: str = Field(default="127.0.0.1", description="Address to bind; loopback by default (local apps only).")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    max_body_bytes: PositiveInt = Field(
        default=64 * MiB, description="Largest request body, and largest decompressed body, in bytes (413 above)."
    )
    token_file: Path | None = Field(
        default=None,
        description=(
            "File holding a bearer token (one line, 16+ chars, chmod 600) that every route except "
            "/v2/health/live and /v2/health/ready then requires; set it whenever host is not loopback."
        ),
    )
    unix_socket: Path | None = Field(
        default=None, description="Also serve V2 on this Unix socket (same limits, a connection cap of its own)."
    )
    compressed_bodies: Literal["inflate", "refuse"] = Field(
        default="inflate",
        description=(
            "gzip/deflate request bodies: inflate (incrementally, off the event loop, 413 once the inflated size "
            "passes max_body_bytes) or refuse (415)."
        ),
    )
    max_connections: PositiveInt = Field(
        default=512,
        description=(
            "Open connections per listener; lowered to fit RLIMIT_NOFILE minus fd_reserve. At the cap a new "
            "connection evicts the longest-idle one, or is closed at once when none is idle."
        ),
    )
    fd_reserve: NonNegativeInt = Field(
        default=64, description="File descriptors kept free of connections (model files, sockets, logs)."
    )
    header_timeout_s: PositiveFloat = Field(
        default=10.0,
        description="Longest time from a connection's opening, or a request's first byte, to its complete headers.",
    )
    idle_timeout_s: PositiveFloat = Field(
        default=10.0, description="Longest silence of a client while its request body is being received."
    )
    keepalive_timeout_s: PositiveFloat = Field(
        default=75.0, description="How long an idle keep-alive connection is kept between requests."
    )
    backlog: PositiveInt = Field(default=128, description="Listen backlog of each listening socket.")
    accept_pause_s: PositiveFloat = Field(
        default=0.5,
        description="Pause of accepting when the process runs out of file descriptors (EMFILE), logged once.",
    )


class ModelBatching(_Config):
    """Per-model overrides of the dynamic batcher."""

    max_queue_delay_ms: NonNegativeFloat | None = Field(
        default=None, description="Override of batching.max_queue_delay_ms for this model."
    )
    max_batch_size: PositiveInt | None = Field(
        default=None, description="Cap below the manifest's max_batch_size (rows per batch); None = manifest's."
    )


class BatchingConfig(_Config):
    """The dynamic batcher: one queue per model, one execution lane per accelerator."""

    max_queue_delay_ms: NonNegativeFloat = Field(
        default=DEFAULT_MAX_QUEUE_DELAY_MS,
        description=(
            "How long the oldest queued request may wait for its batch to grow while the runtime is idle. "
            "0 = run at once with whatever is queued (batches still form while a batch runs)."
        ),
    )
    pipeline_depth: int = Field(
        default=2,
        ge=1,
        le=4,
        description="Batches handed to the accelerator's worker at once (2 hides the hand-off gap between batches).",
    )
    models: dict[Name, ModelBatching] = Field(default_factory=dict, description="Per-model overrides by model name.")


class ClassLimits(_Config):
    """Most requests that may wait in the accelerator's queues per priority class (across models)."""

    safety: NonNegativeInt = Field(default=64, description="Queued safety requests; more are answered 503.")
    standard: NonNegativeInt = Field(default=256, description="Queued standard requests; more overflow or get 503.")
    best_effort: NonNegativeInt = Field(
        default=512, description="Queued best-effort requests; more overflow or get 503 (0 = never queue locally)."
    )


class SchedulerConfig(_Config):
    """Priority scheduling, admission control and the safety bound (see docs/scheduling.md)."""

    queue_limits: ClassLimits = Field(default_factory=ClassLimits, description="Bounded queues per priority class.")
    safety_lane: Literal["dedicated", "shared"] = Field(
        default="dedicated",
        description=(
            "dedicated: safety-class batches run on an execution lane of their own, so they never queue behind "
            "other work; shared: one lane, lower-class batches capped and never pre-handed while safety is active."
        ),
    )
    safety_max_wait_ms: PositiveFloat = Field(
        default=2.0,
        description="shared lane: cap on the estimated duration of a lower-class batch while safety traffic is active.",
    )
    safety_window_ms: PositiveFloat = Field(
        default=1000.0, description="shared lane: safety traffic counts as active for this long after a safety request."
    )
    admission_margin_ms: NonNegativeFloat = Field(
        default=2.0, description="Slack added to the completion estimate for HTTP and event-loop time."
    )
    ewma_alpha: float = Field(
        default=0.2, gt=0.0, le=1.0, description="Weight of a new batch duration in the service-time estimate."
    )


class BreakerConfig(_Config):
    """Circuit breaker of each cloud pool."""

    consecutive_failures: PositiveInt = Field(default=5, description="Open after this many failures in a row.")
    error_rate: float = Field(
        default=0.5, gt=0.0, le=1.0, description="Also open when this share of the recent window failed."
    )
    window: PositiveInt = Field(default=20, description="Requests in the error-rate window.")
    min_requests: PositiveInt = Field(default=10, description="Error rate is judged only after this many requests.")
    open_s: PositiveFloat = Field(default=2.0, description="Cool-down before an open breaker may probe again.")
    half_open_probes: PositiveInt = Field(default=2, description="Requests let through at once while half-open.")


class OffloadConfig(_Config):
    """Overflow offload to cloud GPU pools over V2 HTTP."""

    breaker: BreakerConfig = Field(default_factory=BreakerConfig, description="Per-pool circuit breaker.")
    probe_interval_s: PositiveFloat = Field(
        default=0.5, description="How often open pools are probed with GET /v2/health/ready after their cool-down."
    )
    connect_timeout_s: PositiveFloat = Field(default=1.0, description="TCP connect timeout to a pool.")
    max_outstanding: PositiveInt = Field(
        default=32, description="Most requests in flight to one pool (bounds the queue we build up there)."
    )
    max_connections: PositiveInt = Field(default=64, description="Keep-alive connections per pool.")


class FleetConfig(BaseModel):
    """The `[fleet]` section: where the identity is and how the link behaves.

    Optional; without it (or with standalone = true) the agent runs with no fleet link.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    identity_dir: Path = Field(
        default=Path("/var/lib/edgefleet/identity"), description="Identity written by `edge-agent provision`."
    )
    telemetry_interval_s: PositiveFloat | None = Field(
        default=None, description="Seconds between load reports; None = the interval the hub gave at provisioning."
    )
    spool_max_reports: PositiveInt = Field(
        default=8640, description="Reports kept on disk while the broker is away (8640 = 24 h at 10 s); oldest dropped."
    )
    spool_max_bytes: PositiveInt = Field(default=64 * 1024 * 1024, description="Byte bound of the on-disk spool.")
    keepalive_s: PositiveInt = Field(
        default=30, description="MQTT keep-alive; the broker declares the device lost after 1.5x this."
    )
    topic_prefix: str | None = Field(default=None, description="Override of the prefix from provisioning.")
    broker_url: str | None = Field(
        default=None, description="Override of the broker from provisioning, mqtts://host:port."
    )


class SafetyCellConfig(_Config):
    """The safety cell: safety-class pipelines in a process of their own, with their own listener and runtime
    sessions, at a higher OS priority than the process serving everything else (see docs/scheduling.md).

    Used by `edge-agent serve --config` when the config has safety pipelines and is not standalone.
    """

    enabled: bool = Field(
        default=True,
        description=(
            "Run safety pipelines in the cell process; false = one process for everything (no isolation: "
            "a CPU gateway with no safety pipelines always runs one process)."
        ),
    )
    host: str = Field(default="127.0.0.1", description="Address of the cell's own V2 listener.")
    port: int = Field(default=8010, ge=0, le=65535, description="TCP port of the cell's listener; 0 picks a free one.")
    unix_socket: Path | None = Field(
        default=None, description="Also listen on this Unix socket (V2 over HTTP; local apps, no TCP stack)."
    )
    nice: int = Field(
        default=-10,
        ge=-20,
        le=19,
        description="Nice value of the cell (negative needs root or CAP_SYS_NICE; refused = logged, left at 0).",
    )
    sched_rr_priority: int = Field(
        default=10,
        ge=0,
        le=99,
        description=(
            "Once ready, run the cell's threads under SCHED_RR at this real-time priority (needs CAP_SYS_NICE; "
            "refused = logged, `nice` only); 0 = normal scheduling at `nice`. The kernel's RT throttling "
            "(sched_rt_runtime_us, 95 % by default) keeps CPU time for the rest of the device."
        ),
    )
    oom_score_adj: int = Field(
        default=-900, ge=-1000, le=1000, description="OOM-killer bias of the cell (negative needs root)."
    )
    main_nice: int = Field(
        default=5, ge=-20, le=19, description="Nice value of the process serving every other pipeline."
    )
    main_oom_score_adj: int = Field(
        default=500, ge=-1000, le=1000, description="OOM-killer bias of the main process: killed before the cell."
    )
    restart_backoff_s: tuple[PositiveFloat, PositiveFloat] = Field(
        default=(0.5, 10.0), description="First and longest wait before a crashed process is restarted."
    )


class AgentConfig(_Config):
    """Everything `edge-agent serve` needs; fleet sections (MQTT, provisioning) are added by their owners."""

    http: HttpConfig = Field(default_factory=HttpConfig, description="The local V2 HTTP endpoint.")
    state_dir: Path | None = Field(
        default=None,
        description=(
            "Directory of the model store (models/<name>/<version>/) and other persistent state; required "
            "unless standalone, where None serves the packages of model_dirs in place."
        ),
    )
    model_dirs: list[Path] = Field(
        default_factory=list,
        description="Directories whose packages (name/version/ dirs, nested allowed) are imported at start.",
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, description="PEM ed25519 public keys whose signatures make a package trusted."
    )
    verify_packages: bool = Field(
        default=True,
        description="Verify signature and hashes before installing a package; false only with standalone = true.",
    )
    standalone: bool = Field(
        default=False,
        description="Development / cloud-pool mode: no fleet link, no offload; allows verify_packages = false.",
    )
    runtime: RuntimeConfig = Field(
        default_factory=OnnxRuntimeConfig, description="Backend that runs every model (default onnxruntime)."
    )
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Dynamic batching.")
    expose_models: bool = Field(
        default=True,
        description="Also serve every model under its own name (standard priority) unless a pipeline has that name.",
    )
    expose_deadline_ms: PositiveInt = Field(
        default=1000,
        description=(
            "Deadline of the V2 names models are exposed under (expose_models; standard priority). "
            "`serve --standalone` defaults to 60000: a cloud pool's callers send their own timeout."
        ),
    )
    server_name: str = Field(
        default="edgefleet-edge-agent",
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="The name GET /v2 answers; `triton` for client code that checks for it (docs/triton-compat.md).",
    )
    pipelines: list[PipelineSpec] = Field(
        default_factory=list, description="V2 model names served with a priority class, deadline and offload policy."
    )
    fleet: FleetConfig | None = Field(
        default=None, description="Fleet link (MQTT to the hub, telemetry); absent = no link. Ignored if standalone."
    )
    scheduler: SchedulerConfig = Field(
        default_factory=SchedulerConfig, description="Priority scheduling, admission control and the safety bound."
    )
    pools: list[PoolEndpoint] = Field(
        default_factory=list,
        description="Cloud GPU pools for overflow ([[pools]] name, url, models); ignored if standalone.",
    )
    offload: OffloadConfig = Field(default_factory=OffloadConfig, description="Offload client and circuit breaker.")
    safety_cell: SafetyCellConfig = Field(
        default_factory=SafetyCellConfig, description="Safety pipelines in a process and listener of their own."
    )

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        if not self.verify_packages and not self.standalone:
            raise ValueError("verify_packages = false is only allowed with standalone = true (development mode)")
        if self.state_dir is None and not self.standalone:
            raise ValueError("state_dir is required (only standalone mode serves model_dirs in place)")
        if self.verify_packages and self.model_dirs and not self.trusted_keys:
            raise ValueError("model_dirs are verified before import: name at least one trusted_keys file")
        names = [p.name for p in self.pipelines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate pipeline names: {dupes}")
        cell = self.safety_cell
        if cell.enabled and cell.port != 0 and cell.port == self.http.port and cell.host == self.http.host:
            raise ValueError(f"safety_cell.port {cell.port} is also http.port: give the cell a port of its own")
        pools = [p.name for p in self.pools]
        if len(set(pools)) != len(pools):
            raise ValueError(f"duplicate pool names: {sorted({n for n in pools if pools.count(n) > 1})}")
        return self


def load_config(path: Path) -> AgentConfig:
    """Read and validate a TOML config file; ConfigError names the file and every problem."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {str(path)!r}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {exc}") from exc
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"config {str(path)!r} is invalid: {reasons}") from exc
    base = path.parent
    # Relative paths in the file are relative to the file, as operators expect.
    return config.model_copy(
        update={
            "state_dir": None if config.state_dir is None else base / config.state_dir,
            "model_dirs": [base / p for p in config.model_dirs],
            "trusted_keys": [base / p for p in config.trusted_keys],
            "http": config.http.model_copy(
                update={"token_file": None if config.http.token_file is None else base / config.http.token_file}
            ),
            "fleet": None
            if config.fleet is None
            else config.fleet.model_copy(update={"identity_dir": base / config.fleet.identity_dir}),
        }
    )
