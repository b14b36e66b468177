"""KServe v2 tensor bytes shared by HTTP and gRPC: BYTES tensors and typed raw tensors.

A v2 BYTES tensor travels as its elements one after another, each prefixed with its length as a
4-byte little-endian unsigned integer (the binary-data extension over HTTP, ``raw_*_contents``
over gRPC). Numeric tensors travel as their little-endian bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.api.kserve_codec import NUMPY_TO_V2, V2_DTYPES
from service.errors import BadRequest, InferenceFailed

BYTES = "BYTES"


def split_bytes(raw: bytes, count: int | None = None) -> list[bytes]:
    """Length-prefixed elements -> list; BadRequest when the framing does not add up."""
    elements: list[bytes] = []
    offset = 0
    view = memoryview(raw)
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise BadRequest("BYTES tensor: truncated element length")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise BadRequest("BYTES tensor: element runs past the end of the data")
        elements.append(bytes(view[offset : offset + size]))
        offset += size
    if count is not None and len(elements) != count:
        raise BadRequest(f"BYTES tensor holds {len(elements)} elements; its shape says {count}")
    return elements


def join_bytes(elements: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def element_count(shape: Sequence[int]) -> int:
    if any(int(d) < 0 for d in shape):
        raise BadRequest(f"tensor shape {list(shape)} has a negative dimension")
    return int(np.prod([int(d) for d in shape], dtype=np.int64))


def from_raw(datatype: str, shape: Sequence[int], raw: bytes) -> np.ndarray:
    """One tensor's raw bytes -> array (object array of bytes for BYTES)."""
    count = element_count(shape)
    if datatype == BYTES:
        return np.array(split_bytes(raw, count), dtype=object).reshape(list(shape))
    dtype = V2_DTYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"unsupported datatype {datatype[:16]!r}")
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(
            f"{len(raw)} bytes of {datatype} data for shape {list(shape)}; "
            f"expected {count * dtype.itemsize}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(list(shape))


def to_raw(array: np.ndarray) -> tuple[str, bytes]:
    """Array -> (v2 datatype, raw bytes)."""
    if array.dtype == object:
        return BYTES, join_bytes([bytes(e) for e in array.ravel()])
    little = array.dtype.newbyteorder("<")
    datatype = NUMPY_TO_V2.get(little)
    if datatype is None:  # mislabelled bytes would be read as garbage by the client
        raise InferenceFailed(f"output of dtype {array.dtype} has no v2 datatype")
    return datatype, np.ascontiguousarray(array, dtype=little).tobytes()


def json_data(array: np.ndarray) -> list[Any]:
    """Array -> the v2 JSON ``data`` list (BYTES elements as text where they are UTF-8)."""
    if array.dtype == object:
        return [bytes(e).decode("utf-8", "replace") for e in array.ravel()]
    values: list[Any] = array.ravel().tolist()
    return values
