"""One agent config split into the safety cell's and the main process's (see docs/scheduling.md)."""

from __future__ import annotations

from edge_agent.config import AgentConfig, HttpConfig
from models.runtimes.config import RuntimeConfig, TensorRTConfig, TorchConfig

__all__ = ["cell_config", "has_cell", "main_config", "safety_models", "safety_names"]


def safety_names(config: AgentConfig) -> frozenset[str]:
    """V2 names of the safety-class pipelines."""
    return frozenset(p.name for p in config.pipelines if p.priority == "safety")


def safety_models(config: AgentConfig) -> frozenset[str]:
    """Models the safety pipelines run."""
    return frozenset(p.model for p in config.pipelines if p.priority == "safety")


def has_cell(config: AgentConfig) -> bool:
    """True when `serve` runs the safety cell: enabled, a fleet/store config (not standalone), safety pipelines."""
    return config.safety_cell.enabled and not config.standalone and bool(safety_names(config))


def cell_config(config: AgentConfig) -> AgentConfig:
    """The cell's config: the safety pipelines only, on the cell's listener, no fleet link, no model import
    (the main process owns the store; the cell only reads it), no models exposed under their own names."""
    return config.model_copy(
        update={
            "pipelines": [p for p in config.pipelines if p.priority == "safety"],
            # The [http] limits and token, on the cell's own address (its sockets come from the supervisor).
            "http": config.http.model_copy(update=_cell_address(config)),
            "model_dirs": [],
            "expose_models": False,
            "fleet": None,
            "pools": [],
            "runtime": _high_priority(config),
        }
    )


def _cell_address(config: AgentConfig) -> dict[str, object]:
    update: dict[str, object] = {"host": config.safety_cell.host, "port": config.safety_cell.port}
    if "unix_socket" in HttpConfig.model_fields:
        update["unix_socket"] = None  # the main process's; the cell's own is [safety_cell] unix_socket
    return update


def _high_priority(config: AgentConfig) -> RuntimeConfig:
    """The runtime with a high-priority CUDA stream where the backend has one (TensorRT, torch); onnxruntime's
    CUDA provider exposes no stream priority. onnxruntime's pool threads do not spin in the cell: under SCHED_RR
    a thread busy-waiting for the next run holds a core (sched_yield yields only to real-time threads)."""
    runtime = config.runtime
    if isinstance(runtime, TensorRTConfig | TorchConfig):
        return runtime.model_copy(update={"stream_priority": "high"})
    return runtime.model_copy(update={"allow_spinning": False})


def main_config(config: AgentConfig) -> AgentConfig:
    """The main process's config: every pipeline but the safety ones (their names are forwarded to the cell);
    the supervisor imported model_dirs into the store before starting either process."""
    return config.model_copy(
        update={"pipelines": [p for p in config.pipelines if p.priority != "safety"], "model_dirs": []}
    )
