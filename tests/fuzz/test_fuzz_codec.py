"""Hypothesis on the binary tensor codec: only CodecError escapes, and memory stays bounded by the body."""

from __future__ import annotations

import contextlib
import json

import pytest
from fuzz_support import v2_bodies
from fuzz_targets import RAW_INPUTS, bounded_memory, codec_request, codec_response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.binary import CodecError, decode_request, decode_response

# Bounded for `make test` (a few seconds); tests/fuzz/fuzz_codec.py runs the same targets for as long as wanted.
FUZZ = settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
STRUCTURED = settings(FUZZ, max_examples=400)
TRIED: dict[str, int] = {}


def _count(name: str) -> None:
    TRIED[name] = TRIED.get(name, 0) + 1


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    _count("codec bytes")
    codec_request(data)
    codec_response(data)


@STRUCTURED
@given(v2_bodies(), st.sampled_from(RAW_INPUTS))
def test_structured_requests(body: tuple[bytes, int | None], raw: tuple[str, str, tuple[int, ...]] | None) -> None:
    _count("codec requests")
    data, length = body
    with contextlib.suppress(CodecError):
        decode_request(data, length, raw_input=raw)


@STRUCTURED
@given(v2_bodies(key="outputs"))
def test_structured_responses(body: tuple[bytes, int | None]) -> None:
    _count("codec responses")
    data, length = body
    with contextlib.suppress(CodecError):
        decode_response(data, None if length == 0 else length)


def _body(shape: object, datatype: str, *, size: int | None = None, data: object = None, tail: bytes = b"") -> bytes:
    tensor: dict[str, object] = {"name": "x", "shape": shape, "datatype": datatype}
    if size is not None:
        tensor["parameters"] = {"binary_data_size": size}
    if data is not None:
        tensor["data"] = data
    return json.dumps({"inputs": [tensor]}).encode() + tail


@pytest.mark.parametrize(
    ("shape", "datatype", "size", "data", "tail"),
    [
        ([1 << 40], "FP32", 4, None, b"\0" * 4),
        ([1 << 30, 1 << 30], "FP64", 8, None, b"\0" * 8),
        ([1 << 40], "BYTES", 8, None, b"\0" * 8),
        ([1 << 40], "BYTES", 8, None, b"\xff\xff\xff\x7f" * 2),
        ([1 << 40], "FP32", None, [], b""),
        ([1 << 40], "BYTES", None, ["a"], b""),
        ([0, 1 << 62, 1 << 62], "FP32", 0, None, b""),
        ([0, 1 << 63], "FP32", None, [], b""),
        ([0, 1 << 64], "INT8", 0, None, b""),
        ([1] * 65, "FP32", 4, None, b"\0" * 4),
        ([0] * 65, "BYTES", None, [], b""),
        ([1] * 33, "INT8", None, [1], b""),
        ([1 << 20] * 4, "UINT8", 1 << 16, None, b"\0" * (1 << 16)),
    ],
)
def test_tiny_bodies_claiming_huge_tensors_allocate_nothing_big(
    shape: list[int], datatype: str, size: int | None, data: object, tail: bytes
) -> None:
    body = _body(shape, datatype, size=size, data=data, tail=tail)
    header_length = len(body) - len(tail) if size is not None else None
    with pytest.raises(CodecError):
        decode_request(body, header_length)
    bounded_memory(decode_request, body, header_length)
    response = body.replace(b'"inputs"', b'"outputs"', 1)
    bounded_memory(decode_response, response, header_length)


def test_raw_binary_request_with_a_huge_model_shape_allocates_nothing_big() -> None:
    for raw in RAW_INPUTS[1:]:
        for body in (b"", b"\0" * 7, b"\x01\0\0\0a" * 3, b"\xff" * 64):
            bounded_memory(decode_request, body, 0, raw_input=raw)


def test_report_inputs_tried() -> None:
    """Runs last in this module: the counts the closing note quotes (pytest -s shows them)."""
    print("codec fuzz inputs:", TRIED)
