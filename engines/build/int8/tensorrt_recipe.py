"""INT8 for TensorRT: the Q/DQ graph TensorRT's explicit quantization wants, mixed with FP16.

TensorRT builds INT8 only from Q/DQ nodes (strongly typed networks) and its ONNX parser and
fusions want a graph unlike the one ONNX Runtime's CPU kernels prefer:

- INT8 (not UINT8) Q/DQ with zero-point 0: symmetric activations and per-channel symmetric
  weights;
- no ``DequantizeLinear`` of an INT32 tensor (the parser rejects it; onnx-tensorrt#850), so conv
  biases stay float (``QuantizeBias: False``) and TensorRT folds them in itself;
- Q/DQ only at the inputs of quantized ops (``OpTypesToExcludeOutputQuantization``): a Q/DQ on
  each conv output would also round the raw head logits that feed the float decode head;
- under strong typing a layer runs at the precision of its inputs, and a ``DequantizeLinear``
  outputs its scale's type: with FP32 scales every non-quantized layer would run in FP32 and
  INT8 would be no faster than FP16. The rest of the graph is therefore converted to FP16
  (scales included, which needs opset 19), as NVIDIA ModelOpt does by default; the decode head
  stays FP32 as in the FP16 variant.

TensorRT computes Q/DQ like fake quantization (quantize, dequantize, float math), so the build
judges these graphs with ONNX Runtime's ``session.disable_quant_qdq`` option
(``engines.runtime.onnxruntime.FAKE_QUANT``, the TensorRT row's ``accuracy_session_config``):
ORT then runs the Q/DQ nodes as written instead of its CPU integer kernels, which saturate on
symmetric INT8 activations on AVX2 and would steer the mixed-precision search wrongly.

This is the TensorRT row's INT8 recipe in the backend table (``engines.runtime.tensorrt``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper, version_converter
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from engines.build.fp16 import FP16_FRAGILE_OPS, to_fp16
from engines.build.int8.calibration import CalibrationSet
from engines.build.int8.graph import decode_head
from engines.build.int8.quantize import METHODS, Int8Options

# QuantizeLinear/DequantizeLinear take float16 scales from opset 19 on.
TENSORRT_OPSET = 19
# Ops kept FP32 in the TensorRT graph besides the decode head: the numerically fragile ones.
# Resize is not among them here (nearest resize is exact in FP16; TensorRT has FP16 kernels).
TENSORRT_FP32_OPS = tuple(op for op in FP16_FRAGILE_OPS if op != "Resize")


def tensorrt_int8_options(options: Int8Options) -> Int8Options:
    """``options`` with what TensorRT requires forced: symmetric activations, per-channel."""
    return Int8Options(
        options.method, per_channel=True, symmetric_activations=True, op_types=options.op_types
    )


def quantize_for_tensorrt(
    source: Path,
    target: Path,
    calibration: CalibrationSet,
    options: Int8Options,
    *,
    keep_float: Sequence[str],
    only: Sequence[str] | None = None,
) -> None:
    """Write the TensorRT INT8 graph of ``source`` (same contract as ``quantize_int8``).

    Nodes in ``keep_float`` get no Q/DQ; of those, the decode head stays FP32 and the rest
    (convolutions the search kept out of INT8) run in FP16 like every other unquantized node.
    """
    options = tensorrt_int8_options(options)
    calibration.rewind()  # the reader may have been consumed by an earlier calibration
    with tempfile.TemporaryDirectory(prefix="trt-int8-") as tmp:
        qdq = Path(tmp) / "qdq.onnx"
        quantize_static(
            # The graph, not its path: given a path, ONNX Runtime writes <name>-inferred.onnx beside
            # the source and deletes it again, which races with any other build of the same model.
            model_input=onnx.load(str(source)),
            model_output=qdq,
            calibration_data_reader=calibration,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(options.op_types) if options.op_types else None,
            nodes_to_quantize=list(only) if only is not None else None,
            nodes_to_exclude=list(keep_float),
            calibrate_method=METHODS[options.method],
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "QuantizeBias": False,
                # Without this, ORT still widens weight scales so that an INT32 bias (which
                # QuantizeBias=False never makes) could not overflow: coarser weights for nothing.
                "QDQDisableWeightAdjustForInt32Bias": True,
                # Q/DQ only where a quantized op reads a tensor, never on what it writes.
                "OpTypesToExcludeOutputQuantization": list(options.op_types or ("Conv",)),
            },
            calibration_cache_path=calibration.cache_path,
        )
        model = onnx.load(str(qdq))
    head = decode_head(onnx.load(str(source), load_external_data=False))
    onnx.save(mixed_fp16(model, fp32_nodes=head), str(target))


def mixed_fp16(model: onnx.ModelProto, fp32_nodes: Sequence[str]) -> onnx.ModelProto:
    """The Q/DQ graph with every float tensor outside ``fp32_nodes`` in FP16 (scales included),
    graph inputs and outputs kept FP32."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < TENSORRT_OPSET:
        model = version_converter.convert_version(model, TENSORRT_OPSET)
    _drop_float_identity_casts(model)
    _free_converter_names(model)
    converted = to_fp16(model, keep_float=fp32_nodes, block_ops=TENSORRT_FP32_OPS)
    _float32_resize_scales(converted)
    return converted


# Names the FP16 converter gives the casts it inserts at graph inputs and outputs.
_CONVERTER_PREFIXES = ("graph_input_cast", "graph_output_cast")


def _drop_float_identity_casts(model: onnx.ModelProto) -> None:
    """Remove float32 -> float32 casts (what a half export's input cast becomes in its float32
    upcast). The converter leaves a Cast's target type alone, so such a cast would keep feeding
    float32 into the FP16 Q/DQ behind it: an invalid graph. Casts writing graph outputs stay."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *graph.input]}
    types |= {t.name: t.data_type for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    drop = [
        node
        for node in graph.node
        if node.op_type == "Cast"
        and any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute)
        and types.get(node.input[0]) == TensorProto.FLOAT
        and node.output[0] not in outputs
    ]
    for cast in drop:
        for node in graph.node:
            node.input[:] = [cast.input[0] if i == cast.output[0] else i for i in node.input]
        graph.node.remove(cast)


def _free_converter_names(model: onnx.ModelProto) -> None:
    """Rename tensors and nodes that already carry the converter's cast names.

    A ``half=True`` export was itself made by that converter (float32 I/O around a float16
    body), so its float32 upcast still has a ``graph_input_cast_0`` tensor; converting it again
    would add a second tensor of that name with another type, an invalid graph.
    """
    graph = model.graph
    taken = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
    io = {v.name for v in [*graph.input, *graph.output]}
    renamed = {
        name: f"{name}_src"
        for name in taken
        if name.startswith(_CONVERTER_PREFIXES) and name not in io
    }
    for node in graph.node:
        if node.name.startswith(_CONVERTER_PREFIXES):
            node.name = f"{node.name}_src"
        node.input[:] = [renamed.get(i, i) for i in node.input]
        node.output[:] = [renamed.get(o, o) for o in node.output]
    for item in [*graph.initializer, *graph.value_info]:
        item.name = renamed.get(item.name, item.name)


def _float32_resize_scales(model: onnx.ModelProto) -> None:
    """Resize's ``scales`` input must be float32 in every opset; the converter halves it with
    the other initializers when Resize itself runs in FP16. Give each Resize its float32 copy."""
    inits = {t.name: t for t in model.graph.initializer}
    replaced = set()
    for node in model.graph.node:
        if node.op_type != "Resize" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        scales = inits[node.input[2]]
        if scales.data_type != TensorProto.FLOAT16:
            continue
        values = numpy_helper.to_array(scales).astype(np.float32)
        name = f"{scales.name}_fp32"
        if name not in inits:
            inits[name] = numpy_helper.from_array(values, name)
            model.graph.initializer.append(inits[name])
        node.input[2] = name
        replaced.add(scales.name)
    used = {i for node in model.graph.node for i in node.input}
    for name in replaced - used:
        model.graph.initializer.remove(inits[name])
