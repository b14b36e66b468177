"""What TensorRT's explicit quantization requires of an INT8 ONNX, as checks that name offenders.

Each function returns a list of problems (empty = the rule holds), so a test's failure message
says which node breaks which rule.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QDQ = ("QuantizeLinear", "DequantizeLinear")
# Ops that only move or convert data: not "computing" in FP16 or FP32 themselves.
PLUMBING = {*QDQ, "Cast", "Reshape", "Transpose", "Split", "Concat", "Shape", "Constant"}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    types |= {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output]}
    types |= {t.name: t.data_type for t in graph.initializer}
    return types


def qdq_problems(model: onnx.ModelProto) -> list[str]:
    """INT8 Q/DQ with zero-point 0 only; no DequantizeLinear of an INT32 tensor (biases)."""
    inits = {t.name: t for t in model.graph.initializer}
    types = _types(model)
    problems = []
    for node in model.graph.node:
        if node.op_type not in QDQ:
            continue
        if len(node.input) < 3 or node.input[2] not in inits:
            problems.append(f"{node.name}: no zero-point initializer (defaults to UINT8)")
            continue
        zero = inits[node.input[2]]
        if zero.data_type != TensorProto.INT8:
            kind = TensorProto.DataType.Name(zero.data_type)
            problems.append(f"{node.name}: zero point is {kind}")
        if np.any(numpy_helper.to_array(zero) != 0):
            problems.append(f"{node.name}: non-zero zero point")
        if node.op_type == "DequantizeLinear" and types.get(node.input[0]) != TensorProto.INT8:
            name = TensorProto.DataType.Name(types.get(node.input[0], 0))
            problems.append(f"{node.name}: dequantizes a {name} tensor")
    return problems


def qdq_feeding(model: onnx.ModelProto, nodes: Iterable[str]) -> list[str]:
    """The nodes in ``nodes`` that read a DequantizeLinear output (they should read float)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    names = set(nodes)
    return [
        f"{n.name} reads {i}"
        for n in model.graph.node
        if n.name in names
        for i in n.input
        if i in dq_outputs
    ]


def precision_problems(
    model: onnx.ModelProto, fp32_nodes: Iterable[str], fp32_ops: Iterable[str]
) -> list[str]:
    """Every computing node outside ``fp32_nodes`` (and not of ``fp32_ops``) writes FP16; the
    ``fp32_nodes`` write FP32."""
    types = _types(model)
    keep, keep_ops = set(fp32_nodes), set(fp32_ops)
    problems = []
    for node in model.graph.node:
        if node.op_type in PLUMBING or node.op_type in keep_ops:
            continue
        out = types.get(node.output[0])
        want = TensorProto.FLOAT if node.name in keep else TensorProto.FLOAT16
        if out != want:
            got = TensorProto.DataType.Name(out or 0)
            problems.append(f"{node.name} ({node.op_type}) writes {got}")
    return problems


def quantized_convs(model: onnx.ModelProto) -> list[str]:
    """Convolutions whose data input and weights both come from DequantizeLinear (INT8 convs)."""
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv" and n.input[0] in dq_outputs and n.input[1] in dq_outputs
    ]
