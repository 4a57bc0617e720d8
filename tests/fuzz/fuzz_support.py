"""Hypothesis strategies for V2 bodies and MQTT messages: structured enough to get past the JSON layer."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from protocols.datatypes import DATATYPES

_HUGE = [0, 1, 2, 3, 64, 2**31, 2**32, 2**40, 2**62, 2**63, 2**64, -1]
dims = st.one_of(
    st.integers(0, 8), st.sampled_from(_HUGE), st.just(True), st.floats(allow_nan=True), st.text(max_size=2)
)
shapes = st.one_of(
    st.lists(dims, max_size=6), st.lists(st.just(1), min_size=60, max_size=70), st.none(), st.text(max_size=3)
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=8)
)
json_data = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=16)
datatypes = st.one_of(st.sampled_from(sorted(DATATYPES)), st.text(max_size=6), st.integers())


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    """A tensor description, often plausible, sometimes broken in one field."""
    tensor: dict[str, Any] = {
        "name": draw(st.one_of(st.just("input"), st.text(max_size=4), st.integers())),
        "shape": draw(shapes),
        "datatype": draw(datatypes),
    }
    choice = draw(st.integers(0, 3))
    if choice == 0:
        tensor["data"] = draw(json_data)
    elif choice == 1:
        tensor["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(-2, 300), st.sampled_from(_HUGE)))}
    elif choice == 2:
        tensor["parameters"] = draw(st.dictionaries(st.text(max_size=20), json_scalars, max_size=3))
        tensor["data"] = draw(json_data)
    if draw(st.booleans()) and choice != 3:
        tensor.pop(draw(st.sampled_from(sorted(tensor))))
    return tensor


@st.composite
def v2_bodies(draw: st.DrawFn, key: str = "inputs") -> tuple[bytes, int | None]:
    """(body, Inference-Header-Content-Length): a JSON header, maybe binary data after it."""
    header: dict[str, Any] = {key: draw(st.lists(tensors(), max_size=3))}
    if draw(st.booleans()):
        header["parameters"] = draw(
            st.dictionaries(
                st.sampled_from(["binary_data_output", "priority", "timeout", "x"]), json_scalars, max_size=2
            )
        )
    if draw(st.booleans()):
        header["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.text(max_size=3)},
                    optional={"parameters": st.dictionaries(st.just("binary_data"), json_scalars)},
                ),
                max_size=2,
            )
        )
    if draw(st.booleans()):
        header["id"] = draw(json_scalars)
    head = json.dumps(header).encode()
    tail = draw(st.binary(max_size=300))
    mode = draw(st.integers(0, 3))
    length = [None, len(head), max(0, len(head) + draw(st.integers(-3, 3))), 0][mode]
    return (head + tail if mode else head), length
