"""Output layouts of detection models and their decoders, in a registry keyed by layout name.

Each decoder turns one image's slice of the engine outputs into ``Candidates`` (boxes in
letterboxed-input pixels, scores, class ids) above a confidence threshold, vectorized. Layouts:

- ``yolov8``: one output (B, 4+nc, N): cx, cy, w, h, then per-class scores (no objectness).
- ``yolov5``: one output (B, N, 5+nc): cx, cy, w, h, objectness, per-class scores.
- ``end2end``: one output (B, K, 6): x1, y1, x2, y2, score, class; NMS already done.
- ``efficient_nms``: ``num_dets`` (B,1), ``det_boxes`` (B,K,4), ``det_scores`` (B,K),
  ``det_classes`` (B,K) (TensorRT's EfficientNMS plugin outputs); NMS already done. Exporters
  name these differently (``num_detections``/``detection_boxes``, ``bboxes``/``labels``), so
  each output's role is read from a keyword in its name.

Decoders compute in float32 whatever the output dtype: an FP16 variant's (cx, w) -> (x1, x2)
arithmetic in float16 would lose up to half a pixel at 640.
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
# Role of each efficient_nms output -> keywords its name may contain, checked in this order so
# that "num_boxes" is a count, not boxes.
_NMS_ROLES: dict[str, tuple[str, ...]] = {
    "count": ("num",),
    "boxes": ("box",),
    "scores": ("score", "conf"),
    "classes": ("class", "label"),
}
_NMS_RANKS = {"count": (1, 2), "boxes": (3,), "scores": (2,), "classes": (2,)}


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


def _one_3d_output(outputs: Sequence[TensorInfo]) -> tuple[int | None, int | None] | None:
    """(rows, cols) of a model's only output when it is (B, rows, cols); None otherwise."""
    if len(outputs) != 1 or len(outputs[0].shape) != 3:
        return None
    _, rows, cols = outputs[0].shape
    return rows, cols


class YoloV8Layout:
    name = "yolov8"

    def matches(self, outputs: Sequence[TensorInfo], num_classes: int | None) -> bool:
        if (dims := _one_3d_output(outputs)) is None:
            return False
        rows, cols = dims
        if num_classes is not None:
            return rows == 4 + num_classes
        return rows is not None and rows > 4 and (cols is None or cols > rows)

    def decode(self, outputs: Mapping[str, np.ndarray], index: int, conf: float) -> Candidates:
        pred = _single(outputs)[index].T  # (N, 4+nc), a view
        # Filter on the max score first so the conversion and copies only touch survivors.
        pred = pred[pred[:, 4:].max(axis=1) >= conf].astype(np.float32)
        return _best_class(pred[:, 4:], conf, _cxcywh_to_xyxy(pred[:, :4]), nms_done=False)


class YoloV5Layout:
    name = "yolov5"

    def matches(self, outputs: Sequence[TensorInfo], num_classes: int | None) -> bool:
        if (dims := _one_3d_output(outputs)) is None:
            return False
        rows, cols = dims
        if num_classes is not None:
            return cols == 5 + num_classes
        return cols is not None and cols > 5 and (rows is None or rows > cols)

    def decode(self, outputs: Mapping[str, np.ndarray], index: int, conf: float) -> Candidates:
        pred = _single(outputs)[index]  # (N, 5+nc)
        # score = obj * cls <= obj (both in 0..1): a cheap first cut before any copy.
        pred = pred[pred[:, 4] >= conf].astype(np.float32)
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
        pred = _single(outputs)[index].astype(np.float32)
        # A non-finite class column cannot be cast to an id; such rows are garbage anyway.
        pred = pred[(pred[:, 4] >= conf) & np.isfinite(pred[:, 5])]
        return Candidates(
            boxes=pred[:, :4].astype(np.float32),
            scores=pred[:, 4].astype(np.float32),
            class_ids=pred[:, 5].round().astype(np.int64),
            nms_done=True,
        )


def _nms_roles(names: Sequence[str]) -> dict[str, str] | None:
    """Role -> output name for the four efficient_nms outputs, or None if they are not that."""
    if len(names) != len(_NMS_ROLES):
        return None
    roles: dict[str, str] = {}
    for name in names:
        lowered = name.lower()
        role = next((r for r, keys in _NMS_ROLES.items() if any(k in lowered for k in keys)), None)
        if role is None or role in roles:
            return None
        roles[role] = name
    return roles


class EfficientNmsLayout:
    name = "efficient_nms"

    def matches(self, outputs: Sequence[TensorInfo], num_classes: int | None) -> bool:
        roles = _nms_roles([o.name for o in outputs])
        if roles is None:
            return False
        by_name = {o.name: o for o in outputs}
        return all(len(by_name[roles[r]].shape) in ranks for r, ranks in _NMS_RANKS.items())

    def decode(self, outputs: Mapping[str, np.ndarray], index: int, conf: float) -> Candidates:
        roles = _nms_roles(list(outputs))
        if roles is None:
            raise ModelFormatError(f"efficient_nms expects four outputs, got {sorted(outputs)}")
        boxes = outputs[roles["boxes"]][index].astype(np.float32)
        scores = outputs[roles["scores"]][index].astype(np.float32)
        classes = outputs[roles["classes"]][index]
        # The count comes from the engine: clamp it so a bad value cannot wrap the slice.
        count = int(np.asarray(outputs[roles["count"]][index]).reshape(-1)[0])
        count = min(max(count, 0), scores.shape[0])
        keep = np.flatnonzero((scores[:count] >= conf) & np.isfinite(classes[:count]))
        return Candidates(
            boxes=boxes[keep],
            scores=scores[keep],
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
