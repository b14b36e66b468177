"""Tiny generated ONNX models whose outputs encode known boxes in each supported layout.

Each model ignores its image (beyond the batch size) and returns constant detections, tiled over
the batch, so decoders can be checked against exact expectations through ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NUM_CLASSES = 3
# (x1, y1, x2, y2, score, class) in 64x64 input pixels.
KNOWN = np.array(
    [
        [4.0, 6.0, 20.0, 30.0, 0.9, 2],
        [30.0, 8.0, 60.0, 40.0, 0.8, 0],
        [31.0, 9.0, 59.0, 41.0, 0.6, 0],  # overlaps the previous box: NMS must drop it
        [10.0, 40.0, 26.0, 60.0, 0.1, 1],  # below the default confidence threshold
    ],
    dtype=np.float32,
)


def _tiled(
    name: str, value: np.ndarray, out_dtype: int = TensorProto.FLOAT
) -> list[onnx.NodeProto]:
    """Nodes producing ``value`` repeated along a new leading batch dimension."""
    return [
        helper.make_node("Shape", ["images"], [f"{name}_shape"], start=0, end=1),
        helper.make_node(
            "Constant",
            [],
            [f"{name}_value"],
            value=numpy_helper.from_array(value[None], f"{name}_c"),
        ),
        helper.make_node(
            "Constant",
            [],
            [f"{name}_ones"],
            value=numpy_helper.from_array(np.ones(value.ndim, np.int64), f"{name}_o"),
        ),
        helper.make_node("Concat", [f"{name}_shape", f"{name}_ones"], [f"{name}_reps"], axis=0),
        helper.make_node("Tile", [f"{name}_value", f"{name}_reps"], [name]),
    ]


def _cxcywh(rows: np.ndarray) -> np.ndarray:
    out = rows[:, :4].copy()
    out[:, 0], out[:, 1] = (rows[:, 0] + rows[:, 2]) / 2, (rows[:, 1] + rows[:, 3]) / 2
    out[:, 2], out[:, 3] = rows[:, 2] - rows[:, 0], rows[:, 3] - rows[:, 1]
    return out


def _one_hot(rows: np.ndarray, scale: np.ndarray) -> np.ndarray:
    scores = np.zeros((len(rows), NUM_CLASSES), np.float32)
    scores[np.arange(len(rows)), rows[:, 5].astype(int)] = scale
    return scores


def layout_outputs(layout: str) -> dict[str, np.ndarray]:
    """The per-image output tensors (no batch dim) that encode ``KNOWN`` in ``layout``."""
    rows = KNOWN
    if layout == "yolov8":
        return {"output0": np.concatenate([_cxcywh(rows), _one_hot(rows, rows[:, 4])], 1).T}
    if layout == "yolov5":
        # objectness 1.0 * class score = score; add a row with high class but low objectness
        obj = np.ones((len(rows), 1), np.float32)
        data = np.concatenate([_cxcywh(rows), obj, _one_hot(rows, rows[:, 4])], 1)
        decoy = np.array([[32, 32, 10, 10, 0.05] + [0.99] * NUM_CLASSES], np.float32)
        return {"output0": np.concatenate([data, decoy])}
    if layout == "end2end":
        return {"output0": rows[[0, 1, 3]].copy()}  # the model's own NMS already ran
    if layout == "efficient_nms":
        kept = rows[[0, 1, 3]]  # what an in-model NMS would have kept
        pad = 2
        boxes = np.concatenate([kept[:, :4], np.zeros((pad, 4), np.float32)])
        scores = np.concatenate([kept[:, 4], np.zeros(pad, np.float32)])
        classes = np.concatenate([kept[:, 5], np.zeros(pad, np.float32)]).astype(np.int32)
        return {
            "num_dets": np.array([len(kept)], np.int32),
            "det_boxes": boxes,
            "det_scores": scores,
            "det_classes": classes,
        }
    raise ValueError(layout)


def make_layout_model(layout: str, path: Path) -> Path:
    outputs = layout_outputs(layout)
    nodes: list[onnx.NodeProto] = []
    infos = []
    for name, value in outputs.items():
        nodes += _tiled(name, value)
        dtype = TensorProto.INT32 if value.dtype == np.int32 else TensorProto.FLOAT
        infos.append(helper.make_tensor_value_info(name, dtype, ["batch", *value.shape]))
    graph = helper.make_graph(
        nodes,
        f"fake_{layout}",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        infos,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.metadata_props.add(key="names", value=repr({0: "a", 1: "b", 2: "c"}))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
