"""Streaming input/output statistics per pipeline and version, for drift monitoring at the hub.

Cheap on the request path: per numeric tensor, the element count, sum and sum of squares (float64; one
pass each, no copy for contiguous arrays), and for a classifier's first output ([rows, k], 2 <= k <= 1024)
the top-1 class counts. The hub turns them into PSI scores against a reference (cloud_hub/fleet/drift.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protocols.messages import TensorProfile, VersionProfile

__all__ = ["Sums", "VersionSums", "class_counts", "tensor_sums"]

MAX_CLASSES = 1024
Sums = dict[str, tuple[int, float, float]]  # tensor -> (elements, sum, sum of squares)


def tensor_sums(tensors: Mapping[str, np.ndarray[Any, Any]]) -> Sums:
    """(elements, sum, sum of squares) of every numeric tensor (BYTES and others are skipped)."""
    sums: Sums = {}
    for name, array in tensors.items():
        if array.dtype.kind not in "fiub" or array.size == 0:
            continue
        flat = array.reshape(-1).astype(np.float64, copy=False)
        sums[name] = (int(flat.size), float(flat.sum()), float(np.dot(flat, flat)))
    return sums


def class_counts(outputs: Mapping[str, np.ndarray[Any, Any]]) -> np.ndarray[Any, Any] | None:
    """Top-1 class counts of the first output when it looks like class scores ([rows, k] floats)."""
    first = next(iter(outputs.values()), None)
    if first is None or first.ndim != 2 or first.dtype.kind != "f" or not 2 <= first.shape[1] <= MAX_CLASSES:
        return None
    counts: np.ndarray[Any, Any] = np.bincount(np.argmax(first, axis=1), minlength=first.shape[1])
    return counts


def _profiles(sums: Sums) -> tuple[TensorProfile, ...]:
    out = []
    for name, (n, total, squares) in sorted(sums.items()):
        mean = total / n
        std = max(0.0, squares / n - mean * mean) ** 0.5
        out.append(TensorProfile(name=name, values=n, mean=mean, std=std))
    return tuple(out)


def _merge(into: Sums, sums: Sums) -> None:
    for name, (n, total, squares) in sums.items():
        n0, t0, s0 = into.get(name, (0, 0.0, 0.0))
        into[name] = (n0 + n, t0 + total, s0 + squares)


@dataclass
class VersionSums:
    """One version's accumulated statistics over an interval (merged under the stats lock)."""

    requests: int = 0
    inputs: Sums = field(default_factory=dict)
    outputs: Sums = field(default_factory=dict)
    classes: list[int] = field(default_factory=list)

    def add(self, inputs: Sums, outputs: Sums, classes: np.ndarray[Any, Any] | None) -> None:
        """Merge one request's figures."""
        self.requests += 1
        _merge(self.inputs, inputs)
        _merge(self.outputs, outputs)
        if classes is not None:
            if len(self.classes) < len(classes):
                self.classes.extend([0] * (len(classes) - len(self.classes)))
            for index, count in enumerate(classes.tolist()):
                self.classes[index] += int(count)

    def profile(self, version: str) -> VersionProfile:
        """The wire form."""
        return VersionProfile(
            version=version,
            requests=self.requests,
            inputs=_profiles(self.inputs),
            outputs=_profiles(self.outputs),
            classes=tuple(self.classes),
        )
