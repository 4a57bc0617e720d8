"""A pipeline: a named model served with a priority class, a deadline and an offload policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from protocols.common import Name, Version, WireModel

PriorityClass = Literal["safety", "standard", "best_effort"]
OffloadPolicy = Literal["never", "overflow"]
ShadowCompare = Literal["auto", "top1", "max_abs_diff"]
# Strict order used by the scheduler: lower runs first.
PRIORITY_RANK: dict[str, int] = {"safety": 0, "standard": 1, "best_effort": 2}


class PipelineSpec(WireModel):
    """How a V2 model name is served on a device: model, priority, deadline, offload."""

    name: Name = Field(description="The V2 model name local apps call.")
    model: Name = Field(description="Name of the model (package) that runs it.")
    version: Version | None = Field(default=None, description="Pinned model version; None = the active one.")
    priority: PriorityClass = Field(default="standard", description="Priority class across all models.")
    deadline_ms: PositiveInt = Field(default=1000, description="End-to-end deadline of a request.")
    offload: OffloadPolicy | None = Field(
        default=None,
        description="May overflow go to a cloud pool. Default: never for safety, overflow otherwise.",
    )
    candidate_version: Version | None = Field(
        default=None,
        description="A second version of the same model that serves `candidate_share` of the requests.",
    )
    candidate_share: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of requests (0..1) the candidate version answers."
    )
    shadow_version: Version | None = Field(
        default=None, description="A version that sees `shadow_share` of the inputs; its outputs are never returned."
    )
    shadow_share: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of requests (0..1) shadowed.")
    shadow_tolerance: float = Field(
        default=1e-3, ge=0.0, description="Max abs difference of outputs that still counts as agreeing."
    )
    shadow_compare: ShadowCompare = Field(
        default="auto",
        description="How shadow outputs are compared: top-1 class, max abs diff, or auto (top-1 for classifiers).",
    )
    allow_safety_split: bool = Field(
        default=False, description="The operator allows a version split or a shadow on this safety pipeline."
    )

    @model_validator(mode="after")
    def _safety_stays_local(self) -> PipelineSpec:
        if self.priority == "safety" and self.offload == "overflow":
            raise ValueError(f"pipeline {self.name!r}: safety pipelines never leave the device")
        return self

    @model_validator(mode="after")
    def _split_is_explicit(self) -> PipelineSpec:
        if self.candidate_share > 0 and self.candidate_version is None:
            raise ValueError(f"pipeline {self.name!r}: candidate_share needs a candidate_version")
        if self.candidate_version is not None and self.candidate_version == self.version:
            raise ValueError(f"pipeline {self.name!r}: candidate_version is the pinned version")
        if self.splits and self.priority == "safety" and not self.allow_safety_split:
            raise ValueError(
                f"pipeline {self.name!r}: a safety pipeline splits its traffic only with allow_safety_split = true"
            )
        if self.shadow_share > 0 and self.shadow_version is None:
            raise ValueError(f"pipeline {self.name!r}: shadow_share needs a shadow_version")
        if self.shadows and self.priority == "safety" and not self.allow_safety_split:
            raise ValueError(f"pipeline {self.name!r}: a safety pipeline shadows only with allow_safety_split = true")
        return self

    @property
    def shadows(self) -> bool:
        """True when a shadow version sees a share of the inputs."""
        return self.shadow_version is not None and self.shadow_share > 0

    @property
    def splits(self) -> bool:
        """True when a candidate version answers a share of the requests."""
        return self.candidate_version is not None and self.candidate_share > 0

    @property
    def effective_offload(self) -> OffloadPolicy:
        """The offload policy with the class default applied."""
        if self.offload is not None:
            return self.offload
        return "never" if self.priority == "safety" else "overflow"
