"""Per-pipeline version split: which version (stable or candidate) answers one request.

Deterministic: a request with a V2 `id` goes where a hash of (pipeline, id) sends it, so a retried request
lands on the same version; a request without one takes the next point of a per-pipeline golden-ratio
(Weyl) sequence, a low-discrepancy rule: after n requests the candidate has answered n * share within
O(log n) requests, at any rate and from the first request on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from edge_agent.serving.registry import LoadedModel
from protocols.pipeline import PipelineSpec

__all__ = ["VersionSplit", "id_point"]

_GOLDEN = 0.6180339887498949  # 1 / phi: the Weyl sequence frac(n / phi) has the lowest discrepancy
_SCALE = float(1 << 64)


def id_point(pipeline: str, request_id: str) -> float:
    """A uniform point in [0, 1) fixed by the pipeline name and the request id."""
    digest = hashlib.blake2b(f"{pipeline}\x00{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


class VersionSplit:
    """Per-pipeline counters of the split; `choose` is the one decision."""

    def __init__(self) -> None:
        self._counters: dict[str, int] = {}

    def choose(
        self, spec: PipelineSpec, request_id: str | None, stable: str | None, loaded: Mapping[str, LoadedModel]
    ) -> str | None:
        """The version that answers: the candidate for `candidate_share` of the requests, else `stable`.

        A candidate that is not loaded and ready (`loaded`: the model's versions) never answers: the stable
        one does, so a rollout that removes the candidate first strands nothing.
        """
        candidate = spec.candidate_version
        model = loaded.get(candidate) if candidate is not None else None
        if not spec.splits or candidate is None or model is None or not model.ready:
            return stable
        if request_id:
            point = id_point(spec.name, request_id)
        else:
            n = self._counters.get(spec.name, 0) + 1
            self._counters[spec.name] = n
            point = (n * _GOLDEN) % 1.0
        return candidate if point < spec.candidate_share else stable

    def forget(self, name: str) -> None:
        """Drop a pipeline's counter (it is no longer served)."""
        self._counters.pop(name, None)
