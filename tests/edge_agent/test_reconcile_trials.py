"""Issue 16: the agent's overlay of a desired trial (a rollout's shadow or split step) on its pipelines."""

from __future__ import annotations

from edge_agent.reconcile.trials import overlay, referenced_versions
from protocols.messages import DesiredModel, DesiredTrial
from protocols.pipeline import PipelineSpec
from protocols.signature import ManifestSignature


def _model(version: str) -> DesiredModel:
    sig = ManifestSignature(key_id="0" * 16, signature="A" * 86 + "==")
    return DesiredModel(name="m", version=version, sha256="b" * 64, size=1, url="https://hub/x.tar", signature=sig)


def test_overlay_applies_a_trial_to_the_models_pipelines_only() -> None:
    specs = [
        PipelineSpec(name="a", model="m"),
        PipelineSpec(name="b", model="other"),
        PipelineSpec(name="s", model="m", priority="safety"),
        PipelineSpec(name="s2", model="m", priority="safety", allow_safety_split=True),
    ]
    shadow = DesiredTrial(mode="shadow", share=0.1, candidate=_model("2"), compare="top1")
    out, problems = overlay(specs, [shadow], {"m"})
    by = {p.name: p for p in out}
    assert (by["a"].shadow_version, by["a"].shadow_share, by["a"].shadow_compare) == ("2", 0.1, "top1")
    assert by["b"] == specs[1] and by["s"] == specs[2] and by["s2"].shadow_version == "2"
    assert len(problems) == 1 and "pipeline 's'" in problems[0]
    split = DesiredTrial(mode="split", share=0.05, candidate=_model("2"), allow_safety=True)
    out, problems = overlay(specs, [split], {"m"})
    assert not problems and all(p.candidate_version == "2" for p in out if p.model == "m")
    assert referenced_versions({p.name: p for p in out}, "m") == {"2"}
    assert overlay(specs, [split], set()) == (specs, [])  # a trial not ready yet changes nothing
