"""Candidates -> final detections: class filter, NMS, boxes back in original pixels."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from engines.formats import Candidates
from engines.preprocess import LetterboxTransform

# Bound the O(n * kept) NMS on adversarially low `conf`: only the best candidates go in.
MAX_NMS_CANDIDATES = 10_000


@dataclass(frozen=True)
class Detections:
    """Final detections of one image, in original-image pixels, best first."""

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box against (N, 4) boxes, xyxy."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; kept indices in descending score order.

    Each step compares the best remaining box against all remaining ones at once, so the cost
    is O(n * kept) vectorized operations rather than an O(n^2) Python loop.
    """
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        if not rest.size:
            break
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Shifts each class into its own coordinate region (offset larger than any coordinate), so
    one NMS pass does the work of one pass per class.
    """
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(np.abs(boxes).max()) + 1.0
    shifted = boxes + (class_ids.astype(np.float64) * 2 * span)[:, None]
    return nms(shifted, scores, iou_threshold)


def postprocess(
    candidates: Candidates,
    transform: LetterboxTransform,
    *,
    iou: float,
    max_det: int,
    classes: Collection[int] | None = None,
) -> Detections:
    """Class filter -> NMS (unless the model did it) -> top ``max_det`` -> original pixels."""
    boxes, scores, class_ids = candidates.boxes, candidates.scores, candidates.class_ids
    if classes is not None:
        wanted = np.isin(class_ids, np.fromiter(classes, dtype=np.int64))
        boxes, scores, class_ids = boxes[wanted], scores[wanted], class_ids[wanted]
    if scores.shape[0] > MAX_NMS_CANDIDATES:
        top = np.argpartition(-scores, MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]
        boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
    if candidates.nms_done:
        order = np.argsort(-scores, kind="stable")
    else:
        order = batched_nms(boxes, scores, class_ids, iou)
    order = order[:max_det]
    mapped = transform.to_original(boxes[order])
    visible = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    return Detections(
        boxes=mapped[visible],
        scores=scores[order][visible].astype(np.float32),
        class_ids=class_ids[order][visible].astype(np.int64),
    )
