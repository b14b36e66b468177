"""KServe v2 / Triton HTTP tensor encoding: JSON tensors and the binary-data extension.

Binary extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed
by raw little-endian tensor bytes, in input order, for every input whose ``parameters`` carry
``binary_data_size``. Responses use the same layout when the client asks for binary outputs.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from service.errors import BadRequest, InferenceFailed

V2_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "INT8": np.dtype("i1"),
    "UINT8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
NUMPY_TO_V2 = {v: k for k, v in V2_DTYPES.items()}
HEADER_LENGTH = "inference-header-content-length"


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """Separate the JSON request header from trailing binary tensor data."""
    try:
        if header_length is None:
            return dict(json.loads(body)), b""
        n = int(header_length)
        if not 0 < n <= len(body):
            raise ValueError("header length out of range")
        return dict(json.loads(body[:n])), body[n:]
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"malformed v2 inference request: {exc}") from None


def decode_inputs(request: dict[str, Any], binary: bytes) -> dict[str, np.ndarray]:
    """v2 ``inputs`` (JSON data or binary slices) -> named numpy arrays."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("v2 request has no 'inputs'")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in inputs:
        try:
            name, datatype, shape = str(spec["name"]), str(spec["datatype"]), list(spec["shape"])
            dtype = V2_DTYPES[datatype]
            size = (spec.get("parameters") or {}).get("binary_data_size")
            if size is not None:
                raw = binary[offset : offset + int(size)]
                offset += int(size)
                array = np.frombuffer(raw, dtype=dtype).reshape(shape)
            else:
                array = np.asarray(spec["data"], dtype=dtype).reshape(shape)
        except (KeyError, ValueError, TypeError) as exc:
            raise BadRequest(f"invalid v2 input {spec.get('name', '?')!r}: {exc}") from None
        arrays[name] = array
    return arrays


def _parameters(entry: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"v2 {where} 'parameters' must be an object")
    return parameters


def requested_precision(request: dict[str, Any]) -> str:
    """The request parameter ``precision`` (default ``auto``)."""
    return str(_parameters(request, "request").get("precision", "auto"))


def check_requested_outputs(request: dict[str, Any], available: list[str]) -> None:
    """Refuse, before any inference, an ``outputs`` list the reply could not honour."""
    _parameters(request, "request")
    outputs = request.get("outputs") or []
    if not isinstance(outputs, list):
        raise BadRequest("v2 'outputs' must be a list")
    for out in outputs:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise BadRequest("every v2 requested output must be an object with a 'name'")
        if out["name"] not in available:
            raise BadRequest(f"unknown output {out['name'][:64]!r}; the model has {available}")
        _parameters(out, f"output {out['name']!r}")


def wants_binary(request: dict[str, Any], name: str) -> bool:
    if (request.get("parameters") or {}).get("binary_data_output"):
        return True
    for out in request.get("outputs") or []:
        if out.get("name") == name:
            return bool((out.get("parameters") or {}).get("binary_data"))
    return False


def encode_outputs(
    request: dict[str, Any], outputs: dict[str, np.ndarray], model: str, extra: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """Named arrays -> (body, headers), binary where the client asked for it."""
    requested = [o.get("name") for o in request.get("outputs") or []]
    names = [n for n in outputs if not requested or n in requested]
    tensors, blobs = [], []
    for name in names:
        array = np.ascontiguousarray(outputs[name])
        datatype = NUMPY_TO_V2.get(array.dtype.newbyteorder("<"))
        if datatype is None:  # mislabelled bytes would be read as garbage by the client
            raise InferenceFailed(f"engine output {name!r} has dtype {array.dtype}, not a v2 type")
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if wants_binary(request, name):
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        tensors.append(entry)
    header = {"model_name": model, "model_version": "1", "outputs": tensors, **extra}
    if "id" in request:
        header["id"] = request["id"]
    head = json.dumps(header).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
