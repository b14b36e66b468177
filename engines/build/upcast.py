"""A float16 model (``half=True`` exports) upcast to an exact float32 graph.

Every float16 weight is exactly representable in float32, so the upcast graph computes the same
function in float32 arithmetic. It is what the FP32 variant, the FP32 reference and the INT8
calibration of a half model are made from: ONNX Runtime's quantizer and the FP16 converter both
expect float32 graphs.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

_F16, _F32 = TensorProto.FLOAT16, TensorProto.FLOAT


def _value_types(model: onnx.ModelProto) -> list[onnx.TypeProto.Tensor]:
    graph = model.graph
    values = [*graph.input, *graph.output, *graph.value_info]
    return [v.type.tensor_type for v in values if v.type.HasField("tensor_type")]


def is_float16(model: onnx.ModelProto) -> bool:
    """Whether any weight or graph input/output of the model is float16."""
    return any(i.data_type == _F16 for i in model.graph.initializer) or any(
        t.elem_type == _F16 for t in _value_types(model)
    )


def _upcast_tensor(tensor: onnx.TensorProto) -> None:
    if tensor.data_type == _F16:
        tensor.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(tensor).astype("float32"), tensor.name)
        )


def upcast_to_float32(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every float16 tensor, type and cast made float32.

    Raises ``ValueError`` for a graph with subgraphs (If/Loop): their float16 tensors would
    need the same walk, and no detector export has them.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for tensor in model.graph.initializer:
        _upcast_tensor(tensor)
    for tensor_type in _value_types(model):
        if tensor_type.elem_type == _F16:
            tensor_type.elem_type = _F32
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH or attr.type == onnx.AttributeProto.GRAPHS:
                raise ValueError(f"node {node.name!r} ({node.op_type}) has a subgraph")
            if attr.type == onnx.AttributeProto.TENSOR:
                _upcast_tensor(attr.t)
            elif node.op_type in ("Cast", "CastLike") and attr.name == "to" and attr.i == _F16:
                attr.i = _F32
    return model
