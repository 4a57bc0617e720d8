"""The demo fleet: what runs where, and the real commands that set it up (PKI, hub, pool, claims, agents).

Every step goes through the same CLIs an operator uses (`cloud-hub ...`, `edge-agent ...`) as child
processes; cloud_hub never imports edge_agent.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.demo.broker import HOST, free_port
from cloud_hub.demo.procs import Child, DemoError, Supervisor

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "models" / "zoo"
ZOO_PACKAGES = ZOO / "packages"
ZOO_KEY = ZOO / "zoo-signing.pub"
MODEL = "tiny-cnn"
FLEET_LABEL = ("fleet", "demo")  # on every demo device: the rollout's selector
READY_AGENT = r"edge-agent ready on http://[^:\s]+:(\d+)"


@dataclass(frozen=True)
class PipelinePlan:
    """A pipeline of an agent and the steady traffic the demo sends it."""

    name: str
    priority: str
    deadline_ms: int
    rate_hz: float
    offload: str | None = None


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
            PipelinePlan("shelf", "best_effort", 500, rate_hz=10.0, offload="overflow"),
        ),
        best_effort_queue=4,
    ),
    AgentPlan("dock-1", {"site": "plant-a", "role": "dock"}, (PipelinePlan("detect", "standard", 200, rate_hz=8.0),)),
    AgentPlan("gate-1", {"site": "plant-b", "role": "gate"}, (PipelinePlan("detect", "standard", 200, rate_hz=8.0),)),
)
BURST_DEVICE, BURST_PIPELINE = "line-1", "shelf"


def command(name: str) -> list[str]:
    """argv prefix of a console script of this install (the venv's bin first), else `python -m`."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    return [sys.executable, "-m", name.replace("-", "_")]


def hub_cli(hub_dir: Path, *args: str) -> list[str]:
    """`cloud-hub --data-dir HUB ARGS...`."""
    return [*command("cloud-hub"), "--data-dir", str(hub_dir), *args]


async def make_pki(sup: Supervisor, hub_dir: Path, tls_dir: Path) -> None:
    """Create the hub CA and issue the broker's server certificate from it (`cloud-hub pki broker-cert`)."""
    argv = hub_cli(hub_dir, "pki", "broker-cert", "--name", "localhost", "--name", HOST, "--out", str(tls_dir))
    await sup.run("pki", argv)


async def start_hub(sup: Supervisor, hub_dir: Path, broker_port: int) -> tuple[Child, str]:
    """`cloud-hub serve` on SQLite, ingesting from the demo broker; (child, URL)."""
    broker = f"mqtts://{HOST}:{broker_port}"
    last: DemoError | None = None
    for attempt in range(3):
        port = free_port()
        args = ["serve", "--port", str(port), "--broker", broker, "--telemetry-interval", "1"]
        child = sup.spawn("hub" if attempt == 0 else f"hub-{attempt}", hub_cli(hub_dir, *args))
        try:
            found = await child.wait_for(r"edgefleet hub at (https://\S+)", 30)
        except DemoError as exc:
            last = exc  # most likely the port was taken meanwhile: try another
            continue
        return child, found.group(1)
    raise last or DemoError("hub did not start")


async def start_pool(sup: Supervisor, workdir: Path) -> tuple[Child, str]:
    """The cloud pool: `edge-agent serve --standalone` over the zoo's packages; (child, URL)."""
    models = workdir / "pool" / "models"
    if not models.exists():
        shutil.copytree(ZOO_PACKAGES, models)
    argv = [
        *command("edge-agent"), "serve", "--standalone", "--model-dir", str(models),
        "--trust", str(ZOO_KEY), "--host", HOST, "--port", "0", "--threads", "1",
    ]  # fmt: skip
    child = sup.spawn("pool", argv)
    found = await child.wait_for(READY_AGENT, 60)
    return child, f"http://{HOST}:{found.group(1)}"


async def provision(sup: Supervisor, hub_dir: Path, plan: AgentPlan, agent_dir: Path) -> str:
    """A claim with the device's labels (`cloud-hub claims create`), then `edge-agent provision` with it."""
    labels = ",".join(f"{k}={v}" for k, v in {**plan.labels, FLEET_LABEL[0]: FLEET_LABEL[1]}.items())
    out = await sup.run(
        f"claim-{plan.device_id}", hub_cli(hub_dir, "claims", "create", "--labels", labels, "--expires", "1h")
    )
    join = next((line.split() for line in out.splitlines() if line.startswith("edge-agent provision ")), None)
    if join is None:
        raise DemoError(f"`cloud-hub claims create` printed no join line:\n{out}")
    identity = agent_dir / "identity"
    argv = [*command("edge-agent"), *join[1:], "--identity-dir", str(identity), "--device-id", plan.device_id]
    out = await sup.run(f"provision-{plan.device_id}", argv)
    found = re.search(r"provisioned as (\S+);", out)
    if found is None:
        raise DemoError(f"`edge-agent provision` did not say which id it got:\n{out}")
    return found.group(1)


def agent_config(plan: AgentPlan, agent_dir: Path, pool_url: str | None) -> Path:
    """Write the agent's TOML: v1 of the model seeded from the zoo, its pipelines, the fleet link, the pool."""
    seed = agent_dir / "seed" / MODEL / "1"
    if not seed.exists():
        shutil.copytree(ZOO_PACKAGES / MODEL / "1", seed)
    lines = [
        'state_dir = "state"',
        'model_dirs = ["seed"]',
        f"trusted_keys = [{json.dumps(str(ZOO_KEY))}]",
        "expose_models = false",
        "",
        "[http]",
        f'host = "{HOST}"',
        "port = 0",
        "",
        "[runtime]",
        'type = "onnxruntime"',
        "intra_op_threads = 1",
        "inter_op_threads = 1",
        "",
        "[fleet]",
        'identity_dir = "identity"',
    ]
    for p in plan.pipelines:
        lines += ["", "[[pipelines]]", f'name = "{p.name}"', f'model = "{MODEL}"', f'priority = "{p.priority}"']
        lines.append(f"deadline_ms = {p.deadline_ms}")
        if p.offload:
            lines.append(f'offload = "{p.offload}"')
    if pool_url is not None:
        lines += ["", "[[pools]]", 'name = "cloud"', f'url = "{pool_url}"']
        if plan.best_effort_queue is not None:
            lines += ["", "[scheduler.queue_limits]", f"best_effort = {plan.best_effort_queue}"]
    path = agent_dir / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def start_agent(sup: Supervisor, plan: AgentPlan, agent_dir: Path, pool_url: str | None) -> tuple[Child, str]:
    """`edge-agent serve --config`; (child, URL)."""
    config = agent_config(plan, agent_dir, pool_url)
    name = f"agent-{plan.device_id}" + ("" if pool_url is not None else "-nopool")
    child = sup.spawn(name, [*command("edge-agent"), "serve", "--config", str(config)])
    found = await child.wait_for(READY_AGENT, 60)
    return child, f"http://{HOST}:{found.group(1)}"
