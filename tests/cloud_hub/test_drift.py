"""Drift monitoring: the agent's streaming profiles (edge_agent/serving/stats.py) of real tiny-cnn requests
(onnxruntime on the zoo model) in load reports, the hub's PSI against a reference window, the event and the
metric: inputs shifted by +3 sigma are flagged within two report intervals, unshifted inputs never."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from cloud_hub.fleet.drift import PSI_THRESHOLD, DriftMonitor, class_psi, gaussian_psi
from cloud_hub.fleet.live import LiveFleet
from edge_agent.serving.stats import PipelineStats
from models.zoo import zoo_package_path
from protocols.messages import DeviceLoad, LoadReport

INTERVAL_S = 5.0
REQUESTS_PER_INTERVAL = 40


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    path = zoo_package_path("tiny-cnn", "2") / "model.onnx"
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


class Device:
    """One agent's stats sink fed with real inferences, reporting like fleet telemetry does."""

    def __init__(self, session: ort.InferenceSession, seed: int) -> None:
        self.session = session
        self.stats = PipelineStats()
        self.stats.register("obstacles", model="tiny-cnn", version="2")
        self.rng = np.random.default_rng(seed)
        self.seq = 0

    def interval(self, shift: float = 0.0) -> LoadReport:
        for _ in range(REQUESTS_PER_INTERVAL):
            x = (self.rng.standard_normal((2, 3, 64, 64)) + shift).astype(np.float32)
            scores: np.ndarray[Any, Any] = self.session.run(None, {"input": x})[0]
            self.stats.record("obstacles", "local", 0.001)
            self.stats.observe("obstacles", "2", {"input": x}, {"scores": scores})
        self.seq += 1
        return LoadReport(
            device_id="dev-1",
            boot_id="b1",
            seq=self.seq,
            sent_at=time.time(),
            interval_s=INTERVAL_S,
            pipelines=self.stats.snapshot(INTERVAL_S),
            device=DeviceLoad(cpu_percent=1.0, ram_used_mb=1, ram_total_mb=2, gpu_source="unavailable"),
        )


def test_gaussian_psi_matches_known_values() -> None:
    assert gaussian_psi(0.0, 1.0, 0.0, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert gaussian_psi(0.0, 1.0, 0.1, 1.0) < 0.05  # a tenth of a sigma: stable
    assert gaussian_psi(0.0, 1.0, 0.5, 1.0) > PSI_THRESHOLD  # half a sigma: significant
    assert gaussian_psi(0.0, 1.0, 3.0, 1.0) > 5.0
    assert gaussian_psi(5.0, 0.0, 5.0, 0.0) == pytest.approx(0.0, abs=1e-9)  # constant input, unchanged
    assert class_psi([50] * 4, [50] * 4) == pytest.approx(0.0)
    assert class_psi([10] * 4, [10] * 4) is None  # too few rows to judge
    assert class_psi([100, 100, 0, 0], [0, 0, 100, 100]) > PSI_THRESHOLD  # type: ignore[operator]


def test_profiles_ride_in_the_load_report(session: ort.InferenceSession) -> None:
    report = Device(session, seed=1).interval(shift=0.0)
    (load,) = report.pipelines
    (profile,) = load.profiles
    assert profile.version == "2" and profile.requests == REQUESTS_PER_INTERVAL
    (inp,) = profile.inputs
    assert inp.values == REQUESTS_PER_INTERVAL * 2 * 3 * 64 * 64
    assert inp.mean == pytest.approx(0.0, abs=0.01) and inp.std == pytest.approx(1.0, abs=0.01)
    assert sum(profile.classes) == REQUESTS_PER_INTERVAL * 2 and len(profile.classes) == 4
    # Backward compatible: the wire form parses again, and a report without profiles still validates.
    assert LoadReport.model_validate_json(report.model_dump_json()) == report
    old = report.model_dump(mode="json")
    for p in old["pipelines"]:
        del p["profiles"]
    assert LoadReport.model_validate(old).pipelines[0].profiles == ()


def test_shifted_inputs_are_flagged_within_two_intervals(session: ort.InferenceSession) -> None:
    fleet = LiveFleet()
    fleet.set_status("dev-1", "active")
    events: list[Any] = []
    fleet.subscribe("events", lambda device, event: events.append(event))
    monitor = DriftMonitor(fleet)
    registry = CollectorRegistry()
    monitor.register(registry)
    device = Device(session, seed=2)
    for _ in range(3):  # the reference window after the version appeared
        monitor.on_telemetry("dev-1", device.interval())
    assert monitor.rows()[0]["reference"] == "window"
    scores = []
    for _ in range(6):  # unshifted: never flagged
        monitor.on_telemetry("dev-1", device.interval())
        (row,) = monitor.rows()
        scores.append(row["psi"])
        assert not row["drifted"], row
    print(f"unshifted PSI per interval: {[round(s, 4) for s in scores]}")
    flagged_after = None
    for n in (1, 2):
        monitor.on_telemetry("dev-1", device.interval(shift=3.0))
        if monitor.rows()[0]["drifted"]:
            flagged_after = n
            break
    (row,) = monitor.rows()
    print(f"+3 sigma: flagged after {flagged_after} interval(s), PSI {row['psi']:.2f}, parts {row['parts']}")
    assert flagged_after is not None and row["psi"] > PSI_THRESHOLD
    assert [e.kind for e in events] == ["drift.detected"] and events[0].level == "warning"
    assert fleet.get("dev-1").events[-1].kind == "drift.detected"  # type: ignore[union-attr]
    text = generate_latest(registry).decode()
    assert 'edgefleet_hub_drift_active{device="dev-1",pipeline="obstacles",version="2"} 1.0' in text
    assert "edgefleet_hub_drift_flagged_total 1.0" in text
    # Back to normal: cleared; the operator's rebaseline starts a new window.
    monitor.on_telemetry("dev-1", device.interval())
    assert not monitor.rows()[0]["drifted"] and events[-1].kind == "drift.cleared"
    assert monitor.rebaseline("dev-1", "obstacles") == 1
    assert monitor.rows()[0]["reference"] == "building"
