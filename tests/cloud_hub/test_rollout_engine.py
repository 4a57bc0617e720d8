"""The pure rollout state machine: plans, waves, bake, gates, pause/resume/abort, with an injected clock."""

from __future__ import annotations

import dataclasses

import pytest

from cloud_hub.errors import Conflict
from cloud_hub.rollouts import engine
from cloud_hub.rollouts.engine import DeviceObservation as Obs
from cloud_hub.rollouts.engine import RevertDesired, WriteDesired
from cloud_hub.rollouts.model import Rollout, RolloutSpec, TargetDevice, allowed_failures, plan_waves


def make(n: int = 10, **spec: object) -> Rollout:
    values: dict[str, object] = {"model": "m", "version": "2", "canary": 1, "waves_pct": (50, 100), "bake_s": 10}
    s = RolloutSpec.model_validate({**values, **spec})
    waves = plan_waves([f"d{i:02d}" for i in range(n)], s.canary, s.waves_pct)
    devices = []
    for w, ids in enumerate(waves):
        devices += [TargetDevice(i, len(devices), w) for i in ids]
    return Rollout("ro-1", s, "pending", 0, "updating", None, None, 0.0, 0.0, tuple(devices))


def written(r: Rollout, step: engine.Step) -> Rollout:
    """What the orchestrator does after WriteDesired: give each written device a revision."""
    ids = {i for a in step.actions if isinstance(a, WriteDesired) for i in a.device_ids}
    return dataclasses.replace(
        step.rollout,
        devices=tuple(dataclasses.replace(d, revision=1) if d.device_id in ids else d for d in step.rollout.devices),
    )


def statuses(r: Rollout) -> dict[str, str]:
    return {d.device_id: d.status for d in r.devices}


ACTIVE = Obs(online=True, phase="active")


def test_plan_canary_then_cumulative_waves() -> None:
    ids = [f"d{i}" for i in range(11)]
    assert plan_waves(ids, 1, (10, 50, 100)) == [["d0"], ["d1"], ids[2:6], ids[6:]]
    assert plan_waves(ids[:3], 1, (10, 50, 100)) == [["d0"], ["d1"], ["d2"]]
    assert plan_waves(ids[:2], 5, (100,)) == [ids[:2]]
    assert plan_waves(ids[:4], 0, (100,)) == [ids[:4]]
    with pytest.raises(ValueError, match="last wave must be 100"):
        RolloutSpec(model="m", version="1", waves_pct=(10, 50))
    with pytest.raises(ValueError, match="increasing"):
        RolloutSpec(model="m", version="1", waves_pct=(50, 10, 100))


def test_failure_budget_rounds_down_so_small_fleets_halt_on_one() -> None:
    assert allowed_failures(1, 5) == 0
    assert allowed_failures(19, 5) == 0
    assert allowed_failures(20, 5) == 1
    assert allowed_failures(100, 5) == 5
    assert allowed_failures(3, 100) == 3


def test_canary_then_waves_then_completed() -> None:
    r = make(5)  # waves: [d00], [d01, d02], [d03, d04]
    s = engine.step(r, {}, 0.0)
    assert s.actions == (WriteDesired(("d00",)),) and s.rollout.state == "running"
    r = written(r, s)
    r = engine.step(r, {"d00": Obs(online=True, phase="downloading")}, 1.0).rollout
    assert statuses(r)["d00"] == "updating" and r.phase == "updating"
    r = engine.step(r, {"d00": ACTIVE}, 2.0).rollout
    assert statuses(r)["d00"] == "active" and r.phase == "baking" and r.phase_since == 2.0
    assert engine.step(r, {"d00": ACTIVE}, 11.9).actions == ()
    s = engine.step(r, {"d00": ACTIVE}, 12.0)
    assert s.actions == (WriteDesired(("d01", "d02")),) and s.rollout.wave == 1
    r = written(r, s)
    obs = {i: ACTIVE for i in ("d00", "d01", "d02")}
    r = engine.step(r, obs, 13.0).rollout
    s = engine.step(r, obs, 23.0)
    assert s.actions == (WriteDesired(("d03", "d04")),)
    r = written(r, s)
    obs |= {"d03": ACTIVE, "d04": ACTIVE}
    r = engine.step(r, obs, 24.0).rollout
    r = engine.step(r, obs, 34.0).rollout
    assert r.state == "completed" and set(statuses(r).values()) == {"active"}
    assert engine.step(r, obs, 99.0).rollout is r


def test_canary_failure_reverts_only_the_canary() -> None:
    r = make(5, min_failed_devices=1)  # a quorum of one: the canary alone decides
    r = written(r, engine.step(r, {}, 0.0))
    s = engine.step(r, {"d00": Obs(online=True, phase="failed", error="warm-up failed")}, 1.0)
    assert s.rollout.state == "rolled_back"
    assert s.rollout.reason == "1 of 1 targeted devices failed (allowed 0 at 0%); d00: warm-up failed"
    assert s.actions == (RevertDesired(("d00",)),)
    assert statuses(s.rollout) == {"d00": "rolled_back"} | {f"d0{i}": "waiting" for i in range(1, 5)}


def test_failures_within_budget_do_not_halt() -> None:
    r = make(20, canary=0, waves_pct=(100,), max_failures_pct=5, bake_s=0)
    r = written(r, engine.step(r, {}, 0.0))
    obs = {d.device_id: ACTIVE for d in r.devices}
    obs["d03"] = Obs(online=True, phase="failed", error="x")
    r2 = engine.step(r, obs, 1.0).rollout
    assert r2.state == "completed"
    obs["d04"] = Obs(online=True, phase="failed", error="y")
    s = engine.step(r, obs, 1.0)
    assert s.rollout.state == "rolled_back" and len(s.actions[0].device_ids) == 20


def test_p99_gate_against_each_devices_own_baseline() -> None:
    r = make(3, canary=1, waves_pct=(100,), max_p99_increase_pct=50, min_failed_devices=1)
    r = written(r, engine.step(r, {}, 0.0))
    r = dataclasses.replace(
        r, devices=tuple(dataclasses.replace(d, baseline={"detect": 10.0}) if d.wave == 0 else d for d in r.devices)
    )
    r = engine.step(r, {"d00": ACTIVE}, 1.0).rollout
    fine = Obs(online=True, phase="active", p99_ms={"detect": 14.9})
    assert engine.step(r, {"d00": fine}, 2.0).rollout.state == "running"
    slow = Obs(online=True, phase="active", p99_ms={"detect": 15.5})
    s = engine.step(r, {"d00": slow}, 2.0)
    assert s.rollout.state == "rolled_back"
    assert s.rollout.reason == "device d00: pipeline detect p99 15.5 ms > baseline 10.0 ms +50%"
    assert s.actions == (RevertDesired(("d00",)),)


def test_error_rate_gate_needs_enough_requests() -> None:
    r = make(2, canary=1, waves_pct=(100,), max_error_rate_pct=5, min_failed_devices=1)
    r = written(r, engine.step(r, {}, 0.0))
    r = engine.step(r, {"d00": ACTIVE}, 1.0).rollout
    few = Obs(online=True, phase="active", requests=10, errors=5)
    assert engine.step(r, {"d00": few}, 2.0).rollout.state == "running"
    many = Obs(online=True, phase="active", requests=100, errors=6)
    s = engine.step(r, {"d00": many}, 2.0)
    assert s.rollout.state == "rolled_back" and s.rollout.reason == "device d00: error rate 6.0% > 5%"


def test_offline_devices_do_not_block_and_end_completed_with_pending() -> None:
    r = make(3, canary=0, waves_pct=(100,), bake_s=0)
    r = written(r, engine.step(r, {}, 0.0))
    obs = {"d00": ACTIVE, "d01": ACTIVE, "d02": Obs(online=False)}
    r = engine.step(r, obs, 1.0).rollout
    assert r.state == "completed_with_pending" and statuses(r)["d02"] == "pending"
    assert engine.step(r, obs, 2.0).rollout.state == "completed_with_pending"
    obs["d02"] = ACTIVE
    r = engine.step(r, obs, 3.0).rollout
    assert r.state == "completed" and statuses(r)["d02"] == "active"


def test_deadline_turns_slow_online_devices_pending() -> None:
    r = make(2, canary=0, waves_pct=(100,), bake_s=0, deadline_s=60)
    r = written(r, engine.step(r, {}, 0.0))
    obs = {"d00": ACTIVE, "d01": Obs(online=True, phase="downloading")}
    r = engine.step(r, obs, 59.0).rollout
    assert r.state == "running" and statuses(r)["d01"] == "updating"
    r = engine.step(r, obs, 60.0).rollout
    assert r.state == "completed_with_pending"
    assert [d.error for d in r.devices if d.device_id == "d01"] == ["no report within the deadline"]


def test_pause_resume_abort() -> None:
    r = make(3, canary=1, waves_pct=(100,), bake_s=5)
    r = written(r, engine.step(r, {}, 0.0))
    r = engine.pause(r, 1.0).rollout
    with pytest.raises(Conflict):
        engine.pause(r, 1.0)
    # Paused: observed, but no advance even long after the bake.
    r = engine.step(r, {"d00": ACTIVE}, 100.0).rollout
    assert r.state == "paused" and statuses(r)["d00"] == "active" and r.wave == 0
    r = engine.resume(r, 200.0).rollout
    assert r.state == "running" and r.phase_since == 200.0
    with pytest.raises(Conflict):
        engine.resume(r, 200.0)
    r = engine.step(r, {"d00": ACTIVE}, 201.0).rollout
    assert engine.step(r, {"d00": ACTIVE}, 205.0).rollout.wave == 0
    s = engine.step(r, {"d00": ACTIVE}, 206.0)
    assert s.actions == (WriteDesired(("d01", "d02")),)
    r = written(r, s)
    s = engine.abort(r, 207.0, rollback=True)
    assert s.rollout.state == "aborted" and s.actions == (RevertDesired(("d00", "d01", "d02")),)
    s = engine.abort(r, 207.0, rollback=False)
    assert s.rollout.state == "aborted" and s.actions == ()
    with pytest.raises(Conflict):
        engine.abort(s.rollout, 208.0, rollback=False)


def test_a_lone_failure_is_that_devices_own_below_the_quorum() -> None:
    # One device reports failed (broken or lying): it is marked failed, the rollout goes on.
    r = make(6, canary=2, waves_pct=(100,))  # quorum: min_failed_devices = 2
    r = written(r, engine.step(r, {}, 0.0))
    obs = {"d00": Obs(online=True, phase="failed", error="warm-up failed"), "d01": ACTIVE}
    s = engine.step(r, obs, 1.0)
    assert s.rollout.state == "running" and s.actions == ()
    assert statuses(s.rollout)["d00"] == "failed" and s.rollout.devices[0].error == "warm-up failed"
    s = engine.step(s.rollout, obs, 11.0)
    assert s.actions == (WriteDesired(("d02", "d03", "d04", "d05")),)
    # A second failure meets the quorum: now the fleet rolls back.
    r = written(s.rollout, s)
    s = engine.step(r, obs | {"d02": Obs(online=True, phase="failed", error="e")}, 12.0)
    assert s.rollout.state == "rolled_back" and s.rollout.reason is not None
    assert s.rollout.reason.startswith("2 of 6 targeted devices failed")
    assert s.actions == (RevertDesired(tuple(f"d0{i}" for i in range(6))),)


def test_a_canary_of_one_still_decides_alone() -> None:
    r = make(5)  # canary 1 < quorum 2: the quorum is what has been targeted so far
    r = written(r, engine.step(r, {}, 0.0))
    s = engine.step(r, {"d00": Obs(online=True, phase="failed", error="warm-up failed")}, 1.0)
    assert s.rollout.state == "rolled_back" and s.actions == (RevertDesired(("d00",)),)


def test_a_lone_gate_breach_reverts_that_device_only() -> None:
    r = make(4, canary=0, waves_pct=(100,), max_error_rate_pct=5, bake_s=10)
    r = written(r, engine.step(r, {}, 0.0))
    obs = {d.device_id: Obs(online=True, phase="active", requests=100, errors=0) for d in r.devices}
    r = engine.step(r, obs, 1.0).rollout
    obs["d02"] = Obs(online=True, phase="active", requests=100, errors=100)  # 100 % errors
    s = engine.step(r, obs, 2.0)
    assert s.rollout.state == "running"
    assert s.actions == (RevertDesired(("d02",)),)
    assert statuses(s.rollout)["d02"] == "rolled_back" and "error rate 100.0%" in str(s.rollout.devices[2].error)
    s = engine.step(s.rollout, obs, 12.0)
    assert s.rollout.state == "completed" and statuses(s.rollout)["d02"] == "rolled_back"
    assert s.rollout.summary()["counts"] == {"active": 3, "rolled_back": 1}  # reported
    # A second breach meets the quorum (2 bad of 4 > floor(0)): had it come before the end, the fleet rolls back.
    obs["d03"] = Obs(online=True, phase="active", requests=100, errors=100)
    r2 = dataclasses.replace(s.rollout, state="running", phase="baking", phase_since=12.0)
    s = engine.step(r2, obs, 13.0)
    assert s.rollout.state == "rolled_back" and s.rollout.reason is not None and "quorum 2" in s.rollout.reason
