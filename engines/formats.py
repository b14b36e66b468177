"""Output layouts of detection models and their decoders, in a registry keyed by layout name.

Each decoder turns one image's slice of the engine outputs into ``Candidates`` (boxes in
letterboxed-input pixels, scores, class ids) above a confidence threshold, vectorized. Layouts:

- ``yolov8``: one output (B, 4+nc, N): cx, cy, w, h, then per-class scores (no objectness).
- ``yolov5``: one output (B, N, 5+nc): cx, cy, w, h, objectness, per-class scores.
- ``end2end``: one output (B, K, 6): x1, y1, x2, y2, score, class; NMS already done.
- ``efficient_nms``: ``num_dets`` (B,1), ``det_boxes`` (B,K,4), ``det_scores`` (B,K),
  ``det_classes`` (B,K) (TensorRT's EfficientNMS plugin outputs); NMS already done.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engines.errors import ModelFormatError
from engines.runtime.base import TensorInfo

# Above this many rows a (B, N, 6) output is a one-class yolov5 head, not an end2end top-K.
_MAX_END2END_K = 1000
_EFFICIENT_NMS = ("num_dets", "det_boxes", "det_scores", "det_classes")


@dataclass(frozen=True)
class Candidates:
    """One image's detections before NMS, in letterboxed-input pixels."""

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64
    nms_done: bool

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class OutputLayout(Protocol):
    name: str

    def matches(self, outputs: Sequence[TensorInfo], num_classes: int | None) -> bool: ...

    def decode(self, outputs: Mapping[str, np.ndarray], index: int, conf: float) -> Candidates: ...


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    half = b[:, 2:4] / 2
    return np.concatenate([b[:, 0:2] - half, b[:, 0:2] + half], axis=1).astype(np.float32)


def _single(outputs: Mapping[str, np.ndarray]) -> np.ndarray:
    if len(outputs) != 1:
        raise ModelFormatError(f"layout expects one output, got {sorted(outputs)}")
    return next(iter(outputs.values()))


def _best_class(scores: np.ndarray, conf: float, boxes: np.ndarray, nms_done: bool) -> Candidates:
    class_ids = scores.argmax(axis=1)
    best = scores[np.arange(scores.shape[0]), class_ids]
    keep = best >= conf
    return Candidates(
        boxes=boxes[keep].astype(np.float32),
        scores=best[keep].astype(np.float32),
        class_ids=class_ids[keep].astype(np.int64),
        nms_done=nms_done,
    )


class YoloV8Layout:
    name = "yolov8"

    def matches(self, outputs: Sequence[TensorInfo], num_classes: int | None) -> bool:
        if len(outputs) != 1 or len(outputs[0].shape) != 3:
            return False
        _, rows, cols = outputs[0].shape
        if num_classes is not None:
            return rows == 4 + num_classes
        return rows is not None and rows > 4 and (cols is None or cols > rows)

    def decode(self, outputs: Mapping[str, np.ndarray], index: int, conf: float) -> Candidates:
        pred = _single(outputs)[index].T  # (N, 4+nc)
        scores = pred[:, 4:]
        # Filter on the max score first so the box conversion only touches survivors.
        rough = scores.max(axis=1) >= conf
        pred, scores = pred[rough], scores[rough]
        return _best_class(scores, conf, _cxcywh_to_xyxy(pred[:, :4]), nms_done=False)


class YoloV5Layout:
    name = "yolov5"

    def matches(self, outputs: Sequence[TensorInfo], num_classes: int | None) -> bool:
        if len(outputs) != 1 or len(outputs[0].shape) != 3:
            return False
        _, rows, cols = outputs[0].shape
        if num_classes is not None:
            return cols == 5 + num_classes
        return cols is not None and cols > 5 and (rows is None or rows > cols)

    def decode(self, outputs: Mapping[str, np.ndarray], index: int, conf: float) -> Candidates:
        pred = _single(outputs)[index]  # (N, 5+nc)
        pred = pred[pred[:, 4] >= conf]  # score = obj * cls <= obj: a cheap first cut
        scores = pred[:, 5:] * pred[:, 4:5]
        return _best_class(scores, conf, _cxcywh_to_xyxy(pred[:, :4]), nms_done=False)


class End2EndLayout:
    name = "end2end"

    def matches(self, outputs: Sequence[TensorInfo], num_classes: int | None) -> bool:
        if len(outputs) != 1 or len(outputs[0].shape) != 3 or outputs[0].shape[2] != 6:
            return False
        k = outputs[0].shape[1]
        return num_classes != 1 or (k is not None and k <= _MAX_END2END_K)

    def decode(self, outputs: Mapping[str, np.ndarray], index: int, conf: float) -> Candidates:
        pred = _single(outputs)[index]
        pred = pred[pred[:, 4] >= conf]
        return Candidates(
            boxes=pred[:, :4].astype(np.float32),
            scores=pred[:, 4].astype(np.float32),
            class_ids=pred[:, 5].round().astype(np.int64),
            nms_done=True,
        )


class EfficientNmsLayout:
    name = "efficient_nms"

    def matches(self, outputs: Sequence[TensorInfo], num_classes: int | None) -> bool:
        return {o.name for o in outputs} == set(_EFFICIENT_NMS)

    def decode(self, outputs: Mapping[str, np.ndarray], index: int, conf: float) -> Candidates:
        count = int(np.asarray(outputs["num_dets"][index]).reshape(-1)[0])
        boxes = outputs["det_boxes"][index][:count]
        scores = outputs["det_scores"][index][:count]
        classes = outputs["det_classes"][index][:count]
        keep = scores >= conf
        return Candidates(
            boxes=boxes[keep].astype(np.float32),
            scores=scores[keep].astype(np.float32),
            class_ids=classes[keep].astype(np.int64),
            nms_done=True,
        )


# Checked in this order: the specific shapes before the general ones.
LAYOUTS: dict[str, OutputLayout] = {
    layout.name: layout
    for layout in (EfficientNmsLayout(), End2EndLayout(), YoloV8Layout(), YoloV5Layout())
}


def _describe(outputs: Sequence[TensorInfo]) -> str:
    return ", ".join(f"{o.name} {tuple('?' if d is None else d for d in o.shape)}" for o in outputs)


def detect_layout(
    outputs: Sequence[TensorInfo], num_classes: int | None, override: str | None = None
) -> OutputLayout:
    """The layout of a model's outputs, or ``ModelFormatError`` saying what was found."""
    if override is not None:
        layout = LAYOUTS.get(override)
        if layout is None:
            raise ModelFormatError(
                f"unknown output layout {override!r}; supported: {', '.join(LAYOUTS)}"
            )
        if not layout.matches(outputs, num_classes):
            raise ModelFormatError(
                f"outputs [{_describe(outputs)}] do not fit the declared layout {override!r}"
            )
        return layout
    for layout in LAYOUTS.values():
        if layout.matches(outputs, num_classes):
            return layout
    raise ModelFormatError(
        f"outputs [{_describe(outputs)}] match no known detection layout "
        f"(supported: {', '.join(LAYOUTS)}; with {num_classes} classes)"
    )
