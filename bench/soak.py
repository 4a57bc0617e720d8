"""Soak: one agent under mixed load for N minutes, with rollouts and broker restarts; is it flat after warm-up?

Run: `python -m bench.soak [--minutes 10]` (`make soak`). Not part of `python -m bench`'s default list and not
in CI. Prints one line:
`soak: minutes=N rss_growth_mib=... fd_growth=... p99_drift=... errors=... requests=...`

Set-up, all real processes through the local-stack harness (deploy/local): mosquitto with the production mTLS +
ACL config, `cloud-hub serve` (SQLite) with tiny-cnn 1 and 2 pushed, a pool (`edge-agent serve --standalone`),
and the demo's line device provisioned by claim: a safety pipeline (`collision`, 50 ms) and a best-effort one
(`shelf`, 500 ms, overflow to the pool, at most 4 queued locally). Load: safety at 20 Hz, best-effort from 4
closed-loop clients (enough to overflow to the pool). A rollout v1 <-> v2 every `--rollout-s` (60 s) through the
hub's CLI, a broker restart (SIGTERM, 1 s away) every `--restart-s` (45 s).

Every `--sample-s` (5 s) the agent's VmRSS (/proc/PID/status) and open fds (/proc/PID/fd) are sampled.
growth = median of the last minute minus median of minute 2 (minute 1 is warm-up); p99_drift = safety p99 of
the last minute / safety p99 of minute 2. errors = safety answers other than 200, best-effort answers other
than 200/503, transport errors, answers that differ from onnxruntime's for the version that answered, and
rollouts or restarts that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from deploy.local import stack
from deploy.local.broker import require_mosquitto, start_broker
from deploy.local.demo import fleet
from deploy.local.procs import Child, Supervisor
from protocols.binary import HEADER_LENGTH, decode_response, encode_request

SAFETY, BEST_EFFORT = "collision", "shelf"


@dataclass
class Sample:
    """One request: when it ended (s since start), pipeline, status, latency."""

    at: float
    pipeline: str
    status: int
    latency_s: float
    route: str = ""


@dataclass
class Run:
    """Everything measured."""

    started: float = field(default_factory=time.monotonic)
    requests: list[Sample] = field(default_factory=list)
    memory: list[tuple[float, float, int]] = field(default_factory=list)  # (t, rss MiB, fds)
    errors: list[str] = field(default_factory=list)
    rollouts: int = 0
    restarts: int = 0

    def now(self) -> float:
        return time.monotonic() - self.started


class Reference:
    """onnxruntime on the zoo's tiny-cnn files, for the one input the load sends."""

    def __init__(self, batch: np.ndarray[Any, Any]) -> None:
        import onnxruntime as ort

        self.expected = {}
        for version in ("1", "2"):
            path = stack.ZOO_PACKAGES / stack.MODEL / version / "model.onnx"
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            self.expected[version] = session.run(None, {"input": batch})[0]

    def matches(self, version: str, got: np.ndarray[Any, Any]) -> bool:
        want = self.expected.get(version)
        return want is not None and got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-5))


async def _load(run: Run, url: str, pipeline: str, period_s: float | None, stop: asyncio.Event) -> None:
    batch = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    ref = Reference(batch)
    body, length = encode_request(inputs={"input": batch})
    headers = {HEADER_LENGTH: str(length), "Content-Type": "application/octet-stream"}
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        while not stop.is_set():
            start = time.perf_counter()
            status, route = 0, ""
            try:
                async with session.post(f"{url}/v2/models/{pipeline}/infer", data=body, headers=headers) as resp:
                    raw = await resp.read()
                    status, route = resp.status, resp.headers.get("X-Edgefleet-Route", "")
                    if status == 200:
                        hlen = resp.headers.get(HEADER_LENGTH)
                        header, arrays = decode_response(raw, None if hlen is None else int(hlen))
                        if not ref.matches(str(header.get("model_version")), arrays["scores"]):
                            run.errors.append(f"wrong answer from version {header.get('model_version')}")
                    elif status != 503 or pipeline == SAFETY:
                        run.errors.append(f"{pipeline} {status} {raw[:120]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                run.errors.append(f"{pipeline} {exc!r}")
            run.requests.append(Sample(run.now(), pipeline, status, time.perf_counter() - start, route))
            if period_s is not None:
                next_at = max(next_at + period_s, loop.time())
                await asyncio.sleep(next_at - loop.time())
            elif status != 200:
                await asyncio.sleep(0.02)


def _proc_sample(pid: int) -> tuple[float, int]:
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def _sampler(run: Run, agent: Child, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        rss, fds = _proc_sample(agent.pid)
        run.memory.append((run.now(), rss, fds))
        await asyncio.sleep(every_s)


async def _rollouts(run: Run, sup: Supervisor, hub_dir: Path, every_s: float, stop: asyncio.Event) -> None:
    version = "2"
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            pass
        argv = stack.hub_cli(
            hub_dir, "rollouts", "create", "--model", stack.MODEL, "--version", version,
            "--selector", "fleet=demo", "--canary", "1", "--waves", "100%", "--bake", "0s", "--json",
        )  # fmt: skip
        try:
            out = await sup.run(f"rollout-{run.rollouts}", argv)
            json.loads(out[out.index("{") :])
            run.rollouts += 1
            version = "1" if version == "2" else "2"
        except Exception as exc:
            run.errors.append(f"rollout to {version}: {str(exc)[:200]}")


async def _restarts(run: Run, sup: Supervisor, workdir: Path, broker: list[Child], *, every_s: float,
                    stop: asyncio.Event) -> None:  # fmt: skip
    conf = workdir / "mosquitto.conf"
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            pass
        try:
            os.killpg(broker[0].pid, signal.SIGTERM)
            await asyncio.to_thread(broker[0].proc.wait, 10)
            await asyncio.sleep(1.0)
            broker[0] = sup.spawn(f"mosquitto-r{run.restarts}", [require_mosquitto(), "-c", str(conf)])
            await asyncio.sleep(0.5)
            if not broker[0].alive:
                raise RuntimeError(broker[0].tail())
            run.restarts += 1
        except Exception as exc:
            run.errors.append(f"broker restart: {str(exc)[:200]}")


def _minute(values: list[tuple[float, float]], start: float, end: float) -> list[float]:
    return [v for t, v in values if start <= t < end]


def report(run: Run, minutes: float) -> str:
    """The one result line."""
    total = minutes * 60
    base = (60.0, 120.0)
    last = (total - 60.0, total + 1e9)
    rss = [(t, r) for t, r, _ in run.memory]
    fds = [(t, float(f)) for t, _, f in run.memory]
    growth_rss = statistics.median(_minute(rss, *last)) - statistics.median(_minute(rss, *base))
    growth_fd = statistics.median(_minute(fds, *last)) - statistics.median(_minute(fds, *base))
    safety = [(s.at, s.latency_s) for s in run.requests if s.pipeline == SAFETY and s.status == 200]
    p99_base = float(np.percentile(_minute(safety, *base), 99))
    p99_last = float(np.percentile(_minute(safety, *last), 99))
    be = [s for s in run.requests if s.pipeline == BEST_EFFORT]
    return (
        f"soak: minutes={minutes:g} rss_growth_mib={growth_rss:.1f} fd_growth={growth_fd:.0f} "
        f"p99_drift={p99_last / p99_base:.2f} errors={len(run.errors)} requests={len(run.requests)} "
        f"(safety_p99_ms {p99_base * 1000:.1f}->{p99_last * 1000:.1f}, best_effort={len(be)} "
        f"be_cloud={sum(s.route == 'cloud' for s in be)} be_503={sum(s.status == 503 for s in be)}, "
        f"rollouts={run.rollouts}, broker_restarts={run.restarts}, "
        f"rss_mib {statistics.median(_minute(rss, *base)):.0f}->{statistics.median(_minute(rss, *last)):.0f}, "
        f"fds {statistics.median(_minute(fds, *base)):.0f}->{statistics.median(_minute(fds, *last)):.0f})"
    )


async def soak(args: argparse.Namespace, workdir: Path) -> int:
    """Set up, run for --minutes, print the line; non-zero if something failed."""
    sup = Supervisor(workdir, grace_s=5.0)
    run = Run()
    try:
        hub_dir, tls = workdir / "hub", workdir / "tls"
        await stack.make_pki(sup, hub_dir, tls)
        broker_child, broker_port = await start_broker(sup, workdir, tls, "edgefleet/v1")
        _, _ = await stack.start_hub(sup, hub_dir, broker_port)
        await stack.push_models(sup, hub_dir)
        _, pool_url = await stack.start_pool(sup, workdir)
        plan = fleet.AGENTS[0]  # line-1: safety `collision` + best-effort `shelf` overflowing to the pool
        agent_dir = workdir / "agents" / plan.device_id
        await fleet.provision(sup, hub_dir, plan, agent_dir)
        agent, url = await fleet.start_agent(sup, plan, agent_dir, pool_url)
        await agent.wait_for(r"MQTT link up", 30)
        run = Run()
        stop = asyncio.Event()
        broker = [broker_child]
        tasks = [
            asyncio.create_task(_load(run, url, SAFETY, 1 / 20, stop)),
            *(asyncio.create_task(_load(run, url, BEST_EFFORT, None, stop)) for _ in range(4)),
            asyncio.create_task(_sampler(run, agent, args.sample_s, stop)),
            asyncio.create_task(_rollouts(run, sup, hub_dir, args.rollout_s, stop)),
            asyncio.create_task(_restarts(run, sup, workdir, broker, every_s=args.restart_s, stop=stop)),
        ]
        try:
            await asyncio.sleep(args.minutes * 60)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        if not agent.alive:
            run.errors.append(f"agent exited: {agent.tail()}")
    finally:
        sup.stop_all()
    print(report(run, args.minutes), flush=True)
    for error in run.errors[:10]:
        print(f"  error: {error}", file=sys.stderr)
    return 1 if run.errors else 0


def main(argv: list[str]) -> int:
    """CLI entry."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="duration (>= 3: minute 2 is the baseline)")
    parser.add_argument("--rollout-s", type=float, default=60.0, help="seconds between rollouts (v1 <-> v2)")
    parser.add_argument("--restart-s", type=float, default=45.0, help="seconds between broker restarts")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS/fd samples")
    parser.add_argument("--workdir", type=Path, default=None, help="keep logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.minutes < 3:
        parser.error("--minutes must be >= 3 (minute 1 warms up, minute 2 is the baseline)")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        return asyncio.run(soak(args, args.workdir))
    with tempfile.TemporaryDirectory(prefix="edgefleet-soak-") as tmp:
        return asyncio.run(soak(args, Path(tmp)))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
