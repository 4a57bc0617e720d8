"""Open-loop HTTP load generator for bench/overload.py: fixed arrival rates, raw asyncio keep-alive sockets.

Each stream POSTs one pre-encoded V2 body at a fixed rate (open loop: arrivals never wait for answers, so
overload is real) or with a fixed number of clients (closed loop, to measure capacity). Raw asyncio
streams instead of aiohttp keep the generator's own CPU cost low. Usage:
    python -m bench._loadgen SPEC.json   -> prints one JSON result line
SPEC: {"host", "port", "duration_s", "streams": [{"name", "path", "body_file", "header_length",
        "rate" | "clients", "timeout_s", "port"?}]}   (other keys are the launcher's and ignored here)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Stream:
    """One request stream and what it measured."""

    name: str
    request: bytes
    timeout_s: float
    latencies: list[float] = field(default_factory=list)  # answered 200
    statuses: dict[str, int] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    fail_latencies: list[float] = field(default_factory=list)  # non-200 answers
    sent: int = 0
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = field(default_factory=list)


def build_request(host: str, path: str, body: bytes, header_length: int | None) -> bytes:
    """A raw HTTP/1.1 keep-alive POST."""
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/octet-stream"]
    if header_length is not None:
        head.append(f"Inference-Header-Content-Length: {header_length}")
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def one(stream: Stream, host: str, port: int) -> None:
    """Send one request on an idle connection (or a new one) and record the answer."""
    stream.sent += 1
    start = time.perf_counter()
    conn = stream.idle.pop() if stream.idle else None
    try:
        async with asyncio.timeout(stream.timeout_s):
            if conn is None:
                conn = await asyncio.open_connection(host, port)
            reader, writer = conn
            writer.write(stream.request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = lines[0].split(" ", 2)[1]
            length = 0
            route = "-"
            for line in lines[1:]:
                key, _, value = line.partition(":")
                lower = key.lower()
                if lower == "content-length":
                    length = int(value)
                elif lower == "x-edgefleet-route":
                    route = value.strip()
            if length:
                await reader.readexactly(length)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        kind = "timeout" if time.perf_counter() - start >= stream.timeout_s else "error"
        stream.statuses[kind] = stream.statuses.get(kind, 0) + 1
        if conn is not None:
            conn[1].close()
        return
    elapsed = time.perf_counter() - start
    stream.statuses[status] = stream.statuses.get(status, 0) + 1
    if status == "200":
        stream.latencies.append(elapsed)
        stream.routes[route] = stream.routes.get(route, 0) + 1
    else:
        stream.fail_latencies.append(elapsed)
    stream.idle.append(conn)


async def open_loop(stream: Stream, host: str, port: int, *, rate: float, until: float, tasks: set[Any]) -> None:
    """Fire requests at a fixed rate until `until`, never waiting for answers."""
    interval = 1.0 / rate
    next_at = time.perf_counter()
    while next_at < until:
        now = time.perf_counter()
        if next_at > now:
            await asyncio.sleep(next_at - now)
        task = asyncio.create_task(one(stream, host, port))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        next_at += interval


async def closed_loop(stream: Stream, host: str, port: int, until: float) -> None:
    """One client: next request as soon as the previous one is answered."""
    while time.perf_counter() < until:
        await one(stream, host, port)


async def run(spec: dict[str, Any], bodies: dict[str, bytes]) -> dict[str, Any]:
    """Run every stream for the duration; return per-stream figures."""
    host, duration = spec["host"], float(spec["duration_s"])
    streams: list[Stream] = []
    jobs = []
    tasks: set[Any] = set()
    start = time.perf_counter()
    until = start + duration
    for s in spec["streams"]:
        body = bodies[s["body_file"]]
        port = int(s.get("port", spec.get("port", 0)))
        stream = Stream(s["name"], build_request(host, s["path"], body, s.get("header_length")), float(s["timeout_s"]))
        streams.append(stream)
        if s.get("rate"):
            jobs.append(open_loop(stream, host, port, rate=float(s["rate"]), until=until, tasks=tasks))
        else:
            jobs.extend(closed_loop(stream, host, port, until) for _ in range(int(s["clients"])))
    await asyncio.gather(*jobs)
    if tasks:
        await asyncio.wait(tasks)
    elapsed = time.perf_counter() - start
    # The generator's own nice value, as the OS applied it (bench/overload.py runs the safety stream above the flood).
    out: dict[str, Any] = {"elapsed_s": elapsed, "nice": os.getpriority(os.PRIO_PROCESS, 0), "streams": {}}
    for stream in streams:
        for _, writer in stream.idle:
            writer.close()
        out["streams"][stream.name] = {
            "sent": stream.sent,
            "latencies": stream.latencies,
            "fail_latencies": stream.fail_latencies,
            "statuses": stream.statuses,
            "routes": stream.routes,
        }
    return out


def main() -> None:
    """Read the spec file, run, print the JSON result."""
    spec = json.loads(Path(sys.argv[1]).read_text())
    bodies = {s["body_file"]: Path(s["body_file"]).read_bytes() for s in spec["streams"]}
    result = asyncio.run(run(spec, bodies))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
