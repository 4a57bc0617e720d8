"""Encoding V2 bodies (requests for offload clients, responses for the server): JSON or binary tensors.

Imported through protocols.binary, which documents the format.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from protocols.codec_common import _DTYPES, _JSON_SEPARATORS, _U32, HEADER_LENGTH, CodecError
from protocols.datatypes import from_numpy

__all__ = ["HEADER_LENGTH", "encode_request", "encode_response"]


def encode_response(
    *,
    model_name: str,
    model_version: str | None,
    id: str | None,
    outputs: Mapping[str, np.ndarray[Any, Any]],
    binary: Callable[[str], bool] | bool,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """Encode an infer response; returns (body, JSON header length or None when nothing is binary)."""
    header: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        header["model_version"] = model_version
    if id is not None:
        header["id"] = id
    if parameters:
        header["parameters"] = dict(parameters)
    header["outputs"], chunks = _encode_tensors(outputs, binary)
    return _assemble(header, chunks)


def encode_request(
    *,
    inputs: Mapping[str, np.ndarray[Any, Any]],
    outputs: Sequence[str] | None = None,
    id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    binary: bool = True,
) -> tuple[bytes, int | None]:
    """Encode an infer request (inputs and requested outputs binary or JSON); returns (body, header length)."""
    header: dict[str, Any] = {}
    if id is not None:
        header["id"] = id
    request_parameters = dict(parameters) if parameters else {}
    if outputs is None:
        if binary:
            request_parameters["binary_data_output"] = True
    else:
        header["outputs"] = [{"name": name, "parameters": {"binary_data": binary}} for name in outputs]
    if request_parameters:
        header["parameters"] = request_parameters
    header["inputs"], chunks = _encode_tensors(inputs, binary)
    return _assemble(header, chunks)


def _encode_tensors(
    arrays: Mapping[str, np.ndarray[Any, Any]], binary: Callable[[str], bool] | bool
) -> tuple[list[dict[str, Any]], list[bytes] | None]:
    """Tensor descriptions for the header, and the binary chunks (None when no tensor is binary)."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] | None = None
    for name, value in arrays.items():
        array = np.asarray(value)
        try:
            datatype = from_numpy(array.dtype)
        except ValueError as exc:
            raise CodecError(f"tensor {name!r}: {exc}") from exc
        as_binary = binary if type(binary) is bool else bool(binary(name))
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        raw: bytes | None = None
        if datatype == "BYTES":
            items = _bytes_items(array, name)
            if not as_binary:
                try:
                    tensor["data"] = [item.decode() for item in items]
                except UnicodeDecodeError:
                    as_binary = True  # JSON strings cannot carry it; tritonclient reads binary either way
            if as_binary:
                raw = b"".join(part for item in items for part in (_U32.pack(len(item)), item))
        else:
            if not as_binary and array.dtype.kind == "f" and not np.isfinite(array).all():
                as_binary = True  # JSON has no NaN/Infinity (browsers, Go, Rust refuse them); binary is exact
            if as_binary:
                raw = array.astype(_DTYPES[datatype], copy=False).tobytes()
            else:
                tensor["data"] = array.ravel().tolist()
        if raw is not None:
            tensor["parameters"] = {"binary_data_size": len(raw)}
            if chunks is None:
                chunks = []
            chunks.append(raw)
        tensors.append(tensor)
    return tensors, chunks


def _bytes_items(array: np.ndarray[Any, Any], name: str) -> list[bytes]:
    items = array.ravel().tolist()
    for i, item in enumerate(items):
        if type(item) is not bytes:
            if isinstance(item, str):
                items[i] = item.encode()
            elif isinstance(item, bytes):
                items[i] = bytes(item)
            else:
                raise CodecError(f"tensor {name!r}: BYTES element {i} is {type(item).__name__}, not bytes/str")
    return items


def _assemble(header: dict[str, Any], chunks: list[bytes] | None) -> tuple[bytes, int | None]:
    head = json.dumps(header, separators=_JSON_SEPARATORS, allow_nan=False).encode()
    if chunks is None:
        return head, None
    return b"".join([head, *chunks]), len(head)
