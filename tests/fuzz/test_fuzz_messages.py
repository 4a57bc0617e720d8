"""Hypothesis on the MQTT side: message models, topic parsing, and the hub's and agent's real dispatch paths."""

from __future__ import annotations

import json
import time
from typing import Any

from fuzz_support import json_data, json_scalars
from fuzz_targets import DEVICE, TOPICS, AgentDispatch, HubDispatch, messages, topic_parse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.messages import (
    DesiredState,
    DeviceBirth,
    DeviceEvent,
    DeviceLoad,
    DeviceOffline,
    HardwareSummary,
    LoadReport,
    ReportedState,
)
from protocols.topics import TOPIC_KINDS

FUZZ = settings(max_examples=600, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TRIED: dict[str, int] = {}
HW = HardwareSummary(platform="x86_64-cpu", cpu_count=1, ram_mb=1)
LOAD = DeviceLoad(cpu_percent=1.0, ram_used_mb=1, ram_total_mb=2, gpu_source="unavailable")
VALID: list[dict[str, Any]] = [
    json.loads(m.model_dump_json())
    for m in (
        DeviceBirth(device_id=DEVICE, boot_id="b", agent_version="1", sent_at=1.0, hardware=HW, telemetry_interval_s=1),
        DeviceOffline(device_id=DEVICE, reason="lost"),
        LoadReport(device_id=DEVICE, boot_id="b", seq=3, sent_at=1.0, interval_s=1.0, device=LOAD),
        ReportedState(device_id=DEVICE, revision=2, updated_at=1.0, converged=True),
        DeviceEvent(device_id=DEVICE, at=1.0, level="info", kind="a.b", message="m"),
        DesiredState(device_id=DEVICE, revision=2, issued_at=1.0),
    )
]


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid message with fields replaced, removed or added, or truncated bytes of one."""
    message = dict(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.integers(0, 2))
        key = draw(st.sampled_from(sorted(message))) if message else "x"
        if action == 0:
            message[key] = draw(json_data)
        elif action == 1:
            message.pop(key, None)
        else:
            message[draw(st.text(max_size=6))] = draw(json_scalars)
    raw = json.dumps(message).encode()
    if draw(st.integers(0, 9)) == 0:
        raw = raw[: draw(st.integers(0, len(raw)))]
    return raw


payloads = st.one_of(
    st.binary(max_size=512), mutated_messages(), st.sampled_from([b"", b"null", b"[]", b"{}", b"1e999"])
)
device_ids = st.one_of(st.just(DEVICE), st.just("dev-revoked"), st.just("dev-unknown"), st.text(max_size=10))
topics = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda d, k, extra: f"{TOPICS.prefix}/devices/{d}/{k}{extra}",
        device_ids,
        st.one_of(st.sampled_from(TOPIC_KINDS), st.text(max_size=5)),
        st.sampled_from(["", "/x", "/", "#", "+"]),
    ),
)


@FUZZ
@given(payloads)
def test_message_models_raise_only_validation_errors(payload: bytes) -> None:
    _count("message models")
    messages(payload)


@FUZZ
@given(topics)
def test_topic_parse_round_trips_or_refuses(topic: str) -> None:
    _count("topics")
    topic_parse(topic)


HUB = HubDispatch()
AGENT = AgentDispatch()


@settings(FUZZ, max_examples=1000)
@given(topics, payloads)
def test_hub_dispatch_never_raises_and_counts_everything(topic: str, payload: bytes) -> None:
    _count("hub dispatch")
    before = HUB.handled()
    HUB(topic, payload)
    assert HUB.handled() == before + 1  # exactly one counter moved: accepted or dropped (by reason)


@settings(FUZZ, max_examples=1000)
@given(payloads)
def test_agent_desired_dispatch_never_raises_and_counts(payload: bytes) -> None:
    _count("agent dispatch")
    link = AGENT.link
    before = link.received_desired + link.malformed_desired + link.cleared_desired + link.dropped_desired
    AGENT(payload)
    assert link.received_desired + link.malformed_desired + link.cleared_desired + link.dropped_desired == before + 1


def test_out_of_order_telemetry_is_counted_as_duplicates() -> None:
    hub = HubDispatch()
    topic = TOPICS.telemetry(DEVICE)

    def report(seq: int, boot: str = "b") -> bytes:
        return (
            LoadReport(device_id=DEVICE, boot_id=boot, seq=seq, sent_at=time.time(), interval_s=1.0, device=LOAD)
            .model_dump_json()
            .encode()
        )

    for seq, boot in ((5, "b"), (4, "b"), (5, "b"), (1, "b"), (6, "b"), (1, "c"), (1, "c")):
        hub(topic, report(seq, boot))
    # Every report is valid ("accepted"); those not newer than the last (boot_id, seq) are duplicates and
    # change nothing: 5, 6 and the new boot's first 1 are applied.
    assert hub.metrics.accepted["telemetry"]._value.get() == 7
    assert hub.metrics.duplicates._value.get() == 4
    live = hub.fleet.get(DEVICE)
    assert live is not None and (live.boot_id, live.last_seq) == ("c", 1)
    hub(TOPICS.telemetry("dev-other"), report(7))
    assert hub.metrics.dropped_count("unknown_device") == 1


def test_report_inputs_tried() -> None:
    """The counts the closing note quotes (pytest -s shows them)."""
    print("message fuzz inputs:", TRIED, "hub handled", HUB.count, "agent handled", AGENT.count)
