"""KServe v2 / Triton HTTP tensor encoding: JSON tensors and the binary-data extension.

Binary extension: the body is a JSON header of ``Inference-Header-Content-Length`` bytes followed
by raw little-endian tensor bytes, in input order, for every input whose ``parameters`` carry
``binary_data_size``. Responses use the same layout when the client asks for binary outputs.

Requests are validated by a schema (``InferRequest``) and every size is checked before anything
is allocated: a malformed body is a 400 ``{"error": ...}``, never a 500. Parsing and encoding are
CPU-heavy for big tensors and run in worker threads (callers: ``run_in_threadpool``). Replies are
valid JSON: a non-finite output value (NaN, +-inf) is written as ``null`` in JSON tensor data
(binary outputs carry the raw IEEE values).
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
)

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


def _scalar(value: Any) -> Any:
    if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
        return value
    raise ValueError("a parameter value must be a boolean, a finite number or a string")


# A parameter value is a bool, a number or a string (KServe v2); never a list or an object.
Scalar = Annotated[Any, AfterValidator(_scalar)]
Parameters = dict[Annotated[str, Field(max_length=256)], Scalar]
Name = Annotated[StrictStr, Field(min_length=1, max_length=256)]
MAX_DIMS = 8


class _Schema(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class InputTensor(_Schema):
    name: Name
    datatype: StrictStr
    shape: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(max_length=MAX_DIMS)]
    parameters: Parameters | None = None
    data: Any = None  # checked (and converted) by decode_inputs, element by element in numpy


class RequestedOutput(_Schema):
    name: Name
    parameters: Parameters | None = None


class InferRequest(_Schema):
    id: Annotated[StrictStr, Field(max_length=256)] | None = None
    parameters: Parameters | None = None
    inputs: Annotated[list[InputTensor], Field(min_length=1, max_length=16)]
    outputs: Annotated[list[RequestedOutput], Field(max_length=64)] | None = None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_request(body: bytes, header_length: str | None) -> tuple[InferRequest, bytes]:
    """Body -> (validated request header, trailing binary tensor data). Worker thread."""
    try:
        if header_length is None:
            head, binary = body, b""
        else:
            n = int(header_length) if header_length.strip().isdigit() else -1
            if not 0 < n <= len(body):
                raise ValueError(
                    f"Inference-Header-Content-Length {header_length[:32]!r} is not "
                    f"within the body's {len(body)} bytes"
                )
            head, binary = body[:n], body[n:]
        raw = json.loads(head, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadRequest("malformed v2 inference request: JSON nested too deeply") from None
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"malformed v2 inference request: {str(exc)[:200]}") from None
    try:
        return InferRequest.model_validate(raw), binary
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(f"invalid v2 inference request at {where}: {first['msg']}") from None
    except RecursionError:
        raise BadRequest("malformed v2 inference request: JSON nested too deeply") from None


def _binary_size(spec: InputTensor) -> int | None:
    size = (spec.parameters or {}).get("binary_data_size")
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"input {spec.name!r}: binary_data_size must be a non-negative integer")
    return size


def _json_tensor(spec: InputTensor, dtype: np.dtype[Any], count: int) -> np.ndarray:
    data = spec.data
    if not isinstance(data, list):
        raise BadRequest(f"input {spec.name!r} has neither JSON 'data' nor binary_data_size")
    if data and not isinstance(data[0], list) and len(data) != count:  # flat: check, then convert
        raise BadRequest(f"input {spec.name!r}: {len(data)} values for shape {spec.shape}")
    try:
        array = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise BadRequest(f"input {spec.name!r}: data is not a regular array of numbers") from None
    if array.dtype.kind not in "biuf" or array.size != count:
        raise BadRequest(
            f"input {spec.name!r}: data must be {count} numbers for shape {spec.shape}"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():  # 1e999 parses as inf
        raise BadRequest(f"input {spec.name!r}: data must be finite numbers")
    return array.astype(dtype, copy=False).reshape(spec.shape)


def decode_inputs(request: InferRequest, binary: bytes, max_elements: int) -> dict[str, np.ndarray]:
    """v2 ``inputs`` (JSON data or binary slices) -> named numpy arrays. Worker thread.

    Sizes are checked before any allocation: the shape's element count against
    ``max_elements``, ``binary_data_size`` against the shape and the bytes actually sent.
    """
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for spec in request.inputs:
        dtype = V2_DTYPES.get(spec.datatype)
        if dtype is None:
            raise BadRequest(f"input {spec.name!r}: unsupported datatype {spec.datatype[:16]!r}")
        count = math.prod(spec.shape)
        if count > max_elements:
            raise BadRequest(
                f"input {spec.name!r}: shape {spec.shape} is over {max_elements} values"
            )
        size = _binary_size(spec)
        if size is None:
            arrays[spec.name] = _json_tensor(spec, dtype, count)
            continue
        if size != count * dtype.itemsize:
            raise BadRequest(
                f"input {spec.name!r}: binary_data_size {size} does not match shape "
                f"{spec.shape} of {spec.datatype} ({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise BadRequest(
                f"input {spec.name!r}: binary_data_size {size} is more than the "
                f"{len(binary) - offset} bytes of binary data left"
            )
        arrays[spec.name] = np.frombuffer(binary, dtype, count, offset).reshape(spec.shape)
        offset += size
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset} bytes of binary data follow the last input")
    return arrays


def requested_precision(request: InferRequest) -> str:
    """The request parameter ``precision`` (default ``auto``)."""
    return str((request.parameters or {}).get("precision", "auto"))


def check_requested_outputs(request: InferRequest, available: list[str]) -> None:
    """Refuse, before any inference, an ``outputs`` list the reply could not honour."""
    for out in request.outputs or []:
        if out.name not in available:
            raise BadRequest(f"unknown output {out.name[:64]!r}; the model has {available}")


def wants_binary(request: InferRequest, name: str) -> bool:
    """The whole reply asked binary, or this output did (the first entry naming it)."""
    if (request.parameters or {}).get("binary_data_output") is True:
        return True
    asked = next((out for out in request.outputs or [] if out.name == name), None)
    return asked is not None and (asked.parameters or {}).get("binary_data") is True


def _json_values(array: np.ndarray) -> list[Any]:
    values: list[Any] = array.ravel().tolist()
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        # JSON has no NaN or infinity: write null, so the reply stays valid JSON.
        values = [v if math.isfinite(v) else None for v in values]
    return values


def check_output_types(outputs: dict[str, np.ndarray]) -> None:
    for name, array in outputs.items():
        if NUMPY_TO_V2.get(array.dtype.newbyteorder("<")) is None:
            # Mislabelled bytes would be read as garbage by the client.
            raise InferenceFailed(f"engine output {name!r} has dtype {array.dtype}, not a v2 type")


def encode_outputs(
    request: InferRequest, outputs: dict[str, np.ndarray], model: str, extra: dict[str, Any]
) -> tuple[bytes, dict[str, str]]:
    """Named arrays -> (body, headers), binary where the client asked for it. Worker thread."""
    check_output_types(outputs)
    requested = [o.name for o in request.outputs or []]
    names = [n for n in outputs if not requested or n in requested]
    tensors, blobs = [], []
    for name in names:
        array = np.ascontiguousarray(outputs[name])
        datatype = NUMPY_TO_V2[array.dtype.newbyteorder("<")]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if wants_binary(request, name):
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_values(array)
        tensors.append(entry)
    header = {"model_name": model, "model_version": "1", "outputs": tensors, **extra}
    if request.id is not None:
        header["id"] = request.id
    head = json.dumps(header, allow_nan=False).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
