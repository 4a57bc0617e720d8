"""Serving bench with shadow mode (issue 16): the agent's agent/bare ratio on tiny-cnn v2 (binary, batch-8
requests, the serving bench's case) without a shadow and with tiny-cnn v1 shadowing 10 % of the requests.

One agent process serves both pipelines (`plain`, `shadowed`), measured in alternating wrk runs (plain,
shadowed, plain, shadowed) so the drift of a shared machine's load falls on both; the bare aiohttp V2
handler (bench/_bare_v2.py) is measured before and after, averaged. At two concurrencies: BENCH_CONNECTIONS
(default 32: requests always wait, so the shadow, queued only when nothing waits, is mostly dropped) and 1
(a closed loop: the device is idle between requests and the shadow runs). Prints per concurrency:

    serving tiny-cnn binary shadow10% c=32: agent/bare=0.93 no_shadow_agent/bare=0.95 shadow/no_shadow=0.98 ...

Run: `python -m bench.serving_shadow` (BENCH_SECONDS per wrk run, default 8).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import serving
from bench._proc import loadavg
from deploy.local.procs import free_port
from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE

MODEL, ENCODING, SHARE = "tiny-cnn", "binary", 0.1


def _config(tmp: Path, port: int) -> Path:
    path = tmp / "agent.toml"
    path.write_text(
        f"""standalone = true
model_dirs = ["{PACKAGES_DIR}"]
trusted_keys = ["{ZOO_PUBLIC_KEY_FILE}"]

[http]
port = {port}

[runtime]
type = "onnxruntime"
intra_op_threads = {serving.THREADS}
inter_op_threads = 1

[[pipelines]]
name = "plain"
model = "{MODEL}"
version = "2"

[[pipelines]]
name = "shadowed"
model = "{MODEL}"
version = "2"
shadow_version = "1"
shadow_share = {SHARE}
"""
    )
    return path


def _wrk(wrk: str, url: str, body: tuple[Path, int | None], connections: int) -> serving.WrkResult:
    serving.CONNECTIONS = connections  # run_wrk reads the module's setting
    serving.run_wrk(wrk, url, body[0], body[1], 1)
    return serving.run_wrk(wrk, url, body[0], body[1], serving.SECONDS)


def _bare(wrk: str, body: tuple[Path, int | None], connections: int) -> float:
    port = free_port()
    proc = serving.start_bare(port)
    try:
        serving._wait_port(port, proc)
        return _wrk(wrk, f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer", body, connections).rps
    finally:
        serving.stop(proc)


def main() -> int:
    """Measure and print one line per concurrency."""
    wrk = serving.ensure_wrk()
    print(f"# {serving.CPUS} CPUs, pinning {serving.PIN}; {serving.SECONDS} s per wrk run; loadavg {loadavg()}")
    errors = 0
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-shadow-") as tmp_name:
        tmp = Path(tmp_name)
        body = serving.write_bodies(tmp)[(MODEL, ENCODING)]
        port = free_port()
        cmd = [sys.executable, "-m", "edge_agent", "--log-level", "WARNING", "serve", "--config",
               str(_config(tmp, port))]  # fmt: skip
        for connections in (serving.CONNECTIONS, 1):
            bare_before = _bare(wrk, body, connections)
            agent = subprocess.Popen(serving.pinned(cmd, serving.SERVER_CPU), cwd=serving.ROOT)
            runs: dict[str, list[serving.WrkResult]] = {"plain": [], "shadowed": []}
            try:
                serving.wait_http(f"http://127.0.0.1:{port}/v2/health/ready", agent)
                time.sleep(0.5)
                for _ in range(2):
                    for pipeline in ("plain", "shadowed"):
                        url = f"http://127.0.0.1:{port}/v2/models/{pipeline}/infer"
                        runs[pipeline].append(_wrk(wrk, url, body, connections))
            finally:
                serving.stop(agent)
            bare = (bare_before + _bare(wrk, body, connections)) / 2
            plain = sum(r.rps for r in runs["plain"]) / 2
            shadowed = sum(r.rps for r in runs["shadowed"]) / 2
            errors += sum(r.errors for rs in runs.values() for r in rs)
            p99 = {k: max(r.p99_ms for r in rs) for k, rs in runs.items()}
            print(
                f"serving {MODEL} {ENCODING} shadow{SHARE:.0%} c={connections}: agent/bare={shadowed / bare:.2f} "
                f"no_shadow_agent/bare={plain / bare:.2f} shadow/no_shadow={shadowed / plain:.2f} "
                f"shadow_rps={shadowed:.0f} no_shadow_rps={plain:.0f} bare_rps={bare:.0f} "
                f"p99_ms shadow={p99['shadowed']:.2f} no_shadow={p99['plain']:.2f} loadavg={loadavg()}",
                flush=True,
            )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
