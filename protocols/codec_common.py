"""What the V2 body decoder (protocols.binary) and encoder (protocols.binary_encode) share."""

from __future__ import annotations

import struct
from typing import Any, Final

import numpy as np

from protocols.common import ProtocolError
from protocols.datatypes import DATATYPES, numpy_dtype

HEADER_LENGTH: Final = "Inference-Header-Content-Length"

_DTYPES: Final[dict[str, np.dtype[Any]]] = {d: numpy_dtype(d) for d in DATATYPES}
_U32: Final = struct.Struct("<I")
_JSON_SEPARATORS: Final = (",", ":")


class CodecError(ProtocolError):
    """A V2 body is malformed; the message says what is wrong (HTTP 400)."""
