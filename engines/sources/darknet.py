"""Darknet (cfg + weights) -> ONNX, with the YOLO decode head inside the graph.

Only ``onnx`` and numpy are needed. Supported layers: ``convolutional`` (batch norm folded into
the kernel and bias; linear, leaky, relu or logistic activation), ``maxpool`` (darknet's padding,
so the size-2 stride-1 pool keeps the spatial size), ``route``, ``upsample`` and ``yolo``.

The graph takes ``images`` float32 (batch, 3, H, W), RGB scaled to 0..1, with a symbolic batch
dimension, and returns ``output0`` (batch, N, 5 + nc): cx, cy, w, h in input pixels, objectness
and class scores after the sigmoid, every head concatenated (the ``yolov5`` layout). Class names,
input size and stride go into ``metadata_props`` the way Ultralytics exports write them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engines.sources.darknet_cfg import DarknetFormatError, Section, WeightsReader, parse_cfg

OPSET = 17
# Bump whenever the produced graph changes: model_sources rebuilds when the recorded one differs.
CONVERTER_VERSION = "3"
CONVERTER = f"detect-serve darknet {CONVERTER_VERSION}"
OUTPUT = "output0"


class _Graph:
    """Accumulates ONNX nodes and initializers under unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


@dataclass
class _Tensor:
    name: str
    channels: int
    height: int
    width: int


@dataclass
class _Head:
    decoded: str
    classes: int
    rows: int
    stride: int
    raw: _Tensor


@dataclass
class _Net:
    graph: _Graph
    weights: WeightsReader
    input_hw: tuple[int, int]
    outputs: list[_Tensor] = field(default_factory=list)
    heads: list[_Head] = field(default_factory=list)


_ACTIVATIONS: dict[str, tuple[str, dict[str, float]] | None] = {
    "linear": None,
    "leaky": ("LeakyRelu", {"alpha": 0.1}),
    "relu": ("Relu", {}),
    "logistic": ("Sigmoid", {}),
}


def _conv(net: _Net, index: int, s: Section, x: _Tensor) -> _Tensor:
    g, filters, size = net.graph, s.integer("filters"), s.integer("size")
    stride = s.integer("stride", 1)
    pad = size // 2 if s.integer("pad", 0) else s.integer("padding", 0)
    if s.integer("groups", 1) != 1:
        raise DarknetFormatError(f"layer {index}: grouped convolutions are not supported")
    bias = net.weights.take(filters)
    if s.integer("batch_normalize", 0):
        scale, mean, var = (net.weights.take(filters) for _ in range(3))
        kernel = net.weights.take(filters * x.channels * size * size).reshape(filters, -1)
        # darknet normalises with (x - mean) / (sqrt(var) + 1e-6), not sqrt(var + eps).
        factor = scale / (np.sqrt(var) + 1e-6)
        kernel, bias = kernel * factor[:, None], bias - mean * factor
    else:
        kernel = net.weights.take(filters * x.channels * size * size)
    w = g.const("w", kernel.reshape(filters, x.channels, size, size).astype(np.float32))
    b = g.const("b", bias.astype(np.float32))
    out = g.op(
        "Conv",
        [x.name, w, b],
        "conv",
        kernel_shape=[size, size],
        strides=[stride, stride],
        pads=[pad] * 4,
    )
    activation = s.options.get("activation", "linear")
    if activation not in _ACTIVATIONS:
        raise DarknetFormatError(f"layer {index}: unsupported activation {activation!r}")
    if (act := _ACTIVATIONS[activation]) is not None:
        out = g.op(act[0], [out], activation, **act[1])
    h = (x.height + 2 * pad - size) // stride + 1
    wd = (x.width + 2 * pad - size) // stride + 1
    return _Tensor(out, filters, h, wd)


def _maxpool(net: _Net, index: int, s: Section, x: _Tensor) -> _Tensor:
    size, stride = s.integer("size"), s.integer("stride", 1)
    # darknet pads by `padding` (default size-1) in total, starting at -padding/2: for size 2
    # that is all on the right/bottom, which is how the size-2 stride-1 pool keeps its size.
    total = s.integer("padding", size - 1)
    begin, end = total // 2, total - total // 2
    out = net.graph.op(
        "MaxPool",
        [x.name],
        "pool",
        kernel_shape=[size, size],
        strides=[stride, stride],
        pads=[begin, begin, end, end],
    )
    h = (x.height + total - size) // stride + 1
    w = (x.width + total - size) // stride + 1
    return _Tensor(out, x.channels, h, w)


def _upsample(net: _Net, index: int, s: Section, x: _Tensor) -> _Tensor:
    k = s.integer("stride", 2)
    scales = net.graph.const("scales", np.array([1, 1, k, k], dtype=np.float32))
    # asymmetric + floor is plain pixel repetition, spelled out so no runtime has to agree on
    # the half_pixel default's rounding.
    out = net.graph.op(
        "Resize",
        [x.name, "", scales],
        "up",
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    return _Tensor(out, x.channels, x.height * k, x.width * k)


def _route(net: _Net, index: int, s: Section, x: _Tensor) -> _Tensor:
    parts = [net.outputs[r if r >= 0 else index + r] for r in s.integers("layers")]
    if len(parts) == 1:
        return parts[0]
    if len({(p.height, p.width) for p in parts}) != 1:
        raise DarknetFormatError(f"layer {index}: route joins tensors of different sizes")
    out = net.graph.op("Concat", [p.name for p in parts], "route", axis=1)
    return _Tensor(out, sum(p.channels for p in parts), parts[0].height, parts[0].width)


def _yolo(net: _Net, index: int, s: Section, x: _Tensor) -> _Tensor:
    """Decode one head into (B, na*H*W, 5+nc) rows ordered (anchor, y, x)."""
    g, mask, flat = net.graph, s.integers("mask"), s.numbers("anchors")
    anchors = np.array([flat[2 * m : 2 * m + 2] for m in mask], dtype=np.float32)
    nc, na, h, w = s.integer("classes"), len(mask), x.height, x.width
    if x.channels != na * (5 + nc):
        raise DarknetFormatError(f"layer {index}: yolo needs {na * (5 + nc)} channels")
    shape = g.const("shape", np.array([0, na, 5 + nc, h, w], dtype=np.int64))
    t = g.op(
        "Transpose", [g.op("Reshape", [x.name, shape], "head")], "head_t", perm=[0, 1, 3, 4, 2]
    )
    split = g.const("split", np.array([2, 2, 1, nc], dtype=np.int64))
    txy, twh, tobj, tcls = (g.name(n) for n in ("txy", "twh", "tobj", "tcls"))
    g.nodes.append(
        helper.make_node("Split", [t, split], [txy, twh, tobj, tcls], g.name("split"), axis=-1)
    )
    gy, gx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    grid = g.const("grid", np.stack([gx, gy], axis=-1)[None, None].astype(np.float32))
    in_h, in_w = net.input_hw
    stride = g.const("stride", np.array([in_w / w, in_h / h], dtype=np.float32))
    xy = g.op("Mul", [g.op("Add", [g.op("Sigmoid", [txy], "sxy"), grid], "gxy"), stride], "xy")
    anchor_wh = g.const("anchors", anchors[None, :, None, None])
    wh = g.op("Mul", [g.op("Exp", [twh], "ewh"), anchor_wh], "wh")
    obj, cls = g.op("Sigmoid", [tobj], "obj"), g.op("Sigmoid", [tcls], "cls")
    cat = g.op("Concat", [xy, wh, obj, cls], "det", axis=-1)
    rows = g.const("rows", np.array([0, -1, 5 + nc], dtype=np.int64))
    decoded = g.op("Reshape", [cat, rows], "dets")
    net.heads.append(_Head(decoded, nc, na * h * w, in_h // h, x))
    return x


_LAYERS: dict[str, Callable[[_Net, int, Section, _Tensor], _Tensor]] = {
    "convolutional": _conv,
    "maxpool": _maxpool,
    "upsample": _upsample,
    "route": _route,
    "yolo": _yolo,
}


def _build_net(cfg_text: str, weights: bytes) -> tuple[_Net, int]:
    net_section, *layers = parse_cfg(cfg_text)
    if net_section.kind not in ("net", "network"):
        raise DarknetFormatError("cfg must start with [net]")
    if unknown := {s.kind for s in layers} - set(_LAYERS):
        raise DarknetFormatError(f"unsupported darknet layers: {sorted(unknown)}")
    hw = (net_section.integer("height"), net_section.integer("width"))
    net = _Net(_Graph(), WeightsReader(weights), hw)
    x = _Tensor("images", net_section.integer("channels", 3), *hw)
    for i, s in enumerate(layers):
        x = _LAYERS[s.kind](net, i, s, x)
        net.outputs.append(x)
    if net.weights.remaining:
        raise DarknetFormatError(
            f"{net.weights.remaining} weights left over: cfg and weights do not match"
        )
    if not net.heads:
        raise DarknetFormatError("cfg has no [yolo] layer")
    return net, net_section.integer("channels", 3)


def convert(
    cfg_text: str,
    weights: bytes,
    class_names: list[str],
    metadata: Mapping[str, str] | None = None,
    *,
    expose_heads: bool = False,
) -> onnx.ModelProto:
    """The ONNX model of a darknet YOLO; ``metadata`` adds to (or overrides) metadata_props.

    ``expose_heads`` adds each head's raw convolution output (before decoding) as extra graph
    outputs ``raw0``, ``raw1``, ...: for checking the converter against another implementation.
    """
    net, channels = _build_net(cfg_text, weights)
    g, hw = net.graph, net.input_hw
    # Every node gets a unique name: graph tools (the FP16 converter) match nodes by name.
    heads = [h.decoded for h in net.heads]
    g.nodes.append(helper.make_node("Concat", heads, [OUTPUT], OUTPUT, axis=1))
    if bad := [h.classes for h in net.heads if h.classes != len(class_names)]:
        raise DarknetFormatError(f"{len(class_names)} class names for {bad[0]} classes")
    nc = 5 + len(class_names)
    rows = sum(h.rows for h in net.heads)
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", rows, nc])]
    for k, head in enumerate(net.heads if expose_heads else []):
        g.nodes.append(helper.make_node("Identity", [head.raw.name], [f"raw{k}"], f"raw{k}"))
        dims: list[str | int] = ["batch", head.raw.channels, head.raw.height, head.raw.width]
        outputs.append(helper.make_tensor_value_info(f"raw{k}", TensorProto.FLOAT, dims))
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", channels, *hw])
    graph = helper.make_graph(g.nodes, "darknet", [images], outputs, g.inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="detect-serve darknet",
        producer_version=CONVERTER_VERSION,
    )
    model.ir_version = 8  # what opset 17 needs; newer IR versions lock out older ORT releases
    meta = {
        "names": repr(dict(enumerate(class_names))),
        "imgsz": repr(list(hw)),
        "stride": str(max(h.stride for h in net.heads)),
        "layout": "yolov5",
        "converter": CONVERTER,
        **(metadata or {}),
    }
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model


def read_names(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def convert_files(files: Mapping[str, Path], metadata: Mapping[str, str]) -> onnx.ModelProto:
    """``convert`` from the files of a ``darknet`` source: roles ``cfg``, ``weights``, ``names``."""
    names = read_names(files["names"].read_text())
    return convert(files["cfg"].read_text(), files["weights"].read_bytes(), names, metadata)
