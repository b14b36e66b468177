"""FP16 variant: the float graph converted to float16, fragile ops kept in float32."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto, helper

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


def to_fp16(
    model: onnx.ModelProto,
    keep_float: Sequence[str] = (),
    block_ops: Sequence[str] = FP16_FRAGILE_OPS,
) -> onnx.ModelProto:
    """Float16 graph with float32 inputs/outputs; ``block_ops`` ops and ``keep_float`` nodes
    stay fp32 (besides the converter's own block list)."""
    from onnxconverter_common import float16

    # The converter matches nodes by name and fails on unnamed ones; name them on a copy.
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    float_outputs = {
        o.name for o in model.graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    converted: onnx.ModelProto = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=_block_list(block_ops),
        node_block_list=list(keep_float),
    )
    _restore_float_outputs(converted, float_outputs)
    return converted


def _block_list(block_ops: Sequence[str]) -> list[str]:
    from onnxconverter_common import float16

    # The converter's own list blocks Resize/Upsample (for ONNX Runtime's sake); a caller whose
    # ``block_ops`` leaves Resize out (TensorRT has FP16 resize) means it for both names.
    resize = ("Resize", "Upsample")
    defaults = [op for op in float16.DEFAULT_OP_BLOCK_LIST if op not in resize]
    return defaults + list(block_ops) + (["Upsample"] if "Resize" in block_ops else [])


def _restore_float_outputs(model: onnx.ModelProto, names: set[str]) -> None:
    """Make graph outputs float32 again where the converter left them float16.

    onnxconverter-common ignores ``keep_io_types`` when the node producing an output is in the
    block list: it casts that node's float32 result to float16 for the graph output. Retarget
    that cast to float32 (or add one), so callers always get the float32 outputs they had.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        if output.name not in names or tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        node = producers[output.name]
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = TensorProto.FLOAT
        else:
            half = f"{output.name}_fp16"
            node.output[list(node.output).index(output.name)] = half
            cast = helper.make_node(
                "Cast", [half], [output.name], f"{output.name}_to_fp32", to=TensorProto.FLOAT
            )
            model.graph.node.append(cast)
        tensor_type.elem_type = TensorProto.FLOAT
