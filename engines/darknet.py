"""Darknet (cfg + weights) -> ONNX, with the YOLO decode head inside the graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
CONVERTER_VERSION = "1"


@dataclass
class Section:
    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise ValueError(f"[{self.kind}] needs {key}")
            return default
        return int(self.options[key])


def parse_cfg(text: str) -> list[Section]:
    sections: list[Section] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append(Section(line.strip("[]").strip()))
        else:
            key, _, value = line.partition("=")
            sections[-1].options[key.strip()] = value.strip()
    return sections


class _Weights:
    def __init__(self, data: bytes) -> None:
        major, minor, _rev = np.frombuffer(data[:12], dtype="<i4")
        header = 12 + (8 if major * 10 + minor >= 2 else 4)
        self._values = np.frombuffer(data[header:], dtype="<f4")
        self._pos = 0

    def take(self, n: int) -> np.ndarray:
        if self._pos + n > self._values.size:
            raise ValueError("weights file is shorter than the cfg needs")
        out = self._values[self._pos : self._pos + n]
        self._pos += n
        return out

    @property
    def remaining(self) -> int:
        return self._values.size - self._pos


class _Graph:
    """Accumulates ONNX nodes and initializers with unique names."""

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


def _conv(g: _Graph, x: _Tensor, s: Section, weights: _Weights) -> _Tensor:
    filters, size = s.int("filters"), s.int("size")
    stride, pad = s.int("stride", 1), size // 2 if s.int("pad", 0) else 0
    bias = weights.take(filters).copy()
    if s.int("batch_normalize", 0):
        scale, mean, var = (weights.take(filters) for _ in range(3))
        kernel = weights.take(filters * x.channels * size * size).reshape(filters, -1)
        # darknet normalises with (x - mean) / (sqrt(var) + 1e-6); fold it into the conv.
        factor = scale / (np.sqrt(var) + 1e-6)
        kernel = kernel * factor[:, None]
        bias = bias - mean * factor
    else:
        kernel = weights.take(filters * x.channels * size * size).reshape(filters, -1)
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
    if activation == "leaky":
        out = g.op("LeakyRelu", [out], "leaky", alpha=0.1)
    elif activation != "linear":
        raise ValueError(f"unsupported activation {activation!r}")
    h = (x.height + 2 * pad - size) // stride + 1
    wd = (x.width + 2 * pad - size) // stride + 1
    return _Tensor(out, filters, h, wd)


def _maxpool(g: _Graph, x: _Tensor, s: Section) -> _Tensor:
    size, stride = s.int("size"), s.int("stride", 1)
    # darknet pads by size-1 at the end (right/bottom): a size-2 stride-1 pool keeps the size.
    extra = size - 1
    h = (x.height + extra - size) // stride + 1
    w = (x.width + extra - size) // stride + 1
    pad_h = max(0, (h - 1) * stride + size - x.height)
    pad_w = max(0, (w - 1) * stride + size - x.width)
    out = g.op(
        "MaxPool",
        [x.name],
        "pool",
        kernel_shape=[size, size],
        strides=[stride, stride],
        pads=[0, 0, pad_h, pad_w],
    )
    return _Tensor(out, x.channels, h, w)


def _upsample(g: _Graph, x: _Tensor, s: Section) -> _Tensor:
    k = s.int("stride", 2)
    scales = g.const("scales", np.array([1, 1, k, k], dtype=np.float32))
    out = g.op("Resize", [x.name, "", scales], "up", mode="nearest")
    return _Tensor(out, x.channels, x.height * k, x.width * k)


def _route(g: _Graph, index: int, outputs: list[_Tensor], s: Section) -> _Tensor:
    refs = [int(v) for v in s.options["layers"].split(",")]
    parts = [outputs[r if r >= 0 else index + r] for r in refs]
    if len(parts) == 1:
        return parts[0]
    out = g.op("Concat", [p.name for p in parts], "route", axis=1)
    return _Tensor(out, sum(p.channels for p in parts), parts[0].height, parts[0].width)


def _yolo(g: _Graph, x: _Tensor, s: Section, input_hw: tuple[int, int]) -> str:
    """Decode one head into (B, na*H*W, 5+nc): cx, cy, w, h (input pixels), obj, class scores."""
    mask = [int(v) for v in s.options["mask"].split(",")]
    flat = [float(v) for v in s.options["anchors"].split(",")]
    anchors = np.array([flat[2 * m : 2 * m + 2] for m in mask], dtype=np.float32)
    nc, na, h, w = s.int("classes"), len(mask), x.height, x.width
    if x.channels != na * (5 + nc):
        raise ValueError(f"yolo layer expects {na * (5 + nc)} channels, got {x.channels}")
    shape = g.const("shape", np.array([0, na, 5 + nc, h, w], dtype=np.int64))
    t = g.op("Reshape", [x.name, shape], "head")
    t = g.op("Transpose", [t], "head_t", perm=[0, 1, 3, 4, 2])
    split = g.const("split", np.array([2, 2, 1, nc], dtype=np.int64))
    names = [g.name(n) for n in ("txy", "twh", "tobj", "tcls")]
    g.nodes.append(helper.make_node("Split", [t, split], names, name=g.name("split"), axis=-1))
    txy, twh, tobj, tcls = names
    gy, gx = np.meshgrid(
        np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij"
    )
    grid = g.const("grid", np.stack([gx, gy], axis=-1)[None, None])
    stride = g.const("stride", np.array([input_hw[1] / w, input_hw[0] / h], dtype=np.float32))
    xy = g.op("Mul", [g.op("Add", [g.op("Sigmoid", [txy], "sxy"), grid], "gxy"), stride], "xy")
    wh = g.op(
        "Mul", [g.op("Exp", [twh], "ewh"), g.const("anchors", anchors[None, :, None, None])], "wh"
    )
    obj, cls = g.op("Sigmoid", [tobj], "obj"), g.op("Sigmoid", [tcls], "cls")
    cat = g.op("Concat", [xy, wh, obj, cls], "det", axis=-1)
    flat_shape = g.const("flat", np.array([0, -1, 5 + nc], dtype=np.int64))
    return g.op("Reshape", [cat, flat_shape], "dets")


LAYERS = {"convolutional", "maxpool", "upsample", "route", "yolo"}


def convert(
    cfg_text: str, weights: bytes, class_names: list[str], metadata: dict[str, str] | None = None
) -> onnx.ModelProto:
    """Build the ONNX model: input ``images`` (B,3,H,W) RGB 0..1, output ``output0``."""
    sections = parse_cfg(cfg_text)
    net, layers = sections[0], sections[1:]
    if net.kind not in ("net", "network"):
        raise ValueError("cfg must start with [net]")
    unknown = {s.kind for s in layers} - LAYERS
    if unknown:
        raise ValueError(f"unsupported darknet layers: {sorted(unknown)}")
    hw = (net.int("height"), net.int("width"))
    g, reader = _Graph(), _Weights(weights)
    x = _Tensor("images", net.int("channels", 3), *hw)
    outputs: list[_Tensor] = []
    heads: list[str] = []
    for i, s in enumerate(layers):
        if s.kind == "convolutional":
            x = _conv(g, x, s, reader)
        elif s.kind == "maxpool":
            x = _maxpool(g, x, s)
        elif s.kind == "upsample":
            x = _upsample(g, x, s)
        elif s.kind == "route":
            x = _route(g, i, outputs, s)
        elif s.kind == "yolo":
            heads.append(_yolo(g, x, s, hw))
        outputs.append(x)
    if reader.remaining:
        raise ValueError(f"{reader.remaining} weights left over: cfg and weights do not match")
    nc = 5 + len(class_names)
    g.nodes.append(helper.make_node("Concat", heads, ["output0"], name="output0", axis=1))
    graph = helper.make_graph(
        g.nodes,
        "darknet",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, *hw])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", None, nc])],
        g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="detect-serve darknet",
        producer_version=CONVERTER_VERSION,
    )
    model.ir_version = 8
    meta = {
        "names": repr(dict(enumerate(class_names))),
        "imgsz": repr(list(hw)),
        "stride": "32",
        "layout": "yolov5",
        **(metadata or {}),
    }
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model, full_check=True)
    return model
