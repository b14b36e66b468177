"""KServe v2 gRPC messages <-> numpy arrays and plain parameter values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from service.api.v2_tensors import BYTES, element_count, to_raw
from service.errors import BadRequest
from service.grpc_v2 import grpc_predict_v2_pb2 as pb

# Which InferTensorContents field carries each datatype when a client sends typed contents.
CONTENTS_FIELDS = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int8),
    "INT16": ("int_contents", np.int16),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint8),
    "UINT16": ("uint_contents", np.uint16),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}


def parameter_value(parameter: pb.InferParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def parameters(entries: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in entries.items()}


def to_parameter(value: str | bool | int | float) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    """The request's tensors, from ``raw_input_contents`` (one per input) or typed contents."""
    from service.api.v2_tensors import from_raw

    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs")
    arrays: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        shape = [int(d) for d in tensor.shape]
        if raw:
            arrays[tensor.name] = from_raw(tensor.datatype, shape, raw[i])
            continue
        count = element_count(shape)
        if tensor.datatype == BYTES:
            values: Any = list(tensor.contents.bytes_contents)
            dtype: Any = object
        elif tensor.datatype in CONTENTS_FIELDS:
            field, dtype = CONTENTS_FIELDS[tensor.datatype]
            values = getattr(tensor.contents, field)
        else:
            raise BadRequest(f"unsupported datatype {tensor.datatype[:16]!r}")
        if len(values) != count:
            raise BadRequest(
                f"input {tensor.name[:64]!r} has {len(values)} values; shape {shape} needs {count}"
            )
        arrays[tensor.name] = np.array(values, dtype=dtype).reshape(shape)
    return arrays


def requested_outputs(request: pb.ModelInferRequest, available: list[str]) -> list[str]:
    """The outputs to return, in the model's order; unknown names are refused before inference."""
    names = [o.name for o in request.outputs]
    for name in names:
        if name not in available:
            raise BadRequest(f"unknown output {name[:64]!r}; the model has {available}")
    return [n for n in available if not names or n in names]


def encode_response(
    request: pb.ModelInferRequest,
    arrays: dict[str, np.ndarray],
    names: list[str],
    extra: Mapping[str, str],
) -> pb.ModelInferResponse:
    """Arrays -> a response carrying every output in ``raw_output_contents``."""
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version or "1", id=request.id
    )
    for key, value in extra.items():
        response.parameters[key].CopyFrom(to_parameter(value))
    for name in names:
        array = arrays[name]
        datatype, raw = to_raw(array)
        response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        response.raw_output_contents.append(raw)
    return response
