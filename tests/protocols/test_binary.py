"""Round trips and error cases of the V2 body codec (JSON and the binary tensor extension)."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protocols.binary import (
    HEADER_LENGTH,
    CodecError,
    DecodedRequest,
    RequestedOutput,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from protocols.common import ProtocolError
from protocols.datatypes import DATATYPES, numpy_dtype

NUMERIC = [d for d in DATATYPES if d != "BYTES"]
shapes = st.lists(st.integers(min_value=0, max_value=4), min_size=0, max_size=4).map(tuple)


@st.composite
def tensors(draw: st.DrawFn, datatype: str | None = None) -> np.ndarray[Any, Any]:
    """Any V2 tensor: every datatype, zero-size dims, NaNs and odd bit patterns included."""
    datatype = datatype or draw(st.sampled_from(DATATYPES))
    shape = draw(shapes)
    if datatype == "BYTES":
        count = int(np.prod(shape))
        items = draw(
            st.lists(
                st.one_of(st.binary(max_size=12), st.text(max_size=6).map(str.encode)), min_size=count, max_size=count
            )
        )
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = numpy_dtype(datatype)
    if dtype.kind == "f":
        # Raw bit patterns reach every NaN payload, infinities, subnormals and -0.0.
        bits = draw(hnp.arrays(np.dtype(f"<u{dtype.itemsize}"), shape))
        return bits.view(dtype)
    return draw(hnp.arrays(dtype, shape))


tensor_maps = st.dictionaries(st.text("abcdefgh_", min_size=1, max_size=6), tensors(), min_size=1, max_size=4)


def assert_same(expected: np.ndarray[Any, Any], actual: np.ndarray[Any, Any], *, exact_nan: bool) -> None:
    """Equal dtype, shape and bits; JSON cannot carry NaN payloads, so then any NaN equals any NaN."""
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    if expected.dtype == object:
        assert [type(x) for x in actual.ravel()] == [bytes] * actual.size
        assert actual.ravel().tolist() == expected.ravel().tolist()
        return
    if expected.dtype.kind == "f" and not exact_nan:
        nan = np.isnan(expected)
        assert np.array_equal(nan, np.isnan(actual))
        assert expected[~nan].tobytes() == actual[~nan].tobytes()
        return
    assert actual.tobytes() == expected.tobytes()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs=tensor_maps, binary=st.booleans(), request_id=st.none() | st.text(max_size=5))
def test_request_round_trip(inputs: dict[str, np.ndarray[Any, Any]], binary: bool, request_id: str | None) -> None:
    names = sorted(inputs)[:2]
    body, header_length = encode_request(inputs=inputs, outputs=names, id=request_id, binary=binary)
    decoded = decode_request(body, header_length)
    assert decoded.id == request_id
    assert list(decoded.inputs) == list(inputs)
    for name, array in inputs.items():
        assert_same(array, decoded.inputs[name], exact_nan=binary)
    assert decoded.outputs == [
        RequestedOutput(name=n, binary=binary, parameters={"binary_data": binary}) for n in names
    ]
    if not binary:
        # Only BYTES that are not UTF-8, or floats JSON cannot write (NaN, inf), force binary into JSON.
        forced = any(
            (a.dtype == object and _not_utf8(a)) or (a.dtype.kind == "f" and not np.isfinite(a).all())
            for a in inputs.values()
        )
        assert (header_length is not None) == forced


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outputs=tensor_maps, choice=st.sampled_from(["binary", "json", "mixed"]))
def test_response_round_trip(outputs: dict[str, np.ndarray[Any, Any]], choice: str) -> None:
    binary: Any = {"binary": True, "json": False}.get(choice, lambda name: len(name) % 2 == 0)
    body, header_length = encode_response(
        model_name="m", model_version="3", id="x", outputs=outputs, binary=binary, parameters={"k": 1}
    )
    header, arrays = decode_response(body, header_length)
    assert header["model_name"] == "m" and header["model_version"] == "3" and header["id"] == "x"
    assert header["parameters"] == {"k": 1}
    assert [o["name"] for o in header["outputs"]] == list(outputs) == list(arrays)
    assert all("data" not in o for o in header["outputs"])
    for name, array in outputs.items():
        as_binary = binary(name) if callable(binary) else binary
        assert_same(array, arrays[name], exact_nan=as_binary)


def _not_utf8(array: np.ndarray[Any, Any]) -> bool:
    try:
        for item in array.ravel():
            item.decode()
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("datatype", NUMERIC)
def test_binary_input_is_read_only_view_of_body(datatype: str) -> None:
    array = np.ones((2, 3), numpy_dtype(datatype))
    body, header_length = encode_request(inputs={"x": array})
    decoded = decode_request(body, header_length).inputs["x"]
    assert not decoded.flags.writeable
    assert decoded.dtype == numpy_dtype(datatype) and decoded.shape == (2, 3)


def test_json_request_nested_data_and_defaults() -> None:
    body = json.dumps(
        {
            "id": "7",
            "parameters": {"priority": 1, "timeout": 5000, "binary_data_output": True},
            "inputs": [
                {"name": "a", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]},
                {"name": "b", "shape": [2], "datatype": "FP32", "data": [1, 2.5]},
                {"name": "c", "shape": [3], "datatype": "BYTES", "data": ["x", "é", ""]},
                {"name": "d", "shape": [1], "datatype": "BOOL", "data": [True]},
                {"name": "e", "shape": [2], "datatype": "UINT64", "data": [0, 2**64 - 1]},
            ],
            "outputs": [{"name": "y"}, {"name": "z", "parameters": {"binary_data": False}}],
        }
    ).encode()
    decoded = decode_request(body, None)
    assert isinstance(decoded, DecodedRequest)
    assert decoded.parameters["priority"] == 1 and decoded.binary_output is True
    assert decoded.inputs["a"].tolist() == [[1, 2], [3, 4]] and decoded.inputs["a"].dtype == np.int64
    assert decoded.inputs["b"].dtype == np.float32 and decoded.inputs["b"].tolist() == [1.0, 2.5]
    assert decoded.inputs["c"].tolist() == [b"x", "é".encode(), b""]
    assert decoded.inputs["d"].tolist() == [True]
    assert decoded.inputs["e"].dtype == np.uint64 and int(decoded.inputs["e"][1]) == 2**64 - 1
    assert decoded.outputs == [
        RequestedOutput("y", binary=True, parameters={}),
        RequestedOutput("z", binary=False, parameters={"binary_data": False}),
    ]


def test_no_outputs_means_all() -> None:
    body, header_length = encode_request(inputs={"x": np.zeros(2, np.float32)}, binary=False)
    decoded = decode_request(body, header_length)
    assert decoded.outputs is None and decoded.binary_output is False and header_length is None


def test_raw_binary_request() -> None:
    array = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    decoded = decode_request(array.tobytes(), 0, raw_input=("x", "FP32", (1, 3, 4)))
    assert decoded.binary_output is True and decoded.outputs is None and decoded.id is None
    assert decoded.inputs["x"].tobytes() == array.tobytes() and decoded.inputs["x"].shape == (1, 3, 4)
    variable = decode_request(array.tobytes(), 0, raw_input=("x", "FP32", (1, -1, 4)))
    assert variable.inputs["x"].shape == (1, 3, 4)
    words = b"".join(struct.pack("<I", len(w)) + w for w in (b"ab", b"", b"\xff"))
    text = decode_request(words, 0, raw_input=("s", "BYTES", (1, -1)))
    assert text.inputs["s"].tolist() == [[b"ab", b"", b"\xff"]]


@pytest.mark.parametrize(
    ("raw_input", "body", "message"),
    [
        (None, b"\0" * 4, "exactly one input"),
        (("x", "FP32", (1, 3)), b"\0" * 8, "needs 3"),
        (("x", "FP32", (1, 3)), b"\0" * 7, "whole number"),
        (("x", "FP32", (-1, -1)), b"\0" * 8, "more than one variable"),
        (("x", "BF16", (1,)), b"\0" * 2, "unknown datatype"),
        (("x", "BYTES", (1, 2)), struct.pack("<I", 1) + b"a", "cannot hold 2"),
    ],
)
def test_raw_binary_request_errors(
    raw_input: tuple[str, str, tuple[int, ...]] | None, body: bytes, message: str
) -> None:
    with pytest.raises(CodecError, match=message):
        decode_request(body, 0, raw_input=raw_input)


def _body(header: dict[str, Any], tail: bytes = b"") -> tuple[bytes, int]:
    head = json.dumps(header).encode()
    return head + tail, len(head)


def _one(**tensor: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", **tensor}]}


FOUR_BYTES = {"parameters": {"binary_data_size": 8}}
ERROR_CASES: list[tuple[str, bytes, int | None, str]] = [
    ("short buffer", *_body(_one(**FOUR_BYTES), b"\0" * 4), "short buffer"),
    ("header length past body", b"{}", 10, "exceeds the body size"),
    ("negative header length", b"{}", -1, f"bad {HEADER_LENGTH}"),
    ("not json", b"{nope", None, "not valid JSON"),
    ("not utf-8 json", b"\xff\xfe\xfd", None, "not valid JSON"),
    ("empty body", b"", None, "not valid JSON"),
    ("json array", b"[]", None, "must be a JSON object"),
    ("missing inputs", b"{}", None, "missing field 'inputs'"),
    ("empty inputs", b'{"inputs": []}', None, "non-empty JSON array"),
    ("unknown request field, empty inputs", b'{"inputs": [], "input": 1}', None, "non-empty JSON array"),
    ("input not object", b'{"inputs": [3]}', None, r"inputs\[0\] must be a JSON object"),
    (
        "missing name",
        json.dumps({"inputs": [{"shape": [1], "datatype": "FP32"}]}).encode(),
        None,
        "missing field 'name'",
    ),
    (
        "missing shape",
        json.dumps({"inputs": [{"name": "x", "datatype": "FP32"}]}).encode(),
        None,
        "missing field 'shape'",
    ),
    (
        "missing datatype",
        json.dumps({"inputs": [{"name": "x", "shape": [1]}]}).encode(),
        None,
        "missing field 'datatype'",
    ),
    ("unknown datatype", *_body(_one(datatype="FP8", data=[1, 2])), "unknown datatype 'FP8'"),
    ("negative dim", *_body(_one(shape=[-1], data=[])), "non-negative integers"),
    ("float dim", *_body(_one(shape=[2.0], data=[1, 2])), "non-negative integers"),
    ("element count", *_body(_one(data=[1, 2, 3])), "has 3 elements, shape \\[2\\] needs 2"),
    ("ragged data", *_body(_one(shape=[3], data=[[1, 2], [3]])), "ragged"),
    ("strings as floats", *_body(_one(data=["1", "2"])), "must hold numbers"),
    ("float as int", *_body(_one(datatype="INT32", data=[1, 2.5])), "must hold integers"),
    ("int out of range", *_body(_one(datatype="UINT8", data=[1, 256])), "out of range"),
    ("negative unsigned", *_body(_one(datatype="UINT64", data=[-1, 2**64 - 1])), "out of range"),
    ("int as bool", *_body(_one(datatype="BOOL", data=[0, 1])), "true/false"),
    ("number as bytes", *_body(_one(datatype="BYTES", data=["a", 1])), "element 1 is int"),
    ("data not list", *_body(_one(data=1.0)), "must be a JSON array"),
    ("no data", *_body(_one()), "neither 'data' nor"),
    ("data and binary", *_body(_one(data=[1, 2], **FOUR_BYTES), b"\0" * 8), "both 'data' and"),
    ("size mismatch", *_body(_one(parameters={"binary_data_size": 4}), b"\0" * 4), "needs 8"),
    ("bad size type", *_body(_one(parameters={"binary_data_size": "8"}), b"\0" * 8), "non-negative integer"),
    ("trailing bytes", *_body(_one(**FOUR_BYTES), b"\0" * 9), "1 trailing bytes"),
    ("binary without header length", _body(_one(**FOUR_BYTES))[0], None, f"{HEADER_LENGTH} missing"),
    ("bool byte 2", *_body(_one(datatype="BOOL", **{"parameters": {"binary_data_size": 2}}), b"\0\2"), "0 or 1"),
    (
        "bytes truncated prefix",
        *_body(_one(datatype="BYTES", parameters={"binary_data_size": 9}), struct.pack("<I", 3) + b"abc\0\0"),
        "truncated length",
    ),
    ("bytes overrun", *_body(_one(datatype="BYTES", **FOUR_BYTES), struct.pack("<I", 9) + b"\0\0\0\0"), "runs past"),
    (
        "bytes extra",
        *_body(_one(shape=[1], datatype="BYTES", **FOUR_BYTES), struct.pack("<I", 1) + b"abcd"),
        "3 extra bytes",
    ),
    ("shared memory", *_body(_one(parameters={"shared_memory_region": "r"})), "shared memory"),
    ("duplicate input", *_body({"inputs": _one(data=[1, 2])["inputs"] * 2}), "duplicate input 'x'"),
    (
        "duplicate output",
        *_body({**_one(data=[1, 2]), "outputs": [{"name": "y"}, {"name": "y"}]}),
        "duplicate requested output",
    ),
    ("output without name", *_body({**_one(data=[1, 2]), "outputs": [{}]}), "missing field 'name'"),
    (
        "binary_data not bool",
        *_body({**_one(data=[1, 2]), "outputs": [{"name": "y", "parameters": {"binary_data": 1}}]}),
        "must be a boolean",
    ),
    ("id not string", *_body({**_one(data=[1, 2]), "id": 5}), "'id' must be a string"),
    ("parameters not object", *_body({**_one(data=[1, 2]), "parameters": []}), "'parameters' must be a JSON object"),
]


@pytest.mark.parametrize(
    ("body", "header_length", "message"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_malformed_request(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(CodecError, match=message) as caught:
        decode_request(body, header_length)
    assert isinstance(caught.value, ProtocolError)


@pytest.mark.parametrize(
    ("body", "header_length", "message"),
    [
        (b'{"model_name": "m"}', None, "'outputs' must be a JSON array"),
        (b'{"outputs": [{"name": "y", "shape": [1], "datatype": "FP32"}]}', None, "neither 'data'"),
        (b'{"outputs": []}xx', 15, "2 trailing bytes"),
        (b"{}", 0, "not valid JSON"),
        (b'{"error": "model not found"}', None, "response is an error: model not found"),
    ],
)
def test_malformed_response(body: bytes, header_length: int | None, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_response(body, header_length)


def test_response_keeps_unknown_fields_from_foreign_servers() -> None:
    body = b'{"model_name":"m","extra":1,"outputs":[{"name":"y","shape":[1],"datatype":"INT8","data":[3],"x":0}]}'
    header, arrays = decode_response(body, None)
    assert header["extra"] == 1 and header["outputs"] == [{"name": "y", "shape": [1], "datatype": "INT8", "x": 0}]
    assert arrays["y"].tolist() == [3]


def test_encode_rejects_unsupported_arrays() -> None:
    with pytest.raises(CodecError, match="no V2 datatype"):
        encode_response(
            model_name="m", model_version=None, id=None, outputs={"y": np.zeros(1, np.complex64)}, binary=True
        )
    with pytest.raises(CodecError, match="BYTES element 0 is int"):
        encode_request(inputs={"x": np.array([1], dtype=object)})


def test_encode_accepts_str_and_fixed_width_strings() -> None:
    outputs = {"u": np.array(["é", "b"]), "s": np.array([b"a", b"bc"]), "o": np.array(["x", b"y"], dtype=object)}
    body, header_length = encode_response(model_name="m", model_version=None, id=None, outputs=outputs, binary=False)
    assert header_length is None
    header, arrays = decode_response(body, header_length)
    assert "model_version" not in header and "id" not in header
    assert arrays["u"].tolist() == ["é".encode(), b"b"]
    assert arrays["s"].tolist() == [b"a", b"bc"] and arrays["o"].tolist() == [b"x", b"y"]


def test_big_endian_input_is_sent_little_endian() -> None:
    array = np.arange(4, dtype=">i4")
    body, header_length = encode_request(inputs={"x": array})
    assert body.endswith(np.arange(4, dtype="<i4").tobytes())
    assert decode_request(body, header_length).inputs["x"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(("datatype", "value"), [("FP16", 1e6), ("FP16", -7e4), ("FP32", 1e39), ("FP32", -3.5e38)])
def test_json_float_beyond_range_is_refused_without_warning(datatype: str, value: float) -> None:
    with pytest.raises(CodecError, match=f"{datatype} 'data' holds a number out of range"):
        decode_request(*_body(_one(datatype=datatype, data=[1.0, value])))
    # in range, and the non-standard literals tritonclient sends for NaN/inf, still decode
    literals = b'{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[3e38,NaN,-Infinity]}]}'
    decoded = decode_request(literals, None)
    assert decoded.inputs["x"][0] == np.float32(3e38) and np.isnan(decoded.inputs["x"][1])


def test_non_finite_floats_never_reach_json() -> None:
    outputs = {"y": np.array([1.0, np.nan, np.inf], np.float32), "z": np.array([0.5], np.float64)}
    body, length = encode_response(model_name="m", model_version=None, id=None, outputs=outputs, binary=False)
    assert length is not None  # y went binary; z stayed JSON
    header = json.loads(body[:length])  # strict JSON: no NaN/Infinity tokens
    assert b"NaN" not in body[:length] and b"Infinity" not in body[:length]
    assert header["outputs"][1]["data"] == [0.5] and header["outputs"][0]["parameters"]["binary_data_size"] == 12
    _, arrays = decode_response(body, length)
    assert arrays["y"].tobytes() == outputs["y"].tobytes()
