"""Rollout trials on the device (issue 16): a candidate version next to the serving one, applied to the
pipelines of its model as a shadow (`shadow_version`/`shadow_share`) or a split (`candidate_version`/
`candidate_share`). The hub's DesiredState.trials says which; removing a trial removes the candidate.

The overlay is pure: the reconciler loads the candidates, then serves the overlaid pipelines.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from protocols.messages import DesiredTrial
from protocols.pipeline import PipelineSpec

__all__ = ["FAILURE_PREFIX", "overlay", "referenced_versions"]

# A trial's failure is recorded (state.record_failure) under this prefix + the model name.
FAILURE_PREFIX = "trial:"


def _fields(spec: PipelineSpec, t: DesiredTrial) -> dict[str, Any]:
    version = t.candidate.version
    changes: dict[str, Any] = {"allow_safety_split": spec.allow_safety_split or t.allow_safety}
    if t.mode == "shadow":
        changes.update(
            shadow_version=version, shadow_share=t.share, shadow_compare=t.compare, shadow_tolerance=t.tolerance
        )
    else:
        changes.update(candidate_version=version, candidate_share=t.share)
    return changes


def overlay(
    specs: Sequence[PipelineSpec], trials: Sequence[DesiredTrial], ready: Collection[str]
) -> tuple[list[PipelineSpec], list[str]]:
    """`specs` with each trial whose model is in `ready` applied to the pipelines of that model, and the
    problems of those left as they were (a safety pipeline without allow_safety, an invalid combination)."""
    by_model = {t.candidate.name: t for t in trials if t.candidate.name in ready}
    out: list[PipelineSpec] = []
    problems: list[str] = []
    for spec in specs:
        t = by_model.get(spec.model)
        if t is None or spec.version == t.candidate.version:
            out.append(spec)
            continue
        if spec.priority == "safety" and not (t.allow_safety or spec.allow_safety_split):
            problems.append(
                f"pipeline {spec.name!r}: safety pipeline, {t.mode} of {spec.model} {t.candidate.version} not "
                "applied (needs allow_safety_split)"
            )
            out.append(spec)
            continue
        try:
            out.append(PipelineSpec.model_validate({**spec.model_dump(), **_fields(spec, t)}))
        except ValidationError as exc:
            problems.append(f"pipeline {spec.name!r}: {t.mode} of {t.candidate.version} not applied: {exc}")
            out.append(spec)
    return out, problems


def referenced_versions(pipelines: Mapping[str, PipelineSpec], model: str) -> set[str]:
    """Versions of `model` that served pipelines name (pinned, candidate or shadow)."""
    found: set[str] = set()
    for p in pipelines.values():
        if p.model == model:
            found.update(v for v in (p.version, p.candidate_version, p.shadow_version) if v is not None)
    return found
