"""The demo fleet: what runs where, the traffic each pipeline gets, and the demo's rollout of tiny-cnn v2."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local import stack
from deploy.local.procs import Child, StackError, Supervisor

MODEL = stack.MODEL
FLEET_LABEL = ("fleet", "demo")  # on every demo device: the rollout's selector


@dataclass(frozen=True)
class PipelinePlan(stack.Pipeline):
    """A pipeline of an agent and the steady traffic the demo sends it."""

    rate_hz: float = field(default=0.0, kw_only=True)


@dataclass(frozen=True)
class AgentPlan:
    """One demo device."""

    device_id: str
    labels: dict[str, str]
    pipelines: tuple[PipelinePlan, ...]
    best_effort_queue: int | None = None  # most best-effort requests queued locally; more overflow


# The line device runs a safety pipeline next to a best-effort one that may overflow to the pool; the burst
# goes to its `shelf` pipeline. It is a small box: at most 4 best-effort requests wait in its queue, the
# rest overflow to the pool (or get a fast 503) instead of queueing towards their deadline.
AGENTS = (
    AgentPlan(
        "line-1",
        {"site": "plant-a", "role": "line"},
        (
            PipelinePlan("collision", "safety", 50, rate_hz=20.0),
            PipelinePlan("shelf", "best_effort", 500, offload="overflow", rate_hz=10.0),
        ),
        best_effort_queue=4,
    ),
    AgentPlan("dock-1", {"site": "plant-a", "role": "dock"}, (PipelinePlan("detect", "standard", 200, rate_hz=8.0),)),
    AgentPlan("gate-1", {"site": "plant-b", "role": "gate"}, (PipelinePlan("detect", "standard", 200, rate_hz=8.0),)),
)
BURST_DEVICE, BURST_PIPELINE = "line-1", "shelf"


async def provision(sup: Supervisor, hub_dir: Path, plan: AgentPlan, agent_dir: Path) -> str:
    """Claim (the plan's labels and `fleet=demo`) and `edge-agent provision`; the device id it got."""
    labels = {**plan.labels, FLEET_LABEL[0]: FLEET_LABEL[1]}
    return await stack.provision(sup, hub_dir, plan.device_id, labels, agent_dir)


async def start_agent(sup: Supervisor, plan: AgentPlan, agent_dir: Path, pool_url: str | None) -> tuple[Child, str]:
    """Write the device's TOML (offload to `pool_url` if any) and `edge-agent serve` it; (child, URL)."""
    config = stack.agent_toml(agent_dir, plan.pipelines, pool_url=pool_url, best_effort_queue=plan.best_effort_queue)
    name = f"agent-{plan.device_id}" + ("" if pool_url is not None else "-nopool")
    return await stack.start_agent(sup, name, config)


async def create_rollout(sup: Supervisor, hub_dir: Path, bake: str) -> str:
    """`cloud-hub rollouts create` of tiny-cnn v2 with a canary and two waves; the rollout id."""
    argv = stack.hub_cli(
        hub_dir, "rollouts", "create", "--model", MODEL, "--version", "2", "--selector", "=".join(FLEET_LABEL),
        "--canary", "1", "--waves", "50%,100%", "--bake", bake, "--json",
    )  # fmt: skip
    out = await sup.run("rollout-create", argv)
    try:
        body = json.loads(out[out.index("{") :])
        rollout = body.get("rollout", body)
        return str(rollout["id"])
    except (ValueError, KeyError, TypeError):
        found = re.search(r"\bro[-_][0-9A-Za-z]+", out)
        if found is None:
            raise StackError(f"cannot find the rollout id in:\n{out}") from None
        return found.group(0)
