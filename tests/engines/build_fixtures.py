"""Small real graphs and images for the builder's unit tests (no model download, seconds to run).

``tiny_detector`` is a yolov5-layout detector in miniature with the same head shape as the default
model: convolutions, then an in-graph decode that concatenates pixel-scale boxes with sigmoid
scores into one output (DESIGN.md's INT8 pitfall). Its weights are random but fixed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from engines.artifacts.record import Accuracy

SIZE = 32
NUM_CLASSES = 2
HEAD_OPS = ("Reshape", "Transpose", "Split", "Mul", "Sigmoid", "Concat")


def _weight(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)


def tiny_detector(heads: int = 1) -> onnx.ModelProto:
    """images (B,3,32,32) -> output0 (B, heads*1024, 5+2): boxes in pixels, then sigmoid scores."""
    rng = np.random.default_rng(0)
    cols = 5 + NUM_CLASSES
    inits = [
        _weight("w1", (8, 3, 3, 3), rng),
        numpy_helper.from_array(np.array([0, cols, -1], np.int64), "rows"),
        numpy_helper.from_array(np.array([4, cols - 4], np.int64), "split"),
        numpy_helper.from_array(np.array(float(SIZE), np.float32), "stride"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["a1"], "leaky1", alpha=0.1),
    ]
    dets = []
    for h in range(heads):
        inits.append(_weight(f"wh{h}", (cols, 8, 1, 1), rng))
        nodes += [
            helper.make_node("Conv", ["a1", f"wh{h}"], [f"raw{h}"], f"head_conv{h}"),
            helper.make_node("Reshape", [f"raw{h}", "rows"], [f"r{h}"], f"reshape{h}"),
            helper.make_node("Transpose", [f"r{h}"], [f"t{h}"], f"transpose{h}", perm=[0, 2, 1]),
            helper.make_node(
                "Split", [f"t{h}", "split"], [f"box{h}", f"cls{h}"], f"spl{h}", axis=2
            ),
            helper.make_node("Sigmoid", [f"box{h}"], [f"sb{h}"], f"sig_box{h}"),
            helper.make_node("Mul", [f"sb{h}", "stride"], [f"px{h}"], f"pixels{h}"),
            helper.make_node("Sigmoid", [f"cls{h}"], [f"sc{h}"], f"sig_cls{h}"),
            helper.make_node("Concat", [f"px{h}", f"sc{h}"], [f"det{h}"], f"cat{h}", axis=2),
        ]
        dets.append(f"det{h}")
    nodes.append(helper.make_node("Concat", dets, ["output0"], "cat_heads", axis=1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", None, cols])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="names", value="{0: 'a', 1: 'b'}")
    model.metadata_props.add(key="imgsz", value=f"[{SIZE}, {SIZE}]")
    onnx.checker.check_model(model)
    return model


def accuracy(score: float, budget: float = 0.95) -> Accuracy:
    """A measured accuracy as the builder records it (agreement ``score`` with FP32)."""
    return Accuracy(
        map50_95_agreement=score,
        map50_agreement=score,
        budget=budget,
        reference_boxes=10,
        validation_images=4,
        validation_hash="v",
    )


def write_photos(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` distinct PNG images of random blocks (real decodable image files)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        Image.fromarray(pixels).save(folder / f"img{k:03d}.png")
    return folder
