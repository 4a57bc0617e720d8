"""Building the served pipelines (V2 names) from specs and the loaded models."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from edge_agent.errors import NotFound
from edge_agent.serving.registry import ModelRegistry
from protocols.pipeline import PipelineSpec

__all__ = ["build_pipelines", "without_cell_safety"]


def build_pipelines(
    registry: ModelRegistry,
    specs: Sequence[PipelineSpec],
    exposed: Sequence[PipelineSpec],
    problems: list[str] | None,
) -> dict[str, PipelineSpec]:
    """`exposed` (models under their own names) then `specs`. A spec naming a missing model or version raises
    NotFound, or, when `problems` is given, is skipped and described there."""
    pipelines = {spec.name: spec for spec in exposed}
    for spec in specs:
        versions = registry.versions(spec.model)
        problem = None
        if not registry.installed(spec.model):
            problem = f"pipeline {spec.name!r}: model {spec.model!r} is not installed"
        elif spec.version is not None and spec.version not in versions:
            problem = f"pipeline {spec.name!r}: model {spec.model!r} has no version {spec.version!r}"
        elif spec.shadow_version is not None and spec.shadow_version not in versions:
            problem = f"pipeline {spec.name!r}: model {spec.model!r} has no shadow version {spec.shadow_version!r}"
        elif spec.candidate_version is not None and spec.candidate_version not in versions:
            problem = (
                f"pipeline {spec.name!r}: model {spec.model!r} has no candidate version {spec.candidate_version!r}"
            )
        if problem is not None:
            if problems is None:
                raise NotFound(problem)
            problems.append(problem)
            continue
        pipelines[spec.name] = spec
    return pipelines


def without_cell_safety(
    specs: Sequence[PipelineSpec], cell_names: Collection[str], problems: list[str]
) -> list[PipelineSpec]:
    """The main process of a safety cell never serves a safety pipeline: the cell serves the config's (named
    `cell_names`); a safety pipeline only the hub's desired state names is refused, described in `problems`."""
    problems += [
        f"pipeline {s.name!r}: safety pipelines run in the safety cell from the agent's config; not applied"
        for s in specs
        if s.priority == "safety" and s.name not in cell_names
    ]
    return [s for s in specs if s.priority != "safety"]
