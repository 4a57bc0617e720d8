"""MQTT/provisioning messages and the pipeline spec."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from protocols.common import PROTOCOL_VERSION
from protocols.messages import (
    DEVICE_STATE,
    MESSAGE_MODELS,
    DesiredModel,
    DesiredState,
    DeviceBirth,
    DeviceLoad,
    DeviceOffline,
    HardwareSummary,
    LoadReport,
    TelemetryAck,
)
from protocols.pipeline import PipelineSpec
from protocols.signature import ManifestSignature

HW = HardwareSummary(platform="x86_64-cpu", cpu_count=2, ram_mb=24000)
SIG = ManifestSignature(key_id="0123456789abcdef", signature=base64.b64encode(bytes(64)).decode())


def test_every_message_carries_the_protocol_version() -> None:
    versioned = [m for m in MESSAGE_MODELS if "v" in m.model_fields]
    assert len(versioned) >= 8
    for model in versioned:
        assert model.model_fields["v"].default == PROTOCOL_VERSION


def test_state_topic_payload_is_discriminated() -> None:
    birth = DeviceBirth(
        device_id="d1", boot_id="b", agent_version="0.1", sent_at=1.0, hardware=HW, telemetry_interval_s=10
    )
    assert isinstance(DEVICE_STATE.validate_json(birth.model_dump_json()), DeviceBirth)
    will = DeviceOffline(device_id="d1", reason="lost").model_dump_json()
    assert isinstance(DEVICE_STATE.validate_json(will), DeviceOffline)


def test_messages_are_frozen_and_forbid_unknown_fields() -> None:
    report = LoadReport(
        device_id="d1",
        boot_id="b",
        seq=0,
        sent_at=1.0,
        interval_s=10,
        device=DeviceLoad(cpu_percent=1, ram_used_mb=1, ram_total_mb=2, gpu_source="unavailable"),
    )
    with pytest.raises(ValidationError):
        report.seq = 5  # type: ignore[misc]
    data = report.model_dump()
    data["surprise"] = 1
    with pytest.raises(ValidationError, match="surprise"):
        LoadReport.model_validate(data)


def test_desired_state_revision_must_be_positive_and_url_set() -> None:
    model = DesiredModel(name="tiny-cnn", version="2", sha256="a" * 64, size=10, url="https://h/a", signature=SIG)
    DesiredState(device_id="d", revision=1, issued_at=0, models=(model,))
    with pytest.raises(ValidationError):
        DesiredState(device_id="d", revision=0, issued_at=0)


def test_pipeline_offload_defaults_by_class() -> None:
    assert PipelineSpec(name="p", model="m", priority="safety").effective_offload == "never"
    assert PipelineSpec(name="p", model="m", priority="best_effort").effective_offload == "overflow"
    assert PipelineSpec(name="p", model="m", offload="never").effective_offload == "never"


def test_safety_pipeline_cannot_be_offloaded() -> None:
    with pytest.raises(ValidationError, match="never leave the device"):
        PipelineSpec(name="p", model="m", priority="safety", offload="overflow")


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65])
def test_unsafe_names_rejected(name: str) -> None:
    with pytest.raises(ValidationError):
        PipelineSpec(name=name, model="m")


def test_telemetry_ack_ranges_are_pairs_and_bounded() -> None:
    ack = TelemetryAck(device_id="d", boot_id="b", ranges=((0, 4), (7, 7)), sent_at=1.0)
    assert TelemetryAck.model_validate_json(ack.model_dump_json()) == ack
    for bad in ((), ((1, 2, 3),), ((-1, 2),), tuple((i, i) for i in range(1025))):
        with pytest.raises(ValidationError):
            TelemetryAck(device_id="d", boot_id="b", ranges=bad, sent_at=1.0)  # type: ignore[arg-type]
