"""The intake pieces in process: the incremental inflater, arrival stamps at the first byte, the connection
cap with eviction, and the accept pause on EMFILE (aiohttp 3.14 internals the listener relies on)."""

from __future__ import annotations

import asyncio
import errno
import gzip
import logging
import socket
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from agent_support import standalone_config
from aiohttp import web

from edge_agent.app import Agent
from edge_agent.errors import InvalidInput, PayloadTooLarge
from edge_agent.http.intake import Inflater
from edge_agent.http.listener import ListenerSite, listen

BODY = b'{"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[' + b",".join([b"0.5"] * 64) + b"]}]}"


def _feed(inflater: Inflater, data: bytes, step: int = 1000) -> bytes:
    for i in range(0, len(data), step):
        inflater.feed(data[i : i + step])
    return bytes(inflater.finish())


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("gzip", gzip.compress(BODY)),
        ("gzip", gzip.compress(BODY[:100]) + gzip.compress(BODY[100:])),  # two members are one body
        ("deflate", zlib.compress(BODY)),
        ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some clients send it
    ],
)
def test_inflater_decodes_what_clients_send(encoding: str, data: bytes) -> None:
    assert _feed(Inflater(encoding, 1 << 20), data) == BODY


def test_inflater_stops_a_bomb_at_the_cap_plus_one_step() -> None:
    bomb = gzip.compress(bytes(64 << 20))
    inflater = Inflater("gzip", 4 << 20, step=1 << 20)
    with pytest.raises(PayloadTooLarge):
        _feed(inflater, bomb, step=len(bomb))
    assert len(inflater.body) <= (4 << 20) + (1 << 20)


def test_inflater_rejects_truncated_and_garbage_bodies() -> None:
    with pytest.raises(InvalidInput, match="truncated"):
        _feed(Inflater("gzip", 1 << 20), gzip.compress(BODY)[:-12])
    with pytest.raises(InvalidInput, match="cannot inflate"):
        _feed(Inflater("gzip", 1 << 20), b"not gzip at all")
    with pytest.raises(InvalidInput, match="after the end"):
        _feed(Inflater("deflate", 1 << 20), zlib.compress(BODY) + b"xx")


@pytest_asyncio.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Agent, list[ListenerSite]]]:
    """An in-process agent behind listen() on a free port; http overrides from the test's parameter."""
    http: dict[str, Any] = {"port": 0, **getattr(request, "param", {})}
    agent = Agent(standalone_config(http=http))
    runner = web.AppRunner(agent.http, access_log=None)
    await runner.setup()
    sites = await listen(runner, agent.config.http)
    await agent.startup
    yield agent, sites
    await runner.cleanup()


def _latency_sum(agent: Agent, model: str) -> float:
    for family in agent.metrics.latency.collect():
        for sample in family.samples:
            if sample.name.endswith("_sum") and sample.labels.get("model") == model:
                return float(sample.value)
    return 0.0


async def test_latency_counts_from_the_first_byte(served: tuple[Agent, list[ListenerSite]]) -> None:
    agent, sites = served
    port = sites[0].port
    assert port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v2/models/tiny-mlp/infer HTTP/1.1\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)  # the head's first line waits in the agent; its clock runs from here
    writer.write(b"Host: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY) + BODY)
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert _latency_sum(agent, "tiny-mlp") >= 0.3


@pytest.mark.parametrize("served", [{"max_connections": 4}], indirect=True)
async def test_at_the_cap_the_longest_idle_connection_is_evicted(served: tuple[Agent, list[ListenerSite]]) -> None:
    _agent, sites = served
    port = sites[0].port
    assert port
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
    await asyncio.sleep(0.1)
    listener = sites[0].listener
    assert listener.open == 4
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 200")
    assert await asyncio.wait_for(idle[0][0].read(), 5) == b""  # the oldest idle one went
    assert listener.counts["evicted"] == 1 and listener.open <= 4
    for _r, w in [*idle, (reader, writer)]:
        w.close()


class _OutOfFiles:
    """A listening socket whose accept() fails as a process out of descriptors does."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.family = real.family
        self.calls = 0

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        raise OSError(errno.EMFILE, "Too many open files")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize("served", [{"accept_pause_s": 0.2}], indirect=True)
async def test_emfile_pauses_accepting_and_logs_once(
    served: tuple[Agent, list[ListenerSite]], caplog: pytest.LogCaptureFixture
) -> None:
    _agent, sites = served
    listener = sites[0].listener
    port = sites[0].port
    fake = _OutOfFiles(listener.sock)
    listener.sock = fake  # type: ignore[assignment]  # the accept loop only calls accept() and fileno()
    client = socket.create_connection(("127.0.0.1", port))  # stays readable: never accepted
    with caplog.at_level(logging.WARNING, logger="edge_agent.http.listener"):
        await asyncio.sleep(1.0)
    client.close()
    listener.sock = fake.real
    lines = [r for r in caplog.records if "accept paused" in r.getMessage()]
    assert len(lines) == 1
    assert 2 <= listener.counts["accept paused"] <= 8 and fake.calls == listener.counts["accept paused"]
