"""Numeric precision of an engine variant."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import onnx


class Precision(str, Enum):
    """Precision of a built variant. ``auto`` is a request-time policy, not a variant."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


# Ops whose float16 range or precision is too small for detection heads (exp of box sizes,
# reductions, divisions): converted graphs keep them in float32.
FP16_FRAGILE_OPS = (
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Div",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "Resize",
    "Range",
    "TopK",
    "NonMaxSuppression",
)


def to_fp16(model: onnx.ModelProto, keep_float: Sequence[str] = ()) -> onnx.ModelProto:
    """Float16 graph with float32 inputs/outputs; fragile ops and ``keep_float`` nodes stay fp32."""
    from onnxconverter_common import float16

    # The converter matches nodes by name and fails on unnamed ones; name them on a copy.
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    converted: onnx.ModelProto = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + list(FP16_FRAGILE_OPS),
        node_block_list=list(keep_float),
    )
    return converted
