"""Real `edge-agent serve` processes under hostile intake: gzip bombs beside a safety stream, 2,000 idle
connections under a 1024 open-file limit, a body that trickles in past its deadline, refused compression."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import resource
import socket
import statistics
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from agent_support import AgentProcess, gzip_bomb, start_agent

from models.zoo import PACKAGES_DIR, ZOO_PUBLIC_KEY_FILE

pytestmark = pytest.mark.slow

SAFETY_DEADLINE_MS = 50
NOFILE = 1024
IDLE_CONNECTIONS = 2000
MiB = 1 << 20
RSS_BOUND_KIB = 128 * 1024  # the inflated cap (64 MiB) plus one step, with room for the allocator
SAFETY_BODY = json.dumps(
    {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
).encode()


def _config(tmp_path: Path, name: str, http: str, pipelines: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f"""
standalone = true
model_dirs = ["{PACKAGES_DIR}"]
trusted_keys = ["{ZOO_PUBLIC_KEY_FILE}"]

[http]
port = 0
{http}

[runtime]
type = "onnxruntime"
intra_op_threads = 1
inter_op_threads = 1
{pipelines}
"""
    )
    return path


def _low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent with a 50 ms safety pipeline on tiny-mlp, under RLIMIT_NOFILE 1024."""
    pipelines = f"""
[[pipelines]]
name = "collision"
model = "tiny-mlp"
priority = "safety"
deadline_ms = {SAFETY_DEADLINE_MS}
"""
    config = _config(tmp_path_factory.mktemp("hostile"), "agent", "", pipelines)
    agent = start_agent(["serve", "--config", str(config)], preexec_fn=_low_nofile)
    yield agent
    assert agent.stop() == 0, "".join(agent.output)


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    """An agent refusing compressed bodies, with a 1 s header timeout and a 300 ms standard pipeline."""
    http = 'compressed_bodies = "refuse"\nheader_timeout_s = 1.0\nidle_timeout_s = 5.0'
    pipelines = """
[[pipelines]]
name = "slow-lane"
model = "tiny-mlp"
priority = "standard"
deadline_ms = 300
"""
    config = _config(tmp_path_factory.mktemp("strict"), "agent", http, pipelines)
    agent = start_agent(["serve", "--config", str(config)])
    yield agent
    assert agent.stop() == 0, "".join(agent.output)


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def _safety_stream(url: str, stop: asyncio.Event, every_s: float = 0.02) -> list[tuple[int, float]]:
    """(status, client-side seconds) of safety requests sent every `every_s` until `stop`."""
    results: list[tuple[int, float]] = []
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            start = time.perf_counter()
            async with session.post(f"{url}/v2/models/collision/infer", data=SAFETY_BODY) as resp:
                await resp.read()
                results.append((resp.status, time.perf_counter() - start))
            await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - start)))
    return results


def _summary(results: list[tuple[int, float]]) -> str:
    ok = sorted(s for code, s in results if code == 200)
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("nan")
    median = statistics.median(ok) if ok else float("nan")
    return (
        f"{len(ok)}/{len(results)} ok, p50 {median * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {ok[-1] * 1000:.1f} ms"
    )


async def test_gzip_bombs_get_413_while_safety_keeps_its_deadline(hostile: AgentProcess) -> None:
    bomb = await asyncio.to_thread(gzip_bomb)
    assert len(bomb) < 1.1 * MiB
    stop = asyncio.Event()
    baseline_task = asyncio.create_task(_safety_stream(hostile.url, stop))
    await asyncio.sleep(2.0)
    stop.set()
    baseline = await baseline_task
    hwm_before = _vm_hwm_kib(hostile.proc.pid)
    stop = asyncio.Event()
    stream = asyncio.create_task(_safety_stream(hostile.url, stop))
    statuses: list[int] = []
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
            url = f"{hostile.url}/v2/models/tiny-cnn/infer"  # a standard pipeline (1 s deadline)
            async with session.post(url, data=io.BytesIO(bomb), headers=headers) as resp:
                statuses.append(resp.status)
                assert "error" in await resp.json()
    window = time.perf_counter() - started
    await asyncio.sleep(0.5)
    stop.set()
    during = await stream
    growth = _vm_hwm_kib(hostile.proc.pid) - hwm_before
    print(f"\nsafety alone: {_summary(baseline)}")
    print(f"safety during 4 bombs ({window:.2f} s): {_summary(during)}; VmHWM growth {growth} KiB")
    assert statuses == [413] * 4
    assert growth <= RSS_BOUND_KIB
    ok = [s for code, s in during if code == 200]
    assert len(during) >= 10 and len(ok) >= 0.9 * len(during)
    # Generous for a loaded 2-core machine: before the fix a bomb stalled the loop for up to 3 s.
    assert max(ok) < 0.5


async def _open_idle(port: int, count: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", port))
        socks.append(sock)
        if len(socks) % 100 == 0:
            await asyncio.sleep(0.01)  # let the agent accept
    return socks


def _closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


async def test_2000_idle_connections_under_nofile_1024_do_not_stop_good_requests(hostile: AgentProcess) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < IDLE_CONNECTIONS + 256:
        pytest.skip(f"this process may open only {hard} files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, IDLE_CONNECTIONS + 256), hard))
    port = int(hostile.url.rsplit(":", 1)[1])
    lines_before = len(hostile.output)
    idle = await _open_idle(port, IDLE_CONNECTIONS)
    try:
        await asyncio.sleep(1.0)
        agent_fds = len(list(Path(f"/proc/{hostile.proc.pid}/fd").iterdir()))
        closed = sum(1 for sock in idle if _closed_by_peer(sock))
        codes: list[int] = []
        took: list[float] = []
        for _ in range(3):
            start = time.perf_counter()
            timeout = aiohttp.ClientTimeout(total=10)
            url = f"{hostile.url}/v2/models/tiny-mlp/infer"
            async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, data=SAFETY_BODY) as resp:
                codes.append(resp.status)
            took.append(time.perf_counter() - start)
    finally:
        for sock in idle:
            sock.close()
    new_lines = hostile.output[lines_before:]
    print(f"\ngood requests beside {IDLE_CONNECTIONS} idle connections: {codes} in {[round(t, 3) for t in took]} s")
    print(f"agent descriptors with them open: {agent_fds}; idle connections closed by the agent: {closed}")
    print(f"agent log lines meanwhile: {len(new_lines)}: {''.join(new_lines[:5])}")
    assert codes == [200, 200, 200]
    assert agent_fds < NOFILE and closed >= 100  # capped below the limit: the longest-idle were evicted
    assert not any("out of system resource" in line for line in new_lines)
    assert len(new_lines) <= 5


async def test_body_trickling_past_its_deadline_is_refused_not_served_late(strict: AgentProcess) -> None:
    port = int(strict.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v2/models/slow-lane/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(SAFETY_BODY)}\r\n\r\n"
    ).encode()
    start = time.perf_counter()
    writer.write(head)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        for i in range(0, len(SAFETY_BODY), 16):  # 16 bytes every 100 ms: about 6 s for the whole body
            writer.write(SAFETY_BODY[i : i + 16])
            sent += 16
            await asyncio.sleep(0.1)

    task = asyncio.create_task(trickle())
    status_line = await asyncio.wait_for(reader.readline(), 10)
    took = time.perf_counter() - start
    task.cancel()
    writer.close()
    print(f"\ntrickled body (deadline 300 ms): {status_line.decode().strip()!r} after {took:.3f} s, {sent} bytes sent")
    assert status_line.split()[1] == b"503"
    assert took < 2.0  # refused near its deadline, not after the ~6 s the body takes


async def test_compressed_body_refused_with_415_when_configured(strict: AgentProcess) -> None:
    async with aiohttp.ClientSession() as session:
        body = zlib.compress(SAFETY_BODY)
        headers = {"Content-Encoding": "deflate"}
        async with session.post(f"{strict.url}/v2/models/slow-lane/infer", data=body, headers=headers) as resp:
            assert resp.status == 415
            assert "compressed" in (await resp.json())["error"]
        async with session.post(f"{strict.url}/v2/models/slow-lane/infer", data=SAFETY_BODY) as resp:
            assert resp.status == 200


async def test_header_timeout_closes_a_silent_connection(strict: AgentProcess) -> None:
    port = int(strict.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(b"POST /v2/models/slow-lane/infer HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    data = await asyncio.wait_for(reader.read(), 10)
    took = time.perf_counter() - start
    writer.close()
    print(f"\nunfinished headers closed after {took:.2f} s (header_timeout_s 1.0)")
    assert data == b"" and 0.8 <= took < 5.0
