"""What the TensorRT build refuses before it starts TensorRT, read from the ONNX alone.

``plan_request`` is called by the TensorRT backend's ``compile`` before anything else, so a
model TensorRT cannot take is refused at build, on any host (with or without TensorRT), with
what is unsupported named, instead of a parser or builder error on the GPU host at first start.

The facts come from ONNX-TensorRT's operator support matrix (TensorRT 10): opsets from 9 on;
no sequence, optional, string, window/DFT or integer-arithmetic quantized ops (``ConvInteger``,
``QLinearConv``: ONNX Runtime's QOperator format; TensorRT takes Q/DQ only); ``TopK`` sorted,
with a constant ``K`` below 3840; no antialiased ``Resize``; no DOUBLE, string or complex graph
inputs/outputs. Anything subtler is still TensorRT's to reject, and the build records its
parser errors as the variant's reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, numpy_helper

from engines.errors import EngineLoadError, ModelFormatError
from engines.runtime.tensorrt_shapes import ProfileShapes, model_profile

MIN_OPSET = 9
TOPK_MAX_K = 3840
UNSUPPORTED_OPS = frozenset(
    {
        "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr",
        "BitwiseXor", "BlackmanWindow", "CenterCropPad", "Compress", "ConcatFromSequence",
        "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear", "HammingWindow", "HannWindow",
        "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix",
        "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement",
        "OptionalHasElement", "QLinearConv", "QLinearMatMul", "RegexFullMatch", "STFT",
        "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert",
        "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence",
        "StringConcat", "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
    }
)  # fmt: skip
# Graph input/output element types TensorRT cannot bind.
_UNBINDABLE = {
    TensorProto.DOUBLE: "float64",
    TensorProto.STRING: "string",
    TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
    TensorProto.UINT16: "uint16",
    TensorProto.UINT32: "uint32",
    TensorProto.UINT64: "uint64",
    TensorProto.INT16: "int16",
}
_IMAGE_TYPES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node, those in If/Loop/Scan bodies included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _nodes(sub)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    found = [a for a in node.attribute if a.name == name]
    return int(onnx.helper.get_attribute_value(found[0])) if found else default


def _node_problems(graph: onnx.GraphProto) -> list[str]:
    consts = {t.name: t for t in graph.initializer}
    consts |= {
        n.output[0]: n.attribute[0].t
        for n in graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t")
    }
    problems = []
    unsupported = sorted({n.op_type for n in _nodes(graph) if n.op_type in UNSUPPORTED_OPS})
    if unsupported:
        problems.append(f"operators TensorRT's ONNX parser does not support: {unsupported}")
    for node in _nodes(graph):
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name or node.op_type}: custom-domain op {node.domain}")
        elif node.op_type == "TopK":
            if not _attr(node, "sorted", 1):
                problems.append(f"{node.name}: TopK with sorted=0 (TensorRT needs sorted=1)")
            k = consts.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                problems.append(f"{node.name}: TopK whose K is not a constant")
            elif int(numpy_helper.to_array(k).reshape(-1)[0]) >= TOPK_MAX_K:
                problems.append(f"{node.name}: TopK with K >= {TOPK_MAX_K}")
        elif node.op_type == "Resize" and _attr(node, "antialias", 0):
            problems.append(f"{node.name}: antialiased Resize")
    return problems


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """What TensorRT cannot build or the runtime cannot bind in ``model`` (empty: nothing)."""
    graph = model.graph
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} (TensorRT parses opset {MIN_OPSET} and later)")
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        problems.append(f"{len(inputs)} graph inputs (the plan takes one image input)")
    for value in inputs[:1]:
        elem = value.type.tensor_type.elem_type
        if elem not in _IMAGE_TYPES:
            name = TensorProto.DataType.Name(elem)
            problems.append(f"input {value.name!r} is {name} (float32 or float16 images only)")
        if len(value.type.tensor_type.shape.dim) != 4:
            problems.append(f"input {value.name!r} is not NCHW (4 dims)")
    for value in [*inputs, *graph.output]:
        elem = value.type.tensor_type.elem_type
        if elem in _UNBINDABLE:
            problems.append(f"tensor {value.name!r} is {_UNBINDABLE[elem]} (TensorRT binds none)")
    return problems + _node_problems(graph)


@dataclass(frozen=True)
class PlanRequest:
    """The one image input of a graph, and the profile a plan of it gets."""

    input_name: str
    input_dtype: str  # "float32" or "float16": the buffer the runtime binds
    onnx_shape: tuple[int, ...]  # -1 where symbolic, as TensorRT's parser reports it
    profile: ProfileShapes

    @property
    def max_batch(self) -> int:
        return self.profile.max[0]


def plan_request(path: Path, max_batch: int, input_size: tuple[int, int]) -> PlanRequest:
    """The profile a plan of ``path`` gets, or ``ModelFormatError`` naming what TensorRT
    cannot take. ``max_batch`` is the build's; a static batch overrides it."""
    model = onnx.load(str(path), load_external_data=False)
    problems = tensorrt_problems(model)
    if problems:
        raise ModelFormatError(f"TensorRT cannot build {path.name}: {'; '.join(problems)}")
    initializers = {t.name for t in model.graph.initializer}
    value = next(i for i in model.graph.input if i.name not in initializers)
    dims = value.type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in dims)
    try:
        profile = model_profile(shape, max_batch, input_size)
    except (ValueError, EngineLoadError) as exc:  # the shape rules' refusals
        raise ModelFormatError(f"TensorRT cannot build {path.name}: {exc}") from exc
    dtype = _IMAGE_TYPES[value.type.tensor_type.elem_type]
    return PlanRequest(value.name, dtype, shape, profile)
