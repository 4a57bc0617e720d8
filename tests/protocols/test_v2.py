"""The V2 pydantic models: validation rules, and agreement with what the codec puts on the wire."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from protocols.binary import encode_request, encode_response
from protocols.v2 import (
    V2_MODELS,
    ErrorResponse,
    InferInputTensor,
    InferRequest,
    InferResponse,
    MetadataTensor,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
)


def test_every_field_is_described() -> None:
    for model in V2_MODELS:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_models_are_frozen_and_reject_unknown_fields() -> None:
    error = ErrorResponse(error="boom")
    with pytest.raises(ValidationError):
        error.error = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs"):
        ErrorResponse.model_validate({"error": "x", "detail": "y"})


def test_request_from_json_with_nested_data_and_binary_inputs() -> None:
    request = InferRequest.model_validate_json(
        json.dumps(
            {
                "id": "1",
                "parameters": {"priority": 1, "binary_data_output": True},
                "inputs": [
                    {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
                    {"name": "b", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}},
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        )
    )
    assert request.parameters == {"priority": 1, "binary_data_output": True}
    assert request.inputs[0].data == [[1, 2], [3, 4.5]]
    assert request.outputs == (RequestedOutput(name="y", parameters={"binary_data": True}),)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"inputs": []}, "at least 1"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP8"}]}, "datatype"),
        ({"inputs": [{"name": "a", "shape": [-1], "datatype": "FP32"}]}, "greater than or equal to 0"),
        ({"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]}] * 2}, "duplicate input"),
        (
            {"inputs": [{"name": "a", "shape": [1], "datatype": "FP32"}], "outputs": [{"name": "y"}] * 2},
            "duplicate requested output",
        ),
    ],
)
def test_invalid_requests(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        InferRequest.model_validate(body)


def test_metadata_allows_variable_dimensions() -> None:
    meta = ModelMetadata(
        name="resnet",
        versions=("1", "2"),
        platform="onnxruntime_onnx",
        inputs=(MetadataTensor(name="x", datatype="FP32", shape=(-1, 3, 224, 224)),),
        outputs=(MetadataTensor(name="y", datatype="FP32", shape=(-1, 1000)),),
    )
    assert json.loads(meta.model_dump_json())["inputs"][0]["shape"] == [-1, 3, 224, 224]
    with pytest.raises(ValidationError):
        MetadataTensor(name="x", datatype="FP32", shape=(-2,))
    server = ServerMetadata(name="edgefleet", version="0.1.0", extensions=("binary_tensor_data",))
    assert server.model_dump() == {"name": "edgefleet", "version": "0.1.0", "extensions": ("binary_tensor_data",)}


def test_codec_json_bodies_validate_against_the_models() -> None:
    arrays = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.array([b"x"], dtype=object)}
    body, header_length = encode_request(inputs=arrays, outputs=["y"], id="q", binary=False)
    assert header_length is None
    request = InferRequest.model_validate_json(body)
    assert request.inputs[0] == InferInputTensor(name="a", shape=(2, 3), datatype="INT16", data=[0, 1, 2, 3, 4, 5])
    body, header_length = encode_response(model_name="m", model_version="1", id="q", outputs=arrays, binary=True)
    assert header_length is not None
    response = InferResponse.model_validate_json(body[:header_length])
    assert [o.parameters for o in response.outputs] == [{"binary_data_size": 12}, {"binary_data_size": 5}]
