"""Loading the packages at start, one at a time: a model that fails to load or warm up is recorded, not fatal."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from edge_agent.errors import NotFound, Unavailable
from models.package import ModelPackage
from protocols.datatypes import numpy_dtype
from protocols.manifest import TensorSpec

__all__ = ["load_each", "zeros"]

logger = logging.getLogger(__name__)


async def load_each(
    packages: Sequence[ModelPackage],
    load: Callable[[ModelPackage], Awaitable[Any]],
    discard: Callable[[str, str], Awaitable[None]],
) -> dict[tuple[str, str], str]:
    """Load every package; returns `{(name, version): why}` of those that failed (each discarded again).

    One broken package (a bad graph, a type onnxruntime cannot run, a warm-up error) must not keep the
    device's other models from serving: it is reported not ready (V2 ready, /metrics) while the rest serve.
    """
    failed: dict[tuple[str, str], str] = {}
    for pkg in packages:
        name, version = pkg.manifest.name, pkg.manifest.version
        try:
            await load(pkg)
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            logger.error("model %s:%s failed to load or warm up, not serving it: %s", name, version, reason)
            failed[(name, version)] = reason
            with contextlib.suppress(NotFound, Unavailable):
                await discard(name, version)  # its queue and runtime, if it got that far
    return failed


def zeros(spec: TensorSpec, rows: int | None) -> np.ndarray[Any, Any]:
    """A zero-filled (warm-up) input; `rows` sets the batch axis (None: no batch axis), other -1 dims become 1."""
    shape = [rows if i == 0 and rows is not None else (1 if d == -1 else d) for i, d in enumerate(spec.shape)]
    if spec.datatype == "BYTES":
        return np.full(shape, b"0", dtype=object)  # "0": also valid where strings are parsed as numbers
    return np.zeros(shape, dtype=numpy_dtype(spec.datatype))
