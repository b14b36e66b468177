"""Structural questions about an ONNX graph: which nodes form the decode head."""

from __future__ import annotations

from collections import defaultdict

import onnx

COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}
HEAD_REASON = (
    "decode head: mixes pixel-scale boxes with 0..1 scores; one INT8 scale cannot hold both"
)


def decode_head(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes after each head's last convolution (the decode head).

    A node is in the head when some convolution precedes it and no convolution follows it:
    it only reshapes, activates or decodes what the last convolutions produced. These nodes mix
    pixel-scale boxes with 0..1 probabilities and must stay in float.
    """
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    feeds_compute: dict[str, bool] = {}

    def reaches_compute(node: onnx.NodeProto) -> bool:
        key = node.name or node.output[0]
        if key not in feeds_compute:
            feeds_compute[key] = False  # cycle guard (graphs are DAGs, but be safe)
            feeds_compute[key] = any(
                c.op_type in COMPUTE_OPS or reaches_compute(c)
                for out in node.output
                for c in consumers[out]
            )
        return feeds_compute[key]

    after_compute: set[str] = set()
    for node in graph.node:  # ONNX nodes are topologically sorted
        parents = [producers[i] for i in node.input if i in producers]
        if any(
            p.op_type in COMPUTE_OPS or (p.name or p.output[0]) in after_compute for p in parents
        ):
            after_compute.add(node.name or node.output[0])
    return [
        node.name
        for node in graph.node
        if (node.name or node.output[0]) in after_compute
        and node.op_type not in COMPUTE_OPS
        and not reaches_compute(node)
    ]


def compute_nodes(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS]
