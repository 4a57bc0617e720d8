"""Fuzz targets shared by the atheris harnesses (fuzz_*.py, long runs) and the hypothesis tests (make test).

Each target takes raw input and raises AssertionError only when the code under test misbehaves: an
exception other than the documented one escapes, a dispatcher raises or counts an internal error, or a
decode allocates far more than the body it was given.
"""

from __future__ import annotations

import contextlib
import struct
import time
import tracemalloc
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from pydantic import ValidationError

from cloud_hub.fleet.live import LiveFleet
from cloud_hub.ingest.dispatch import Dispatcher
from cloud_hub.ingest.writer import BatchWriter
from cloud_hub.metrics import HubMetrics
from cloud_hub.store import Store
from edge_agent.fleet.mqtt_link import DeviceLink, LinkSettings
from protocols.binary import CodecError, decode_request, decode_response
from protocols.common import ProtocolError
from protocols.messages import DEVICE_STATE, MESSAGE_MODELS, DesiredState, DeviceBirth, HardwareSummary
from protocols.topics import Topics

# A decode may hold the body, its numpy views and per-element Python objects; never gigabytes for bytes.
MEMORY_FACTOR = 64
MEMORY_SLACK = 4 << 20
RAW_INPUTS: tuple[tuple[str, str, tuple[int, ...]] | None, ...] = (
    None,
    ("input", "FP32", (1, 4)),
    ("input", "BYTES", (-1,)),
    ("input", "BOOL", (2, -1)),
    ("input", "INT64", (1, 1 << 40)),
)
DEVICE = "dev-fuzz"
TOPICS = Topics()


def _split_header_length(data: bytes) -> tuple[int | None, bytes]:
    """First byte picks how the header length is given: none, exact-ish from the next 4 bytes, or 0."""
    if not data:
        return None, data
    mode, rest = data[0] % 4, data[1:]
    if mode == 0:
        return None, rest
    if mode == 3:
        return 0, rest
    if len(rest) < 4:
        return len(rest), rest
    (value,) = struct.unpack_from("<I", rest)
    rest = rest[4:]
    return (value % (len(rest) + 2)) if mode == 1 else value, rest


def codec_request(data: bytes) -> None:
    """decode_request on arbitrary bytes: only CodecError may escape."""
    header_length, body = _split_header_length(data)
    raw = RAW_INPUTS[data[-1] % len(RAW_INPUTS)] if data else None
    with contextlib.suppress(CodecError):
        decode_request(body, header_length, raw_input=raw)


def codec_response(data: bytes) -> None:
    """decode_response on arbitrary bytes: only CodecError may escape."""
    header_length, body = _split_header_length(data)
    if header_length == 0:
        header_length = None
    with contextlib.suppress(CodecError):
        decode_response(body, header_length)


def bounded_memory(fn: Any, body: bytes, *args: Any, **kwargs: Any) -> int:
    """Run fn(body, ...) under tracemalloc; assert its peak stays within a multiple of the body; return it."""
    tracemalloc.start()
    try:
        with contextlib.suppress(CodecError):
            fn(body, *args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_FACTOR * len(body) + MEMORY_SLACK, f"decode of {len(body)} bytes peaked at {peak} bytes"
    return peak


def messages(data: bytes) -> None:
    """Every wire model and DEVICE_STATE on arbitrary JSON bytes: only ValidationError may escape."""
    for model in (*MESSAGE_MODELS, DesiredState):
        with contextlib.suppress(ValidationError):
            model.model_validate_json(data)
    with contextlib.suppress(ValidationError):
        DEVICE_STATE.validate_json(data)


def topic_parse(topic: str) -> None:
    """Topics.parse: a ParsedTopic whose parts rebuild the topic, or ProtocolError."""
    try:
        parsed = TOPICS.parse(topic)
    except ProtocolError:
        return
    assert TOPICS.device(parsed.device_id, parsed.kind) == topic


class HubDispatch:
    """The hub's real ingest dispatcher (no broker, writes buffered) with one known, active device."""

    def __init__(self) -> None:
        self.metrics = HubMetrics()
        self.fleet = LiveFleet()
        self.fleet.set_status(DEVICE, "active")
        self.fleet.set_status("dev-revoked", "revoked")
        # The writer only buffers here; its store is never opened (the database is not under test).
        writer = BatchWriter(Store("sqlite+aiosqlite:///:memory:"), self.metrics, max_pending_rows=1000)
        self.dispatcher = Dispatcher(TOPICS, self.fleet, writer, self.metrics)
        self.count = 0

    def __call__(self, topic: str, payload: bytes) -> None:
        self.dispatcher.handle(topic, payload)  # must never raise
        self.count += 1
        assert self.metrics.dropped_count("internal") == 0, "dispatch hit an unexpected exception"

    def handled(self) -> float:
        """Messages accepted (valid; duplicate reports included) + dropped so far, from the counters."""
        accepted = sum(c._value.get() for c in self.metrics.accepted.values())
        dropped = sum(c._value.get() for c in self.metrics.drops.values())
        return float(accepted + dropped)


class AgentDispatch:
    """The agent's real desired-state receive path (DeviceLink._on_message), not connected."""

    def __init__(self) -> None:
        hardware = HardwareSummary(platform="x86_64-cpu", cpu_count=1, ram_mb=1)

        def birth() -> DeviceBirth:
            return DeviceBirth(
                device_id=DEVICE,
                boot_id="b",
                agent_version="0",
                sent_at=time.time(),
                hardware=hardware,
                telemetry_interval_s=1.0,
            )

        self.link = DeviceLink(LinkSettings(DEVICE, "127.0.0.1", 1, None), birth)
        self.count = 0

    def __call__(self, payload: bytes) -> None:
        message = mqtt.MQTTMessage(topic=TOPICS.desired(DEVICE).encode())
        message.payload = payload
        self.link._on_message(message)  # must never raise
        self.count += 1
        queued = self.link._desired
        while not queued.empty():  # keep the bounded queue from filling: dispatch is not under test here
            queued.get_nowait()

    def handled(self) -> int:
        """Messages counted by the link: malformed + dropped + queued valid ones (valid are rare)."""
        return self.link.malformed_desired + self.link.dropped_desired


def numpy_ok() -> None:
    """Import-time check that numpy works (atheris instruments after imports)."""
    np.zeros(1)
