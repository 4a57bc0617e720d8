"""The edgefleet stack as local processes: PKI, hub, pool, claims, agents (and their TOML), models.

Every step goes through the same CLIs an operator uses (`cloud-hub ...`, `edge-agent ...`) as children of a
`Supervisor`; nothing here imports the hub's or the agent's internals. The agent's TOML is rendered in one
place, `agent_toml`, for the demo, the benchmarks and the tests.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from deploy.local.procs import HOST, Child, StackError, Supervisor, free_port

REPO = Path(__file__).resolve().parents[2]
ZOO = REPO / "models" / "zoo"
ZOO_PACKAGES = ZOO / "packages"
ZOO_KEY = ZOO / "zoo-signing.pub"
MODEL = "tiny-cnn"
READY_AGENT = r"edge-agent ready on http://[^:\s]+:(\d+)"
READY_HUB = r"edgefleet hub at (https://\S+)"


@dataclass(frozen=True)
class Pipeline:
    """A pipeline of an agent's config (always on the zoo's tiny-cnn)."""

    name: str
    priority: str
    deadline_ms: int
    offload: str | None = None


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


def hub_serve_args(port: int | str, broker_port: int) -> list[str]:
    """`serve` arguments of a hub on SQLite ingesting from the local broker (1 s telemetry)."""
    return ["serve", "--port", str(port), "--broker", f"mqtts://{HOST}:{broker_port}", "--telemetry-interval", "1"]


async def start_hub(sup: Supervisor, hub_dir: Path, broker_port: int) -> tuple[Child, str]:
    """`cloud-hub serve` on SQLite, ingesting from the local broker; (child, URL)."""
    last: StackError | None = None
    for attempt in range(3):
        argv = hub_cli(hub_dir, *hub_serve_args(free_port(), broker_port))
        child = sup.spawn("hub" if attempt == 0 else f"hub-{attempt}", argv)
        try:
            found = await child.wait_for(READY_HUB, 30)
        except StackError as exc:
            last = exc  # most likely the port was taken meanwhile: try another
            continue
        return child, found.group(1)
    raise last or StackError("hub did not start")


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


async def provision(sup: Supervisor, hub_dir: Path, device_id: str, labels: Mapping[str, str], agent_dir: Path) -> str:
    """A claim with the device's labels (`cloud-hub claims create`), then `edge-agent provision` with it."""
    joined = ",".join(f"{k}={v}" for k, v in labels.items())
    out = await sup.run(
        f"claim-{device_id}", hub_cli(hub_dir, "claims", "create", "--labels", joined, "--expires", "1h")
    )
    join = next((line.split() for line in out.splitlines() if line.startswith("edge-agent provision ")), None)
    if join is None:
        raise StackError(f"`cloud-hub claims create` printed no join line:\n{out}")
    identity = agent_dir / "identity"
    argv = [*command("edge-agent"), *join[1:], "--identity-dir", str(identity), "--device-id", device_id]
    out = await sup.run(f"provision-{device_id}", argv)
    found = re.search(r"provisioned as (\S+);", out)
    if found is None:
        raise StackError(f"`edge-agent provision` did not say which id it got:\n{out}")
    return found.group(1)


async def safety_cell_url(agent_url: str, timeout_s: float = 5.0) -> str | None:
    """The address of the agent's safety cell from its V2 server metadata; None when it runs no cell."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
        session.get(f"{agent_url}/v2") as answer,
    ):
        metadata = await answer.json()
    url = metadata.get("parameters", {}).get("safety_cell_url")
    return str(url) if url else None


def agent_toml(
    agent_dir: Path,
    pipelines: Sequence[Pipeline],
    *,
    pool_url: str | None = None,
    best_effort_queue: int | None = None,
    fleet_link: bool = True,
    fleet_extra: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> Path:
    """Write `agent_dir`/agent.toml: tiny-cnn v1 seeded from the zoo, `pipelines`, the fleet link, a pool.

    `best_effort_queue` (with a pool) caps the best-effort requests queued locally; `fleet_extra` lines go
    into `[fleet]`, `extra` lines (whole sections) before the pipelines.
    """
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
    ]
    if fleet_link:
        lines += ["", "[fleet]", 'identity_dir = "identity"', *fleet_extra]
    lines += list(extra)
    if any(p.priority == "safety" for p in pipelines) and "[safety_cell]" not in extra:
        # The safety cell's listener on a free port (several agents run side by side); GET /v2 names it.
        lines += ["", "[safety_cell]", "port = 0"]
    for p in pipelines:
        lines += ["", "[[pipelines]]", f'name = "{p.name}"', f'model = "{MODEL}"', f'priority = "{p.priority}"']
        lines.append(f"deadline_ms = {p.deadline_ms}")
        if p.offload:
            lines.append(f'offload = "{p.offload}"')
    if pool_url is not None:
        lines += ["", "[[pools]]", 'name = "cloud"', f'url = "{pool_url}"']
        if best_effort_queue is not None:
            lines += ["", "[scheduler.queue_limits]", f"best_effort = {best_effort_queue}"]
    path = agent_dir / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def start_agent(
    sup: Supervisor, name: str, config: Path, *, env: dict[str, str] | None = None, timeout_s: float = 60
) -> tuple[Child, str]:
    """`edge-agent serve --config CONFIG` as child `name`; wait until it serves; (child, URL)."""
    child = sup.spawn(name, [*command("edge-agent"), "serve", "--config", str(config)], env=env)
    found = await child.wait_for(READY_AGENT, timeout_s)
    return child, f"http://{HOST}:{found.group(1)}"


async def push_models(sup: Supervisor, hub_dir: Path) -> None:
    """Trust the zoo's publisher key (`cloud-hub models trust-key`), push tiny-cnn v1 and v2."""
    await sup.run("trust-zoo", hub_cli(hub_dir, "models", "trust-key", str(ZOO_KEY)))
    for version in ("1", "2"):
        package = ZOO_PACKAGES / MODEL / version
        await sup.run(f"push-{MODEL}-v{version}", hub_cli(hub_dir, "models", "push", str(package)))
