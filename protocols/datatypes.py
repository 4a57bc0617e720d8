"""KServe V2 tensor datatypes and their numpy equivalents."""

from __future__ import annotations

from typing import Final, Literal, get_args

import numpy as np

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]
DATATYPES: Final[tuple[str, ...]] = get_args(Datatype)

# Little-endian, as the binary tensor extension requires. BYTES is an object array of `bytes`.
_NUMPY: Final[dict[str, np.dtype[np.generic]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}
_FROM_NUMPY: Final[dict[str, str]] = {
    "b": "BOOL",
    "u1": "UINT8",
    "u2": "UINT16",
    "u4": "UINT32",
    "u8": "UINT64",
    "i1": "INT8",
    "i2": "INT16",
    "i4": "INT32",
    "i8": "INT64",
    "f2": "FP16",
    "f4": "FP32",
    "f8": "FP64",
}


def numpy_dtype(datatype: str) -> np.dtype[np.generic]:
    """The little-endian numpy dtype for a V2 datatype (object for BYTES)."""
    try:
        return _NUMPY[datatype]
    except KeyError:
        raise ValueError(f"unknown V2 datatype {datatype!r}") from None


def element_size(datatype: str) -> int:
    """Bytes per element in the binary extension; 0 for BYTES (variable length)."""
    if datatype == "BYTES":
        return 0
    return numpy_dtype(datatype).itemsize


def from_numpy(dtype: np.dtype[np.generic]) -> str:
    """The V2 datatype for a numpy dtype (object, bytes and str arrays map to BYTES)."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    key = "b" if dtype.kind == "b" else f"{dtype.kind}{dtype.itemsize}"
    try:
        return _FROM_NUMPY[key]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no V2 datatype") from None


def shape_matches(spec: tuple[int, ...], actual: tuple[int, ...]) -> bool:
    """True if `actual` fits `spec`, where -1 in `spec` matches any size."""
    return len(spec) == len(actual) and all(s in (-1, a) for s, a in zip(spec, actual, strict=True))
