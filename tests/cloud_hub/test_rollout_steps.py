"""Issue 16: rollout steps in the pure engine (shadow -> split -> full per wave, the agreement and drift
gates), the desired trial the orchestrator writes, and the evidence the gates read."""

from __future__ import annotations

import dataclasses

import pytest

from cloud_hub.fleet.drift import DriftMonitor
from cloud_hub.fleet.live import LiveFleet
from cloud_hub.rollouts import engine
from cloud_hub.rollouts.engine import DeviceObservation as Obs
from cloud_hub.rollouts.engine import RevertDesired, WriteDesired
from cloud_hub.rollouts.evidence import Evidence
from cloud_hub.rollouts.model import Rollout, RolloutSpec, TargetDevice, device_stage, plan_waves
from cloud_hub.rollouts.orchestrator import _trial
from protocols.messages import (
    DesiredModel,
    DesiredState,
    DeviceLoad,
    LoadReport,
    PipelineLoad,
    RouteCounts,
    ShadowStats,
    TensorProfile,
    VersionProfile,
)
from protocols.signature import ManifestSignature

STEPS = {"shadow_pct": 10, "split_pct": 5, "min_compared": 50, "min_agreement_pct": 99}


def make(n: int = 3, **spec: object) -> Rollout:
    values: dict[str, object] = {"model": "m", "version": "2", "canary": 1, "waves_pct": (100,), "bake_s": 10}
    s = RolloutSpec.model_validate({**values, **STEPS, **spec})
    waves = plan_waves([f"d{i:02d}" for i in range(n)], s.canary, s.waves_pct)
    devices = []
    for w, ids in enumerate(waves):
        devices += [TargetDevice(i, len(devices), w) for i in ids]
    return Rollout("ro-1", s, "pending", 0, "updating", None, None, 0.0, 0.0, tuple(devices))


def written(step: engine.Step, previous: str | None = "1") -> Rollout:
    """What the orchestrator does after WriteDesired: a revision, and (first time) the previous version."""
    ids = {i for a in step.actions if isinstance(a, WriteDesired) for i in a.device_ids}
    rev = 1 + max((d.revision or 0 for d in step.rollout.devices), default=0)
    prev = None if previous is None else {"name": "m", "version": previous}
    return dataclasses.replace(
        step.rollout,
        devices=tuple(
            dataclasses.replace(d, revision=rev, previous=d.previous if d.revision else prev)
            if d.device_id in ids
            else d
            for d in step.rollout.devices
        ),
    )


def status(r: Rollout, device_id: str = "d00") -> str:
    return next(d.status for d in r.devices if d.device_id == device_id)


def active(compared: int = 0, agreed: int = 0, **extra: object) -> Obs:
    return Obs(online=True, phase="active", compared=compared, agreed=agreed, **extra)  # type: ignore[arg-type]


def test_spec_stages_follow_the_options() -> None:
    assert make().spec.stages == ("shadow", "split", "full")
    assert make(shadow_pct=None).spec.stages == ("split", "full")
    assert make(shadow_pct=None, split_pct=None).spec.stages == ("full",)
    with pytest.raises(ValueError):
        make(split_pct=100)  # a split of 100 % is the full step


def test_a_wave_goes_shadow_then_split_then_full_and_the_shadow_waits_for_comparisons() -> None:
    r = make(2)
    s = engine.step(r, {}, 0.0)
    assert s.rollout.stage == "shadow" and s.actions == (WriteDesired(("d00",)),)
    r = written(s)
    r = engine.step(r, {"d00": active()}, 1.0).rollout
    assert status(r) == "active" and r.phase == "baking"
    # Baked, but only 49 of the 50 comparisons: the step waits.
    s = engine.step(r, {"d00": active(49, 49)}, 20.0)
    assert s.actions == () and s.rollout.stage == "shadow"
    s = engine.step(r, {"d00": active(50, 50)}, 20.0)
    assert s.rollout.stage == "split" and s.actions == (WriteDesired(("d00",)),)
    assert status(s.rollout) == "updating" and s.rollout.devices[0].activated_at is None
    r = written(s)
    r = engine.step(r, {"d00": active()}, 21.0).rollout
    s = engine.step(r, {"d00": active()}, 31.0)  # no comparisons needed after the shadow step
    assert s.rollout.stage == "full" and s.actions == (WriteDesired(("d00",)),)
    r = written(s)
    r = engine.step(r, {"d00": active()}, 32.0).rollout
    s = engine.step(r, {"d00": active()}, 42.0)
    assert s.rollout.wave == 1 and s.rollout.stage == "shadow" and s.actions == (WriteDesired(("d01",)),)
    r = written(s)
    assert device_stage(r, r.devices[0]) == "full" and device_stage(r, r.devices[1]) == "shadow"


def test_low_agreement_with_enough_comparisons_halts_and_reverts() -> None:
    r = written(engine.step(make(3), {}, 0.0))
    r = engine.step(r, {"d00": active()}, 1.0).rollout
    # Below min_compared, a low agreement is not judged yet.
    assert engine.step(r, {"d00": active(49, 0)}, 2.0).rollout.state == "running"
    s = engine.step(r, {"d00": active(60, 12, max_abs_diff=0.25)}, 2.0)
    assert s.rollout.state == "rolled_back"
    assert s.rollout.reason == "device d00: shadow agreement 20.0% (12/60, max abs diff 0.25) of 2 < 99%"
    assert s.actions == (RevertDesired(("d00",)),)
    assert {d.device_id: d.status for d in s.rollout.devices} == {"d00": "rolled_back", "d01": "waiting",
                                                                  "d02": "waiting"}  # fmt: skip


def test_drift_gate_in_the_split_step() -> None:
    r = make(2, shadow_pct=None, max_drift_psi=0.2)
    r = written(engine.step(r, {}, 0.0))
    assert r.stage == "split"
    r = engine.step(r, {"d00": active()}, 1.0).rollout
    calm = active(drift_psi=0.05, drift_part="detect output:scores")
    assert engine.step(r, {"d00": calm}, 2.0).rollout.state == "running"
    drifted = active(drift_psi=3.1, drift_part="detect output:scores")
    s = engine.step(r, {"d00": drifted}, 2.0)
    assert s.rollout.state == "rolled_back"
    assert s.rollout.reason == "device d00: drift PSI 3.100 (detect output:scores) > 0.2"


def test_agreement_is_not_a_gate_outside_the_shadow_step() -> None:
    r = make(2, shadow_pct=None)
    r = written(engine.step(r, {}, 0.0))
    r = engine.step(r, {"d00": active()}, 1.0).rollout
    assert engine.step(r, {"d00": active(100, 0)}, 2.0).rollout.state == "running"


def test_a_device_without_a_previous_version_skips_the_steps() -> None:
    r = written(engine.step(make(2), {}, 0.0), previous=None)
    assert device_stage(r, r.devices[0]) == "full"
    r = engine.step(r, {"d00": active()}, 1.0).rollout
    s = engine.step(r, {"d00": active()}, 11.0)  # no comparisons to wait for, nothing to write again
    assert s.rollout.stage == "split" and s.actions == ()


def test_short_of_comparisons_at_the_deadline_is_pending() -> None:
    r = written(engine.step(make(2, deadline_s=30), {}, 0.0))
    r = engine.step(r, {"d00": active()}, 1.0).rollout  # bakes from 1.0
    assert engine.step(r, {"d00": active(3, 3)}, 30.0).rollout.stage == "shadow"
    s = engine.step(r, {"d00": active(3, 3)}, 31.0)
    # Pending devices never block: the next step is written to it (it gets it when it has traffic again).
    assert s.rollout.stage == "split" and s.actions == (WriteDesired(("d00",)),)


def _model(version: str) -> DesiredModel:
    sig = ManifestSignature(key_id="0" * 16, signature="A" * 86 + "==")
    return DesiredModel(name="m", version=version, sha256="b" * 64, size=1, url="https://hub/x.tar", signature=sig)


def test_desired_trial_of_a_step_and_its_validation() -> None:
    spec = make().spec
    t = _trial(spec, "shadow", _model("2"))
    assert (t.mode, t.share, t.candidate.version) == ("shadow", 0.1, "2")
    assert _trial(spec, "split", _model("2")).share == 0.05
    DesiredState(device_id="d", revision=1, issued_at=0, models=(_model("1"),), trials=(t,))
    with pytest.raises(ValueError, match="trial of 'm'"):
        DesiredState(device_id="d", revision=1, issued_at=0, models=(_model("2"),), trials=(t,))
    with pytest.raises(ValueError, match="trial of 'm'"):
        DesiredState(device_id="d", revision=1, issued_at=0, models=(), trials=(t,))


def _report(seq: int, profiles: tuple[VersionProfile, ...], shadow: ShadowStats | None = None) -> LoadReport:
    load = PipelineLoad(name="detect", model="m", version="1", priority="standard", requests_per_s=1.0,
                        routes=RouteCounts(local=10), shadow=shadow, profiles=profiles)  # fmt: skip
    device = DeviceLoad(cpu_percent=1.0, ram_used_mb=1, ram_total_mb=2, gpu_source="unavailable")
    return LoadReport(
        device_id="d00", boot_id="b", seq=seq, sent_at=0.0, interval_s=1.0, pipelines=(load,), device=device
    )


def _profile(version: str, mean: float) -> VersionProfile:
    out = TensorProfile(name="scores", values=400, mean=mean, std=1.0)
    return VersionProfile(version=version, requests=100, outputs=(out,))


def test_evidence_sums_shadow_comparisons_and_scores_the_new_version_against_the_old_reference() -> None:
    now = [0.0]
    fleet = LiveFleet()
    monitor = DriftMonitor(fleet, clock=lambda: now[0])
    evidence = Evidence(fleet, monitor, clock=lambda: now[0])
    for seq in range(1, 4):  # v1's reference window, then v2 shadows it
        now[0] = float(seq)
        stats = ShadowStats(version="2", sampled=6, compared=5, agreed=seq - 1, max_abs_diff=0.1 * seq)
        fleet.notify("telemetry", "d00", _report(seq, (_profile("1", 0.0),), stats))
    a = evidence.agreement("d00", "m", "2", since=1.0)
    assert (a.compared, a.agreed, a.max_abs_diff) == (10, 3, pytest.approx(0.3))
    assert evidence.agreement("d00", "m", "3", since=0.0).compared == 0
    assert evidence.drift_against("d00", "m", "2", "1", since=0.0) is None  # no profile of v2 yet
    now[0] = 4.0
    fleet.notify("telemetry", "d00", _report(4, (_profile("1", 0.0), _profile("2", 3.0))))
    psi, part = evidence.drift_against("d00", "m", "2", "1", since=3.5) or (0.0, "")
    assert psi > 5.0 and part == "detect output:scores"
    assert evidence.drift_against("d00", "m", "2", "1", since=4.0) is None  # nothing received after `since`
