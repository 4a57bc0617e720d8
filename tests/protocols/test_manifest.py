"""The model manifest's own invariants (package verification is tested in tests/models)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from protocols.manifest import Manifest


def manifest_dict(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "tiny-mlp",
        "version": "1",
        "format": "onnx",
        "model_file": "model.onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}],
        "max_batch_size": 8,
        "files": [{"path": "model.onnx", "sha256": "0" * 64, "size": 3}],
    }
    base.update(over)
    return base


def test_valid_manifest_and_canonical_bytes_are_stable() -> None:
    a = Manifest.model_validate(manifest_dict())
    b = Manifest.model_validate_json(a.model_dump_json(indent=4))
    assert a.canonical_bytes() == b.canonical_bytes()
    assert b" " not in a.canonical_bytes().replace(b"a b", b"")  # no whitespace between tokens


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"model_file": "other.onnx"}, "not listed in files"),
        ({"files": [{"path": "../model.onnx", "sha256": "0" * 64, "size": 1}]}, "unsafe"),
        ({"files": [{"path": "/abs", "sha256": "0" * 64, "size": 1}]}, "unsafe"),
        ({"files": [{"path": "manifest.json", "sha256": "0" * 64, "size": 1}]}, "reserved"),
        ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 64]}]}, "batch axis"),
        ({"inputs": [{"name": "input", "datatype": "FP31", "shape": [-1, 64]}]}, "datatype"),
        ({"outputs": [{"name": "input", "datatype": "FP32", "shape": [-1]}]}, "duplicate tensor"),
        ({"max_batch_size": -1}, "max_batch_size"),
        ({"extra": 1}, "extra"),
    ],
)
def test_invalid_manifests_say_why(override: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Manifest.model_validate(manifest_dict(**override))


def test_unbatched_model_may_have_fixed_shapes() -> None:
    m = Manifest.model_validate(
        manifest_dict(max_batch_size=0, inputs=[{"name": "input", "datatype": "FP32", "shape": [1, 64]}])
    )
    assert m.inputs[0].shape == (1, 64)
