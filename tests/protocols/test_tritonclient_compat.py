"""The codec against tritonclient.http's own request builder and response parser (bit for bit)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.binary import RequestedOutput, decode_request, encode_response
from protocols.datatypes import DATATYPES, from_numpy, numpy_dtype

httpclient = pytest.importorskip("tritonclient.http")
build_request = httpclient.InferenceServerClient.generate_request_body
parse_response = httpclient.InferenceServerClient.parse_response_body

SAMPLES: dict[str, np.ndarray[Any, Any]] = {
    "fp32": np.array([[1.5, -0.0, np.inf], [np.nan, 3.25e-38, -1e30]], dtype=np.float32),
    "fp16": np.array([0.5, -2.0, 65504.0, 6e-8], dtype=np.float16),
    "fp64": np.array([np.pi, -1e300], dtype=np.float64),
    "int64": np.array([[-(2**63), 2**63 - 1]], dtype=np.int64),
    "uint64": np.array([0, 2**64 - 1], dtype=np.uint64),
    "int8": np.array([-128, 127], dtype=np.int8),
    "uint16": np.array([[0], [65535]], dtype=np.uint16),
    "int32": np.zeros((2, 0, 3), dtype=np.int32),
    "bool": np.array([[True, False, True]]),
    "bytes": np.array([[b"hello", "wörld".encode(), b""]], dtype=object),
}


def _infer_input(name: str, array: np.ndarray[Any, Any], *, binary: bool) -> Any:
    tensor = httpclient.InferInput(name, list(array.shape), from_numpy(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _same(expected: np.ndarray[Any, Any], actual: np.ndarray[Any, Any]) -> None:
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert actual.ravel().tolist() == expected.ravel().tolist()
    else:
        assert actual.dtype == expected.dtype
        assert actual.tobytes() == expected.tobytes()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_decode_tritonclient_request(binary: bool) -> None:
    inputs = [_infer_input(name, array, binary=binary) for name, array in SAMPLES.items()]
    outputs = [httpclient.InferRequestedOutput("y", binary_data=binary), httpclient.InferRequestedOutput("z")]
    body, json_size = build_request(inputs, outputs=outputs, request_id="r-1", priority=2, timeout=1500)
    assert (json_size is not None) == binary
    decoded = decode_request(body, json_size)
    assert decoded.id == "r-1"
    assert decoded.parameters == {"priority": 2, "timeout": 1500}
    assert list(decoded.inputs) == list(SAMPLES)
    for name, array in SAMPLES.items():
        _same(array, decoded.inputs[name])
    assert decoded.outputs == [
        RequestedOutput("y", binary=binary, parameters={"binary_data": binary}),
        RequestedOutput("z", binary=True, parameters={"binary_data": True}),
    ]


def test_tritonclient_without_outputs_asks_for_binary() -> None:
    body, json_size = build_request([_infer_input("x", SAMPLES["fp32"], binary=True)])
    decoded = decode_request(body, json_size)
    assert decoded.outputs is None and decoded.binary_output is True


@pytest.mark.parametrize("binary", [True, False, "mixed"], ids=["binary", "json", "mixed"])
def test_tritonclient_parses_our_response(binary: bool | str) -> None:
    choice: Any = (lambda name: name.startswith(("fp", "bytes"))) if binary == "mixed" else binary
    body, header_length = encode_response(model_name="m", model_version="1", id="r-1", outputs=SAMPLES, binary=choice)
    result = parse_response(body, header_length=header_length)
    assert result.get_response()["id"] == "r-1" and result.get_response()["model_name"] == "m"
    for name, array in SAMPLES.items():
        got = result.as_numpy(name)
        as_binary = choice(name) if callable(choice) else choice
        if array.dtype == object and not as_binary:
            # tritonclient keeps JSON BYTES as the strings it parsed
            assert got.ravel().tolist() == [x.decode() for x in array.ravel()]
        else:
            _same(array, got)


def test_non_utf8_bytes_output_falls_back_to_binary_for_tritonclient() -> None:
    outputs = {"y": np.array([b"\xff\x00", b"ok"], dtype=object)}
    body, header_length = encode_response(model_name="m", model_version=None, id=None, outputs=outputs, binary=False)
    assert header_length is not None
    got = parse_response(body, header_length=header_length).as_numpy("y")
    assert got.tolist() == [b"\xff\x00", b"ok"]


@st.composite
def _numeric(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    datatype = draw(st.sampled_from([d for d in DATATYPES if d != "BYTES"]))
    shape = draw(st.lists(st.integers(0, 3), max_size=3).map(tuple))
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        return draw(hnp.arrays(np.dtype(f"<u{dtype.itemsize}"), shape)).view(dtype)
    return draw(hnp.arrays(dtype, shape))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(array=_numeric())
def test_binary_round_trip_through_tritonclient(array: np.ndarray[Any, Any]) -> None:
    body, json_size = build_request([_infer_input("x", array, binary=True)])
    decoded = decode_request(body, json_size).inputs["x"]
    _same(array, decoded)
    body, header_length = encode_response(
        model_name="m", model_version=None, id=None, outputs={"x": decoded}, binary=True
    )
    _same(array, parse_response(body, header_length=header_length).as_numpy("x"))
