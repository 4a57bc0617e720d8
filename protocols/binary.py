"""Codec for V2 inference bodies: JSON tensors and Triton's binary tensor data extension.

A body is a JSON header, optionally followed by raw tensor bytes (little-endian, row-major, no padding;
BYTES elements as a 4-byte little-endian length then the bytes) in the order the tensors appear in the
header; `Inference-Header-Content-Length` gives the header's length. Decoding goes straight from bytes to
numpy (no pydantic objects per request) and checks every size before it allocates. Binary tensors are
read-only views of the body. BYTES tensors are object arrays of `bytes`; in JSON they are strings, and a
BYTES tensor that is not valid UTF-8, or a float tensor holding NaN or infinity (JSON has neither), is sent
as binary even where JSON was asked for, which `tritonclient` reads either way. A finite JSON number beyond
the range of its datatype (FP16, FP32 or an integer type) is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from protocols.binary_encode import encode_request, encode_response
from protocols.codec_common import _DTYPES, _U32, HEADER_LENGTH, CodecError

__all__ = [
    "HEADER_LENGTH",
    "CodecError",
    "DecodedRequest",
    "RequestedOutput",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

_INT_RANGE: Final[dict[str, tuple[int, int]]] = {
    d: (int(np.iinfo(t).min), int(np.iinfo(t).max)) for d, t in _DTYPES.items() if t.kind in "iu"
}
_TENSOR_KEYS: Final = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS: Final = frozenset({"name", "parameters"})
# numpy 1.x arrays have at most 32 dimensions (2.x: 64) and dimensions fit an int64: beyond either, numpy
# raises ValueError, which must be a 400 for the client, not a 500.
_MAX_DIMS: Final = 32
_MAX_DIM: Final = (1 << 63) - 1
# numpy also refuses an empty shape whose non-zero dimensions multiply past int64 (x itemsize); no tensor
# a body can carry comes near this.
_MAX_ELEMENTS: Final = 1 << 58


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for and whether it wants it as binary data."""

    name: str
    binary: bool
    parameters: dict[str, Any]


@dataclass(slots=True)
class DecodedRequest:
    """An inference request decoded to numpy; `outputs` None means every output."""

    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray[Any, Any]]
    outputs: list[RequestedOutput] | None
    binary_output: bool


# --------------------------------------------------------------------------- decoding


def decode_request(
    body: bytes, header_length: int | None, *, raw_input: tuple[str, str, tuple[int, ...]] | None = None
) -> DecodedRequest:
    """Decode an infer request body; `header_length` is Inference-Header-Content-Length or None."""
    if header_length == 0:
        return _decode_raw(body, raw_input)
    # Unknown top-level fields are ignored, as Triton does and the OIP schema allows: KServe's SDK sends
    # `model_name`. Tensor and output objects stay strict (a misspelt field there changes the meaning).
    header, pos = _header(body, header_length, "request")
    request_id = header.get("id")
    if request_id is not None and type(request_id) is not str:
        raise CodecError("request 'id' must be a string")
    parameters = _parameters(header.get("parameters"), "request")
    binary_output = parameters.get("binary_data_output", False)
    if type(binary_output) is not bool:
        raise CodecError("request parameter 'binary_data_output' must be a boolean")
    items = header.get("inputs")
    if items is None:
        raise CodecError("request is missing field 'inputs'")
    if type(items) is not list or not items:
        raise CodecError("request 'inputs' must be a non-empty JSON array")
    end = len(body)
    inputs: dict[str, np.ndarray[Any, Any]] = {}
    for i, item in enumerate(items):
        name, array, pos = _tensor(item, f"inputs[{i}]", "input", body, pos, strict=True)
        if name in inputs:
            raise CodecError(f"duplicate input {name!r}")
        inputs[name] = array
    _check_consumed(pos, end)
    return DecodedRequest(
        id=request_id,
        parameters=parameters,
        inputs=inputs,
        outputs=_requested_outputs(header.get("outputs"), binary_output),
        binary_output=binary_output,
    )


def decode_response(body: bytes, header_length: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """Decode an infer response body into (JSON header without output data, arrays by output name)."""
    header, pos = _header(body, header_length, "response")
    items = header.get("outputs")
    if type(items) is not list:
        if "error" in header:
            raise CodecError(f"response is an error: {header['error']}")
        raise CodecError("response 'outputs' must be a JSON array")
    end = len(body)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    described: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        name, array, pos = _tensor(item, f"outputs[{i}]", "output", body, pos, strict=False)
        if name in arrays:
            raise CodecError(f"duplicate output {name!r}")
        arrays[name] = array
        described.append({k: v for k, v in item.items() if k != "data"})
    _check_consumed(pos, end)
    return {**header, "outputs": described}, arrays


def _header(body: bytes, header_length: int | None, what: str) -> tuple[dict[str, Any], int]:
    if header_length is None:
        head, pos = body, len(body)
    else:
        if type(header_length) is not int or header_length < 0:
            raise CodecError(f"bad {HEADER_LENGTH} {header_length!r}: must be a non-negative integer")
        if header_length > len(body):
            raise CodecError(f"{HEADER_LENGTH} {header_length} exceeds the body size ({len(body)} bytes)")
        head, pos = body[:header_length], header_length
    try:
        obj = json.loads(head)
    except (ValueError, RecursionError) as exc:
        raise CodecError(f"{what} JSON header is not valid JSON: {exc}") from exc
    if type(obj) is not dict:
        raise CodecError(f"{what} JSON header must be a JSON object")
    return obj, pos


def _check_consumed(pos: int, end: int) -> None:
    if pos != end:
        raise CodecError(f"{end - pos} trailing bytes after the binary tensor data")


def _parameters(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise CodecError(f"{where} 'parameters' must be a JSON object")
    return value


def _requested_outputs(value: object, default_binary: bool) -> list[RequestedOutput] | None:
    if value is None:
        return None
    if type(value) is not list:
        raise CodecError("request 'outputs' must be a JSON array")
    result: list[RequestedOutput] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        if type(item) is not dict:
            raise CodecError(f"outputs[{i}] must be a JSON object")
        extra = item.keys() - _OUTPUT_KEYS
        if extra:
            raise CodecError(f"outputs[{i}] has unknown field(s) {sorted(extra)}")
        name = item.get("name")
        if type(name) is not str or not name:
            raise CodecError(f"outputs[{i}] is missing field 'name' (a non-empty string)")
        if name in seen:
            raise CodecError(f"duplicate requested output {name!r}")
        seen.add(name)
        parameters = _parameters(item.get("parameters"), f"output {name!r}")
        binary = parameters.get("binary_data", default_binary)
        if type(binary) is not bool:
            raise CodecError(f"output {name!r}: parameter 'binary_data' must be a boolean")
        result.append(RequestedOutput(name=name, binary=binary, parameters=parameters))
    return result


# What decoding needs to know of one tensor: (datatype, numpy dtype, shape, name for messages).
_Spec = tuple[str, np.dtype[Any], tuple[int, ...], str]


def _tensor(
    item: object, where: str, kind: str, body: bytes, pos: int, *, strict: bool
) -> tuple[str, np.ndarray[Any, Any], int]:
    """Decode one tensor description; returns (name, array, position after its binary data)."""
    name, spec, parameters, data = _describe(item, where, kind, strict=strict)
    where = spec[3]
    size = parameters.get("binary_data_size")
    if size is None:
        if data is None:
            raise CodecError(f"{where} has neither 'data' nor parameters.binary_data_size")
        return name, _from_json(data, spec), pos
    if data is not None:
        raise CodecError(f"{where} has both 'data' and parameters.binary_data_size")
    if type(size) is not int or size < 0:
        raise CodecError(f"{where}: binary_data_size must be a non-negative integer")
    left = len(body) - pos
    if size > left and left == 0:
        raise CodecError(
            f"{where}: binary_data_size {size} but no binary data follows the JSON header "
            f"(short buffer; is {HEADER_LENGTH} missing?)"
        )
    if size > left:
        raise CodecError(
            f"{where}: binary_data_size {size} runs past the end of the body (short buffer: {left} bytes left)"
        )
    return name, _from_binary(body, pos, size, spec), pos + size


def _describe(item: object, where: str, kind: str, *, strict: bool) -> tuple[str, _Spec, dict[str, Any], object]:
    """Check a tensor's JSON description; returns (name, spec, parameters, data or None)."""
    if type(item) is not dict:
        raise CodecError(f"{where} must be a JSON object")
    if strict:
        extra = item.keys() - _TENSOR_KEYS
        if extra:
            raise CodecError(f"{where} has unknown field(s) {sorted(extra)}")
    try:
        name, shape_value, datatype = item["name"], item["shape"], item["datatype"]
    except KeyError as exc:
        raise CodecError(f"{where} is missing field {exc.args[0]!r}") from None
    if type(name) is not str or not name:
        raise CodecError(f"{where}: 'name' must be a non-empty string")
    where = f"{kind} {name!r}"
    dtype = _DTYPES.get(datatype) if type(datatype) is str else None
    if dtype is None:
        raise CodecError(f"{where}: unknown datatype {datatype!r}")
    if type(shape_value) is not list or not all(type(d) is int and 0 <= d <= _MAX_DIM for d in shape_value):
        raise CodecError(f"{where}: 'shape' must be a list of non-negative integers, got {str(shape_value)[:200]}")
    if len(shape_value) > _MAX_DIMS:
        raise CodecError(f"{where}: 'shape' has {len(shape_value)} dimensions, at most {_MAX_DIMS} are supported")
    if math.prod(d for d in shape_value if d) > _MAX_ELEMENTS:
        raise CodecError(f"{where}: 'shape' {str(shape_value)[:200]} is too large")
    parameters = _parameters(item.get("parameters"), where)
    if "shared_memory_region" in parameters:
        raise CodecError(f"{where}: shared memory tensors are not supported")
    return name, (datatype, dtype, tuple(shape_value), where), parameters, item.get("data")


def _from_binary(body: bytes, pos: int, size: int, spec: _Spec) -> np.ndarray[Any, Any]:
    datatype, dtype, shape, where = spec
    count = math.prod(shape)
    if datatype == "BYTES":
        return _bytes_records(body, pos, pos + size, count, where).reshape(shape)
    expected = count * dtype.itemsize
    if size != expected:
        raise CodecError(
            f"{where}: binary_data_size is {size} bytes, shape {list(shape)} of {datatype} needs {expected}"
        )
    if count == 0:
        return np.empty(shape, dtype)
    array = np.frombuffer(body, dtype, count, pos)
    if datatype == "BOOL" and array.view(np.uint8).max() > 1:
        raise CodecError(f"{where}: BOOL bytes must be 0 or 1")
    return array.reshape(shape)


def _bytes_records(body: bytes, pos: int, stop: int, count: int | None, where: str) -> np.ndarray[Any, Any]:
    """Parse length-prefixed BYTES elements in body[pos:stop]; `count` None reads to the end."""
    if count is not None and count * 4 > stop - pos:
        raise CodecError(f"{where}: {stop - pos} bytes cannot hold {count} BYTES elements")
    items: list[bytes] = []
    unpack = _U32.unpack_from
    while (len(items) < count) if count is not None else (pos < stop):
        if pos + 4 > stop:
            raise CodecError(f"{where}: BYTES element {len(items)} has a truncated length prefix")
        (length,) = unpack(body, pos)
        pos += 4
        if length > stop - pos:
            raise CodecError(f"{where}: BYTES element {len(items)} of {length} bytes runs past its data")
        items.append(body[pos : pos + length])
        pos += length
    if pos != stop:
        raise CodecError(f"{where}: {stop - pos} extra bytes after {count} BYTES elements")
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _from_json(data: object, spec: _Spec) -> np.ndarray[Any, Any]:
    datatype, dtype, shape, where = spec
    if type(data) is not list:
        raise CodecError(f"{where}: 'data' must be a JSON array")
    count = math.prod(shape)
    try:
        raw = np.array(data, dtype=object) if datatype == "BYTES" else np.asarray(data)
    except ValueError as exc:
        raise CodecError(f"{where}: 'data' is a ragged nested array") from exc
    if raw.size != count:
        raise CodecError(f"{where}: 'data' has {raw.size} elements, shape {list(shape)} needs {count}")
    if count == 0:
        return np.empty(shape, dtype)
    if datatype == "BYTES":
        return _bytes_from_json(raw, where).reshape(shape)
    kind = raw.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise CodecError(f"{where}: BOOL 'data' must hold true/false")
        return raw.reshape(shape)
    if dtype.kind in "iu":
        return _ints_from_json(data, raw, datatype, dtype, where).reshape(shape)
    if kind == "O":
        # Python ints beyond 64 bits, or non-numbers: check each element (rare, slow path).
        values = raw.ravel().tolist()
        if not all(type(v) in (int, float) for v in values):
            raise CodecError(f"{where}: {datatype} 'data' must hold numbers")
        try:
            raw = np.array(values, dtype=np.float64)
        except OverflowError as exc:
            raise CodecError(f"{where}: {datatype} 'data' holds a number out of range") from exc
    elif kind not in "iuf":
        raise CodecError(f"{where}: {datatype} 'data' must hold numbers")
    return _floats_in_range(raw, datatype, dtype, where).reshape(shape)


def _floats_in_range(raw: np.ndarray[Any, Any], datatype: str, dtype: Any, where: str) -> np.ndarray[Any, Any]:
    """`raw` cast to `dtype`; finite numbers beyond its range (1e39 as FP32) are refused, NaN/inf literals pass."""
    with np.errstate(over="ignore"):
        cast = raw.astype(dtype, copy=False)
    if dtype.itemsize < raw.dtype.itemsize and np.isinf(cast).sum() != np.isinf(raw).sum():
        raise CodecError(f"{where}: {datatype} 'data' holds a number out of range (max {float(np.finfo(dtype).max):g})")
    return cast


def _ints_from_json(
    data: list[Any], raw: np.ndarray[Any, Any], datatype: str, dtype: np.dtype[Any], where: str
) -> np.ndarray[Any, Any]:
    kind = raw.dtype.kind
    low, high = _INT_RANGE[datatype]
    if kind in "iu":
        if not np.can_cast(raw.dtype, dtype) and (int(raw.min()) < low or int(raw.max()) > high):
            raise CodecError(f"{where}: {datatype} 'data' holds a value out of range [{low}, {high}]")
        return raw.astype(dtype, copy=False)
    if kind in "fO":
        # numpy infers float64 (or object) for ints that do not all fit int64: re-read the Python values.
        values = np.array(data, dtype=object).ravel().tolist()
        if all(type(v) is int for v in values):
            if all(low <= v <= high for v in values):
                return np.array(values, dtype=dtype)
            raise CodecError(f"{where}: {datatype} 'data' holds a value out of range [{low}, {high}]")
    raise CodecError(f"{where}: {datatype} 'data' must hold integers")


def _bytes_from_json(raw: np.ndarray[Any, Any], where: str) -> np.ndarray[Any, Any]:
    flat = raw.ravel()
    out = np.empty(flat.size, dtype=object)
    for i, value in enumerate(flat.tolist()):
        if type(value) is not str:
            raise CodecError(f"{where}: BYTES 'data' must hold strings, element {i} is {type(value).__name__}")
        try:
            out[i] = value.encode()
        except UnicodeEncodeError as exc:
            raise CodecError(f"{where}: BYTES element {i} is not valid Unicode") from exc
    return out


def _decode_raw(body: bytes, raw_input: tuple[str, str, tuple[int, ...]] | None) -> DecodedRequest:
    if raw_input is None:
        raise CodecError(f"{HEADER_LENGTH}: 0 (raw binary request) needs a model with exactly one input")
    name, datatype, spec = raw_input
    dtype = _DTYPES.get(datatype)
    if dtype is None:
        raise CodecError(f"input {name!r}: unknown datatype {datatype!r}")
    where = f"raw binary input {name!r}"
    shape = list(spec)
    free = [i for i, d in enumerate(shape) if d < 0]
    if len(free) > 1:
        raise CodecError(f"{where}: shape {shape} has more than one variable dimension")
    known = math.prod(d for d in shape if d >= 0)
    if datatype == "BYTES":
        array = _bytes_records(body, 0, len(body), None if free else known, where)
        count = array.size
    else:
        if len(body) % dtype.itemsize:
            raise CodecError(f"{where}: {len(body)} bytes is not a whole number of {datatype} elements")
        count = len(body) // dtype.itemsize
    if free:
        if known == 0 or count % known:
            raise CodecError(f"{where}: {count} elements do not fit shape {shape}")
        shape[free[0]] = count // known
    elif count != known:
        raise CodecError(f"{where}: {len(body)} bytes hold {count} elements, shape {shape} needs {known}")
    if datatype != "BYTES":
        array = np.frombuffer(body, dtype) if count else np.empty(0, dtype)
        if datatype == "BOOL" and count and array.view(np.uint8).max() > 1:
            raise CodecError(f"{where}: BOOL bytes must be 0 or 1")
    return DecodedRequest(id=None, parameters={}, inputs={name: array.reshape(shape)}, outputs=None, binary_output=True)
