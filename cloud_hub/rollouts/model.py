"""What a rollout is: its spec, its plan of waves, its persisted state. Plain frozen data, no I/O."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from protocols.common import Name, Version
from protocols.messages import ApplyPolicy, Labels
from protocols.pipeline import ShadowCompare

RolloutState = Literal["pending", "running", "paused", "completed", "completed_with_pending", "rolled_back", "aborted"]
# Rollouts the orchestrator still drives (completed_with_pending: it watches the pending devices report).
LIVE_STATES: tuple[RolloutState, ...] = ("pending", "running", "paused", "completed_with_pending")
FINAL_STATES: tuple[RolloutState, ...] = ("completed", "rolled_back", "aborted")
Phase = Literal["updating", "baking"]
# Steps of a wave (issue 16): shadow (candidate next to the serving version, compared), split (answers a
# share), full (the version itself). A rollout without shadow/split has only "full".
Stage = Literal["shadow", "split", "full"]
# waiting: its wave has not come; updating: desired written, not active yet; pending: offline (or past the
# deadline), does not block the rollout; active / failed: as reported; rolled_back: desired set back.
DeviceStatus = Literal["waiting", "updating", "pending", "active", "failed", "rolled_back"]
TOUCHED: tuple[DeviceStatus, ...] = ("updating", "pending", "active", "failed")


class RolloutSpec(BaseModel):
    """What the operator asked for (`cloud-hub rollouts create`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Name = Field(description="Model name (pushed to the registry).")
    version: Version = Field(description="Version to roll out.")
    selector: Labels = Field(default_factory=dict, description="Devices whose labels include all of these.")
    canary: NonNegativeInt = Field(default=1, description="Devices in the first wave, alone.")
    waves_pct: tuple[PositiveFloat, ...] = Field(
        default=(100.0,), description="Cumulative percentages of the devices after the canary; last is 100."
    )
    bake_s: NonNegativeFloat = Field(default=60.0, description="Seconds a settled wave is watched before the next.")
    max_failures_pct: NonNegativeFloat = Field(
        default=0.0, le=100, description="Failed devices allowed, as % of those targeted so far (rounded down)."
    )
    min_failed_devices: PositiveInt = Field(
        default=2,
        description="Quorum: failed devices (reported failures and gate breaches) needed, on top of "
        "max_failures_pct, before the whole rollout is rolled back. Below it a failure is that device's own: "
        "it is marked failed (and, for a gate breach, reverted) and the rollout goes on.",
    )
    max_p99_increase_pct: NonNegativeFloat | None = Field(
        default=None, description="Halt when a pipeline's p99 exceeds its device's own baseline by more."
    )
    max_error_rate_pct: NonNegativeFloat | None = Field(
        default=None, le=100, description="Halt when a device's error rate on the model's pipelines exceeds this."
    )
    deadline_s: PositiveFloat | None = Field(
        default=None, description="Longest a wave waits for its online devices; then they are marked pending."
    )
    apply: ApplyPolicy = Field(default_factory=ApplyPolicy, description="When devices may switch.")
    shadow_pct: PositiveFloat | None = Field(
        default=None, le=100, description="Shadow step first: % of each device's requests the candidate sees."
    )
    split_pct: PositiveFloat | None = Field(
        default=None, lt=100, description="Split step (after shadow, if any): % of requests the candidate answers."
    )
    shadow_compare: ShadowCompare = Field(default="auto", description="How the shadow step compares outputs.")
    shadow_tolerance: NonNegativeFloat = Field(default=1e-3, description="Max abs difference that still agrees.")
    min_agreement_pct: NonNegativeFloat = Field(
        default=99.0, le=100, description="Shadow gate: halt when a device's agreement is below this."
    )
    min_compared: PositiveInt = Field(
        default=100, description="Shadow gate: comparisons a device needs before it is judged and may go on."
    )
    max_drift_psi: PositiveFloat | None = Field(
        default=None,
        description="Drift gate: halt when the new version's profile on a device scores a PSI above this against "
        "the reference profile of the version it replaces there (split and full steps).",
    )
    allow_safety_split: bool = Field(
        default=False, description="Shadow and split steps also apply to safety pipelines."
    )

    @model_validator(mode="after")
    def _waves(self) -> RolloutSpec:
        if not self.waves_pct or any(b <= a for a, b in zip(self.waves_pct, self.waves_pct[1:], strict=False)):
            raise ValueError("waves must be increasing cumulative percentages, e.g. 10,50,100")
        if self.waves_pct[-1] != 100:
            raise ValueError("the last wave must be 100%")
        return self

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The steps each wave goes through, in order."""
        steps: list[Stage] = []
        if self.shadow_pct is not None:
            steps.append("shadow")
        if self.split_pct is not None:
            steps.append("split")
        return (*steps, "full")


@dataclass(frozen=True, slots=True)
class TargetDevice:
    """One device of a rollout and where it stands."""

    device_id: str
    position: int
    wave: int
    status: DeviceStatus = "waiting"
    revision: int | None = None
    previous: dict[str, Any] | None = None
    baseline: dict[str, float] | None = None
    started_at: float | None = None
    activated_at: float | None = None
    error: str | None = None
    updated_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class Rollout:
    """A rollout's persisted state."""

    id: str
    spec: RolloutSpec
    state: RolloutState
    wave: int
    phase: Phase
    phase_since: float | None
    reason: str | None
    created_at: float
    updated_at: float
    devices: tuple[TargetDevice, ...] = field(default=())
    stage: Stage = "full"

    @property
    def waves(self) -> int:
        """Number of waves (the canary counts as one)."""
        return 1 + max((d.wave for d in self.devices), default=-1)

    def in_wave(self, wave: int) -> list[TargetDevice]:
        """Devices of one wave."""
        return [d for d in self.devices if d.wave == wave]

    def summary(self) -> dict[str, Any]:
        """JSON-ready dict without the per-device rows, with counts per status."""
        counts: dict[str, int] = {}
        for d in self.devices:
            counts[d.status] = counts.get(d.status, 0) + 1
        return {
            "id": self.id,
            "model": self.spec.model,
            "version": self.spec.version,
            "spec": self.spec.model_dump(mode="json"),
            "state": self.state,
            "wave": self.wave,
            "waves": self.waves,
            "phase": self.phase,
            "stage": self.stage,
            "stages": list(self.spec.stages),
            "phase_since": self.phase_since,
            "reason": self.reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "devices_total": len(self.devices),
            "counts": counts,
        }


def plan_waves(device_ids: Sequence[str], canary: int, waves_pct: Sequence[float]) -> list[list[str]]:
    """Split devices (in the given, deterministic order) into the canary wave, then cumulative-% waves.

    Wave i after the canary holds the remaining devices up to ceil(pct_i x remaining); empty waves are dropped.
    """
    ids = list(device_ids)
    head, rest = ids[:canary], ids[canary:]
    waves = [head] if head else []
    taken = 0
    for pct in waves_pct:
        upto = min(len(rest), math.ceil(len(rest) * pct / 100 - 1e-9))
        if upto > taken:
            waves.append(rest[taken:upto])
            taken = upto
    return waves


def allowed_failures(targeted: int, max_failures_pct: float) -> int:
    """Failed devices tolerated among `targeted`: floor(pct x targeted), so below one device none is."""
    return math.floor(targeted * max_failures_pct / 100 + 1e-9)


def tries(d: TargetDevice, spec: RolloutSpec) -> bool:
    """True if the device goes through the shadow/split steps: it serves another version of the model to
    compare with. A device without one (or already on the version) gets the version at its first step."""
    return d.previous is not None and d.previous.get("version") != spec.version


def device_stage(r: Rollout, d: TargetDevice) -> Stage:
    """The step a device is at: the rollout's for its current wave, full for earlier waves."""
    if d.wave < r.wave or not tries(d, r.spec):
        return "full"
    return r.stage
