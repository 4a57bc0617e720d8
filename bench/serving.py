"""Serving benchmark: raw onnxruntime vs a bare aiohttp V2 handler vs the agent, with wrk at 32 connections.

Prints, per model and body encoding, lines such as
    serving tiny-mlp json: agent_rps=... bare_rps=... agent/bare=0.95 p50_ms=... p99_ms=...
    serving tiny-cnn binary: agent/raw_ort=0.82 ...
    serving tiny-mlp json: agent_cpu_ms_per_req=0.41 req_per_s=2325 bare_cpu_ms_per_req=... loadavg=0.52/0.40/0.31
and the agent's idle RSS and start-to-ready time. Server CPU per request is the utime + stime the server
process and its children (a safety cell supervisor has two) spent over the measured wrk run, read from
/proc/<pid>/stat before and after it (bench/_proc.py), divided by the requests wrk saw answered; loadavg is
/proc/loadavg right after that run: on a shared machine, read the figure next to it. The server under test
is pinned to one core and wrk to the other (taskset) when the machine has two or more, so the load generator
does not steal the server's CPU.
Environment: BENCH_SECONDS (per wrk run, default 8), BENCH_CONNECTIONS (default 32).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench._proc import loadavg, tree_cpu_s
from deploy.local.procs import free_port
from models.zoo import ZOO_PUBLIC_KEY_FILE, zoo_package_path
from protocols.binary import encode_request

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "wrk" / "post_body.lua"
SECONDS = int(os.environ.get("BENCH_SECONDS", "8"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
THREADS = 1  # onnxruntime intra-op threads, the same for raw, bare and agent
# (model, version, sample shape, rows per request)
CASES = (("tiny-mlp", "1", (64,), 1), ("tiny-cnn", "2", (3, 64, 64), 8))
CPUS = os.cpu_count() or 1
# BENCH_PIN=split: server on CPU 1, wrk on CPU 0; shared: server on every CPU, wrk on CPU 0; none: no taskset.
PIN = os.environ.get("BENCH_PIN", "shared")
SERVER_CPU, CLIENT_CPU = {
    "split": ("1", "0"),
    "shared": (f"0-{CPUS - 1}", "0"),
    "none": (None, None),
}[PIN if CPUS >= 2 else "none"]


@dataclass
class WrkResult:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    server_cpu_s: float = float("nan")  # the server's process tree, over this run
    loadavg: str = "-"  # /proc/loadavg right after the run

    @property
    def cpu_ms_per_req(self) -> float:
        """Server CPU milliseconds per answered request."""
        return self.server_cpu_s * 1000 / self.requests if self.requests else float("nan")


def ensure_wrk() -> str:
    """Path of wrk; installs Debian's package when root, else exits with what to install."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk (apt-get install -y wrk)", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env, stdout=subprocess.DEVNULL)
        if shutil.which("wrk") is None:
            subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
    if not found:
        sys.exit("bench/serving.py needs wrk: run 'sudo apt-get install wrk' (Debian/Ubuntu), then retry")
    return found


def pinned(cmd: list[str], cpu: str | None) -> list[str]:
    """Prefix `cmd` with taskset when pinning is possible."""
    return ["taskset", "-c", cpu, *cmd] if cpu is not None and shutil.which("taskset") else cmd


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Poll `url` until it answers 200; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} not ready after {timeout} s")


def rss_mib(pid: int) -> float:
    """VmRSS of a process in MiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM and wait."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_wrk(wrk: str, url: str, body_file: Path, header_length: int | None, seconds: int) -> WrkResult:
    """One wrk run at CONNECTIONS connections; parses the Lua script's RESULT line."""
    env = {
        **os.environ,
        "BODY_FILE": str(body_file),
        "HEADER_LENGTH": "" if header_length is None else str(header_length),
    }
    cmd = pinned([wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url], CLIENT_CPU)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    match = re.search(r"RESULT requests=(\d+) duration_us=(\d+) p50_us=(\d+) p99_us=(\d+) errors=(\d+)", out)
    if match is None:
        raise RuntimeError(f"wrk printed no RESULT line:\n{out}")
    requests, duration_us, p50, p99, errors = (int(g) for g in match.groups())
    return WrkResult(requests / (duration_us / 1e6), p50 / 1000, p99 / 1000, errors, requests)


def raw_ort(model: str, version: str, shape: tuple[int, ...]) -> dict[int, float]:
    """In-process onnxruntime samples/s per batch size (same thread settings as the servers)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(zoo_package_path(model, version) / "model.onnx"), so, providers=["CPUExecutionProvider"]
    )
    rates: dict[int, float] = {}
    for batch in (1, 2, 4, 8):
        x = np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32)
        for _ in range(20):
            session.run(None, {"input": x})
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < 1.0:
            session.run(None, {"input": x})
            runs += 1
        rates[batch] = runs * batch / (time.perf_counter() - start)
    return rates


def write_bodies(tmp: Path) -> dict[tuple[str, str], tuple[Path, int | None]]:
    """Request bodies per (model, encoding), built with protocols.binary.encode_request."""
    bodies: dict[tuple[str, str], tuple[Path, int | None]] = {}
    for model, _, shape, rows in CASES:
        x = np.random.default_rng(1).standard_normal((rows, *shape)).astype(np.float32)
        for encoding in ("json", "binary"):
            body, length = encode_request(inputs={"input": x}, binary=encoding == "binary")
            path = tmp / f"{model}-{encoding}.body"
            path.write_bytes(body)
            bodies[(model, encoding)] = (path, length)
    return bodies


def start_bare(port: int) -> subprocess.Popen[bytes]:
    """The bare aiohttp V2 handler (bench/_bare_v2.py)."""
    packages = [str(zoo_package_path(m, v)) for m, v, _, _ in CASES]
    cmd = [sys.executable, "-m", "bench._bare_v2", str(port), str(THREADS), *packages]
    return subprocess.Popen(pinned(cmd, SERVER_CPU), cwd=ROOT, stdout=subprocess.DEVNULL)


def start_agent(port: int, model_dir: Path) -> subprocess.Popen[bytes]:
    """`edge-agent serve --standalone` on the zoo models under test."""
    cmd = [
        sys.executable, "-m", "edge_agent", "--log-level", "WARNING", "serve", "--standalone",
        "--model-dir", str(model_dir), "--trust", str(ZOO_PUBLIC_KEY_FILE), "--port", str(port),
        "--threads", str(THREADS),
    ]  # fmt: skip
    return subprocess.Popen(pinned(cmd, SERVER_CPU), cwd=ROOT, stdout=subprocess.DEVNULL)


def measure(
    wrk: str, base: str, bodies: dict[tuple[str, str], tuple[Path, int | None]], server_pid: int
) -> dict[tuple[str, str], WrkResult]:
    """wrk against every (model, encoding) on one server, after a short warm-up each; the server's process
    tree CPU time is read around each measured run."""
    results: dict[tuple[str, str], WrkResult] = {}
    for (model, encoding), (path, length) in bodies.items():
        url = f"{base}/v2/models/{model}/infer"
        run_wrk(wrk, url, path, length, 1)
        cpu_before = tree_cpu_s(server_pid)
        result = run_wrk(wrk, url, path, length, SECONDS)
        result.server_cpu_s = tree_cpu_s(server_pid) - cpu_before
        result.loadavg = loadavg()
        results[(model, encoding)] = result
    return results


def main() -> int:
    """Run the benchmark and print one line per comparison."""
    wrk = ensure_wrk()
    print(
        f"# {CPUS} CPUs; pinning {PIN}: server on CPU {SERVER_CPU}, wrk on CPU {CLIENT_CPU}; "
        f"{CONNECTIONS} connections, {SECONDS} s per run; onnxruntime intra-op threads={THREADS}; "
        f"loadavg before the run {loadavg()} (the bench itself keeps ~2 CPUs busy)",
        flush=True,
    )
    raw = {model: raw_ort(model, version, shape) for model, version, shape, _ in CASES}
    for model, rates in raw.items():
        per = " ".join(f"b{b}={r:.0f}" for b, r in rates.items())
        print(f"# {model} raw_ort samples/s before the servers: {per}", flush=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp_name:
        tmp = Path(tmp_name)
        bodies = write_bodies(tmp)
        model_dir = tmp / "models"
        for model, version, _, _ in CASES:
            shutil.copytree(zoo_package_path(model, version), model_dir / model / version)

        port = free_port()
        bare_proc = start_bare(port)
        try:
            _wait_port(port, bare_proc)
            bare = measure(wrk, f"http://127.0.0.1:{port}", bodies, bare_proc.pid)
        finally:
            stop(bare_proc)

        port = free_port()
        agent_proc = start_agent(port, model_dir)
        try:
            ready_s = wait_http(f"http://127.0.0.1:{port}/v2/health/ready", agent_proc)
            time.sleep(0.5)
            idle_rss = rss_mib(agent_proc.pid)
            agent = measure(wrk, f"http://127.0.0.1:{port}", bodies, agent_proc.pid)
            loaded_rss = rss_mib(agent_proc.pid)
        finally:
            stop(agent_proc)

    # Measured again after the servers and averaged: on a shared machine the load drifts during the run.
    for model, version, shape, _ in CASES:
        after = raw_ort(model, version, shape)
        raw[model] = {b: (r + after[b]) / 2 for b, r in raw[model].items()}
    for model, rates in raw.items():
        best = max(rates, key=lambda b: rates[b])
        per = " ".join(f"b{b}={r:.0f}" for b, r in rates.items())
        print(f"serving {model} raw_ort: best_batch={best} samples_per_s={rates[best]:.0f} ({per})", flush=True)
    for model, _, _, rows in CASES:
        for encoding in ("json", "binary"):
            a, b = agent[(model, encoding)], bare[(model, encoding)]
            line = (
                f"serving {model} {encoding}: agent_rps={a.rps:.0f} bare_rps={b.rps:.0f} agent/bare={a.rps / b.rps:.2f}"
            )
            if rows > 1:
                line += f" agent/raw_ort={a.rps * rows / raw[model][rows]:.2f} (batch-{rows} requests vs raw b{rows})"
            line += (
                f" agent_p50_ms={a.p50_ms:.2f} agent_p99_ms={a.p99_ms:.2f}"
                f" bare_p50_ms={b.p50_ms:.2f} bare_p99_ms={b.p99_ms:.2f}"
            )
            if a.errors or b.errors:
                line += f" ERRORS agent={a.errors} bare={b.errors}"
            print(line, flush=True)
    for model, _, _, _ in CASES:
        for encoding in ("json", "binary"):
            a, b = agent[(model, encoding)], bare[(model, encoding)]
            print(
                f"serving {model} {encoding}: agent_cpu_ms_per_req={a.cpu_ms_per_req:.3f} req_per_s={a.rps:.0f} "
                f"bare_cpu_ms_per_req={b.cpu_ms_per_req:.3f} bare_req_per_s={b.rps:.0f} loadavg={a.loadavg}",
                flush=True,
            )
    print(f"serving agent: idle_rss_mib={idle_rss:.1f} loaded_rss_mib={loaded_rss:.1f} start_to_ready_s={ready_s:.2f}")
    failed = sum(r.errors for r in (*agent.values(), *bare.values()))
    return 1 if failed else 0


def _wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"port {port} not open after {timeout} s")


if __name__ == "__main__":
    sys.exit(main())
