"""The rollout state machine as pure functions: `step(rollout, observations, now) -> Step(rollout, actions)`.

No I/O and no clock: the orchestrator (orchestrator.py) gathers observations from the store, calls these,
performs the actions (desired-state writes) and persists the result in one transaction.

Rules (also in docs/rollouts.md):
- Waves run in order. A wave settles when none of its devices is `updating` (each is active, failed, or
  pending = offline / past the deadline). A settled wave bakes `bake_s`, then the next wave starts.
- Per device, on every step while running: a reported failure, or a gate breach: its error rate on the
  model's pipelines above max_error_rate_pct (with at least MIN_GATE_REQUESTS requests), or a pipeline's
  p99 above its device's own pre-update baseline by more than max_p99_increase_pct (and by >=
  P99_MIN_INCREASE_MS). A breaching device is reverted alone (`rolled_back` with the reason).
- Fleet rollback (quorum): when the bad devices among those targeted so far are more than
  floor(max_failures_pct x targeted) and at least min_failed_devices (default 2; fewer when fewer devices
  are targeted so far, so a bad canary of one still halts before the others are touched), the rollout is
  set `rolled_back` and every touched device is reverted. Past the canary one device alone (a broken or
  lying one) cannot.
- Pending devices never block and never count as failed; the last wave then ends `completed_with_pending`,
  which becomes `completed` once none is pending or updating.
- Steps (issue 16): with shadow_pct / split_pct each wave goes shadow -> split -> full; each step is written,
  settles and bakes like a wave. A shadow step also waits until every active device compared at least
  min_compared samples (then `pending` at the deadline, counted from the bake's start); agreement below
  min_agreement_pct is a gate breach, so is a drift PSI above max_drift_psi (split and full steps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from cloud_hub.errors import Conflict
from cloud_hub.rollouts.model import (
    FINAL_STATES,
    TOUCHED,
    DeviceStatus,
    Rollout,
    RolloutSpec,
    RolloutState,
    Stage,
    TargetDevice,
    allowed_failures,
    device_stage,
    tries,
)
from protocols.messages import ModelPhase

MIN_GATE_REQUESTS = 20
P99_MIN_INCREASE_MS = 1.0


@dataclass(frozen=True, slots=True)
class DeviceObservation:
    """What the hub knows of one device right now, for this rollout's model and version."""

    online: bool = False
    phase: ModelPhase | None = None  # reported state of the rollout's version, for our revision or later
    error: str | None = None
    progress: float | None = None
    p99_ms: Mapping[str, float] = field(default_factory=dict)  # per pipeline, since activation, new version
    requests: int = 0  # on the model's pipelines since activation
    errors: int = 0
    compared: int = 0  # shadow comparisons of the candidate since activation (shadow step)
    agreed: int = 0
    max_abs_diff: float | None = None
    drift_psi: float | None = None  # the new version's profile against the replaced version's reference
    drift_part: str | None = None  # "<pipeline> <part>" that scored drift_psi


@dataclass(frozen=True, slots=True)
class WriteDesired:
    """Set the rollout's version in these devices' desired state (recording previous version and baseline)."""

    device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RevertDesired:
    """Put these devices' previous version back (or remove the model where there was none)."""

    device_ids: tuple[str, ...]


Action = WriteDesired | RevertDesired
Observations = Mapping[str, DeviceObservation]


@dataclass(frozen=True, slots=True)
class Step:
    """The new state and what must be done to get there."""

    rollout: Rollout
    actions: tuple[Action, ...] = ()


def _set(d: TargetDevice, now: float, status: DeviceStatus, **changes: object) -> TargetDevice:
    return dataclasses.replace(d, status=status, updated_at=now, **changes)  # type: ignore[arg-type]  # typed kwargs


def observe(d: TargetDevice, o: DeviceObservation | None, now: float) -> TargetDevice:
    """A device's status after what was observed of it."""
    if d.status in ("waiting", "rolled_back"):
        return d
    o = o or DeviceObservation()
    if o.phase == "active":
        return d if d.status == "active" else _set(d, now, "active", activated_at=now, error=None)
    if o.phase == "failed":
        return d if d.status == "failed" else _set(d, now, "failed", error=o.error or "failed")
    if d.status == "updating" and not o.online:
        return _set(d, now, "pending", error="offline")
    return d


def agreement_pct(o: DeviceObservation) -> float | None:
    """Shadow agreement in %, or None before any comparison."""
    return 100 * o.agreed / o.compared if o.compared else None


def _trial_breach(d: TargetDevice, o: DeviceObservation, spec: RolloutSpec, stage: Stage) -> str | None:
    pct = agreement_pct(o)
    if stage == "shadow" and pct is not None and o.compared >= spec.min_compared and pct < spec.min_agreement_pct:
        diff = "" if o.max_abs_diff is None else f", max abs diff {o.max_abs_diff:.3g}"
        return (
            f"device {d.device_id}: shadow agreement {pct:.1f}% ({o.agreed}/{o.compared}{diff}) of "
            f"{spec.version} < {spec.min_agreement_pct:g}%"
        )
    if spec.max_drift_psi is not None and o.drift_psi is not None and o.drift_psi > spec.max_drift_psi:
        return f"device {d.device_id}: drift PSI {o.drift_psi:.3f} ({o.drift_part}) > {spec.max_drift_psi:g}"
    return None


def gate_breach(d: TargetDevice, o: DeviceObservation | None, spec: RolloutSpec, stage: Stage = "full") -> str | None:
    """Why an active device's telemetry breaches a gate (error rate, p99 against its baseline, shadow
    agreement, drift), or None."""
    if d.status != "active" or o is None:
        return None
    if (why := _trial_breach(d, o, spec, stage)) is not None:
        return why
    if spec.max_error_rate_pct is not None and o.requests >= MIN_GATE_REQUESTS:
        rate = 100 * o.errors / o.requests
        if rate > spec.max_error_rate_pct:
            return f"device {d.device_id}: error rate {rate:.1f}% > {spec.max_error_rate_pct:g}%"
    if spec.max_p99_increase_pct is not None and d.baseline:
        for pipeline, p99 in sorted(o.p99_ms.items()):
            base = d.baseline.get(pipeline)
            if base is None or base <= 0:
                continue
            limit = base * (1 + spec.max_p99_increase_pct / 100)
            if p99 > limit and p99 - base >= P99_MIN_INCREASE_MS:
                return (
                    f"device {d.device_id}: pipeline {pipeline} p99 {p99:.1f} ms > baseline {base:.1f} ms "
                    f"+{spec.max_p99_increase_pct:g}%"
                )
    return None


def check_gates(r: Rollout, obs: Observations) -> tuple[str | None, dict[str, str]]:
    """(why the whole rollout must roll back or None, {device: why} of gate breaches that are only that
    device's failure). The fleet rolls back when the bad devices (failed + breaching) are more than
    floor(max_failures_pct x targeted) *and* at least min_failed_devices (the quorum)."""
    spec = r.spec
    # While a rollout runs, a rolled_back device is an outlier reverted alone: it counts as failed.
    touched = [d for d in r.devices if d.status in (*TOUCHED, "rolled_back")]
    failed = [d for d in touched if d.status in ("failed", "rolled_back")]
    breaches = {
        d.device_id: why for d in touched if (why := gate_breach(d, obs.get(d.device_id), spec, device_stage(r, d)))
    }
    bad = len(failed) + len(breaches)
    allowed = allowed_failures(len(touched), spec.max_failures_pct)
    # Fewer devices targeted than the quorum (a canary of one) decide alone: a bad canary still halts
    # before the others are touched.
    quorum = min(spec.min_failed_devices, len(touched))
    if bad <= allowed or bad < quorum:
        return None, breaches
    if not breaches:
        first = failed[0]
        return (
            f"{len(failed)} of {len(touched)} targeted devices failed (allowed {allowed} at "
            f"{spec.max_failures_pct:g}%); {first.device_id}: {first.error}"
        ), {}
    if bad == 1:
        return next(iter(breaches.values())), {}
    first_why = next(iter(breaches.values()))
    return (
        f"{bad} of {len(touched)} targeted devices failed or breached a gate (allowed {allowed} at "
        f"{spec.max_failures_pct:g}%, quorum {quorum}); {first_why}"
    ), {}


def _fail_outliers(r: Rollout, outliers: Mapping[str, str], now: float) -> Step:
    """Gate breaches below the quorum: each is that device's failure, reverted alone (`rolled_back`, with
    the reason as its error; it still counts towards the quorum)."""
    changed = {i: _set(d, now, "rolled_back", error=outliers[i]) for d in r.devices if (i := d.device_id) in outliers}
    return Step(dataclasses.replace(_replace_devices(r, changed), updated_at=now), (RevertDesired(tuple(changed)),))


def _replace_devices(r: Rollout, changed: Mapping[str, TargetDevice]) -> Rollout:
    return dataclasses.replace(r, devices=tuple(changed.get(d.device_id, d) for d in r.devices))


def _start_wave(r: Rollout, wave: int, now: float) -> Step:
    started = {d.device_id: _set(d, now, "updating", started_at=now) for d in r.in_wave(wave) if d.status == "waiting"}
    r = dataclasses.replace(
        _replace_devices(r, started),
        state="running",
        wave=wave,
        stage=r.spec.stages[0],
        phase="updating",
        phase_since=now,
        updated_at=now,
    )
    return Step(r, (WriteDesired(tuple(started)),) if started else ())


def _start_stage(r: Rollout, stage: Stage, now: float) -> Step:
    """The wave's next step: its devices that try the candidate and are active (or pending: they get the
    retained state when back) are written again; the others already have the version."""
    moved = {
        d.device_id: _set(d, now, "updating", activated_at=None)
        for d in r.in_wave(r.wave)
        if d.status in ("active", "pending") and tries(d, r.spec)
    }
    r = dataclasses.replace(_replace_devices(r, moved), stage=stage, phase="updating", phase_since=now, updated_at=now)
    return Step(r, (WriteDesired(tuple(moved)),) if moved else ())


def _short_of_comparisons(r: Rollout, obs: Observations) -> dict[str, TargetDevice]:
    """Active devices of a shadow step that have not compared min_compared samples yet."""
    if r.stage != "shadow":
        return {}
    short = {}
    for d in r.in_wave(r.wave):
        o = obs.get(d.device_id) or DeviceObservation()
        if d.status == "active" and tries(d, r.spec) and o.compared < r.spec.min_compared:
            short[d.device_id] = d
    return short


def _after_bake(r: Rollout, obs: Observations, now: float) -> Step:
    short = _short_of_comparisons(r, obs)
    deadline = r.spec.deadline_s
    if short and deadline is not None and r.phase_since is not None and now - r.phase_since >= deadline:
        r = _replace_devices(r, {
            i: _set(d, now, "pending", error=f"fewer than {r.spec.min_compared} shadow comparisons within the deadline")
            for i, d in short.items()
        })  # fmt: skip
        short = {}
    if short:
        return Step(r)
    stages = r.spec.stages
    if r.stage in stages and stages.index(r.stage) + 1 < len(stages):
        return _start_stage(r, stages[stages.index(r.stage) + 1], now)
    if r.wave + 1 < r.waves:
        return _start_wave(r, r.wave + 1, now)
    return Step(_finish(r, now))


def _revert_touched(r: Rollout, now: float, state: RolloutState, reason: str | None) -> Step:
    touched = {d.device_id: _set(d, now, "rolled_back") for d in r.devices if d.status in TOUCHED}
    r = dataclasses.replace(_replace_devices(r, touched), state=state, reason=reason, updated_at=now)
    return Step(r, (RevertDesired(tuple(touched)),) if touched else ())


def _finish(r: Rollout, now: float) -> Rollout:
    open_ = any(d.status in ("pending", "updating") for d in r.devices)
    return dataclasses.replace(r, state="completed_with_pending" if open_ else "completed", updated_at=now)


def step(r: Rollout, obs: Observations, now: float) -> Step:  # noqa: PLR0911  # one return per transition
    """Advance a rollout by what was observed; never goes back in time."""
    if r.state in FINAL_STATES:
        return Step(r)
    observed = tuple(observe(d, obs.get(d.device_id), now) for d in r.devices)
    if observed != r.devices:
        r = dataclasses.replace(r, devices=observed, updated_at=now)
    if r.state == "paused":
        return Step(r)
    if r.state == "pending":
        return _start_wave(r, 0, now)
    if r.state == "completed_with_pending":
        return Step(_finish(r, now))
    breach, outliers = check_gates(r, obs)
    if breach is not None:
        return _revert_touched(r, now, "rolled_back", breach)
    if outliers:
        return _fail_outliers(r, outliers, now)
    if r.phase == "updating":
        late = {d.device_id: d for d in r.in_wave(r.wave) if d.status == "updating"}
        deadline = r.spec.deadline_s
        if late and deadline is not None and r.phase_since is not None and now - r.phase_since >= deadline:
            r = _replace_devices(
                r, {i: _set(d, now, "pending", error="no report within the deadline") for i, d in late.items()}
            )
            late = {}
        if late:
            return Step(r)
        r = dataclasses.replace(r, phase="baking", phase_since=now, updated_at=now)
    if r.phase_since is not None and now - r.phase_since < r.spec.bake_s:
        return Step(r)
    return _after_bake(r, obs, now)


def pause(r: Rollout, now: float) -> Step:
    """Stop advancing (devices keep what they were given)."""
    if r.state not in ("pending", "running"):
        raise Conflict(f"rollout {r.id} is {r.state}; only a pending or running rollout can be paused")
    return Step(dataclasses.replace(r, state="paused", updated_at=now))


def resume(r: Rollout, now: float) -> Step:
    """Carry on; the current wave's deadline and bake start again."""
    if r.state != "paused":
        raise Conflict(f"rollout {r.id} is {r.state}, not paused")
    started = any(d.status != "waiting" for d in r.devices)
    return Step(dataclasses.replace(r, state="running" if started else "pending", phase_since=now, updated_at=now))


def abort(r: Rollout, now: float, *, rollback: bool) -> Step:
    """Stop for good; with `rollback`, revert every touched device too."""
    if r.state in FINAL_STATES:
        raise Conflict(f"rollout {r.id} is already {r.state}")
    if rollback:
        return _revert_touched(r, now, "aborted", "aborted by the operator (rolled back)")
    return Step(dataclasses.replace(r, state="aborted", reason="aborted by the operator", updated_at=now))
