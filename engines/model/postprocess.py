"""Candidates -> final detections: class filter, NMS, boxes back in original pixels."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from engines.model.layouts import Candidates
from engines.model.preprocess import LetterboxTransform

# Bound the NMS work on adversarially low `conf`: only the best candidates go in (the same cap
# as Ultralytics' `max_nms`; a 640 YOLOv8 head has 8400 anchors, a 1280 one 33600).
MAX_NMS_CANDIDATES = 30_000
# Rows of the IoU matrix computed at once: large enough that numpy, not Python, does the work,
# small enough that a block against all kept boxes stays a few MB.
_BLOCK = 256  # no-mutate: a speed knob; every size keeps the same boxes (tests cross blocks)


@dataclass(frozen=True)
class Detections:
    """Final detections of one image, in original-image pixels, best first."""

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32
    class_ids: np.ndarray  # (N,) int64

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, N) IoU of (M, 4) boxes against (N, 4) boxes, xyxy; 0 where the union is empty."""
    # Per-coordinate 2-D broadcasts: about 3x faster than one (M, N, 2) corner array.
    iw = np.minimum(a[:, 2, None], b[None, :, 2]) - np.maximum(a[:, 0, None], b[None, :, 0])
    ih = np.minimum(a[:, 3, None], b[None, :, 3]) - np.maximum(a[:, 1, None], b[None, :, 1])
    inter = np.clip(iw, 0, None, out=iw) * np.clip(ih, 0, None, out=ih)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    out: np.ndarray = np.zeros(inter.shape, dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _greedy_block(over: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """Greedy NMS inside one score-sorted block, given which pairs overlap (upper triangle)."""
    for i in np.flatnonzero(alive):
        if alive[i]:  # a box suppressed earlier in this loop suppresses nothing
            alive &= ~over[i]
    return alive


def nms(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS; kept indices in descending score order (ties: lower index first).

    A box is suppressed when its IoU with a higher-scored kept box is ``> iou_threshold``.
    Boxes are processed in score-sorted blocks: each block is first checked against every box
    kept so far (one vectorized (kept, block) IoU matrix), then resolved greedily inside itself
    with a precomputed (block, block) overlap matrix. Cost: O(n * kept) IoU entries, all in
    numpy, and n cheap Python steps; ``max_keep`` stops as soon as that many are kept, which
    bounds the work by O(n * max_keep) however low the caller's confidence threshold was.
    """
    n = int(scores.shape[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    limit = n if max_keep is None else max(0, max_keep)  # max_keep 0: one block, then cut to 0
    order = np.argsort(-scores, kind="stable")
    ranked = np.asarray(boxes, dtype=np.float64)[order]
    kept_pos: list[np.ndarray] = []
    kept_boxes = ranked[:0]  # none yet
    for start in range(0, n, _BLOCK):
        block = ranked[start : start + _BLOCK]
        alive = np.flatnonzero((pairwise_iou(kept_boxes, block) <= iou_threshold).all(axis=0))
        # Only boxes that survived the kept ones can suppress each other: a small matrix when
        # the block is mostly duplicates of earlier detections.
        over = np.triu(pairwise_iou(block[alive], block[alive]) > iou_threshold, k=1)
        survivors = alive[_greedy_block(over, np.ones(alive.size, dtype=bool))]
        kept_pos.append(start + survivors)
        kept_boxes = np.concatenate([kept_boxes, block[survivors]])
        if len(kept_boxes) >= limit:
            break
    kept: np.ndarray = order[np.concatenate(kept_pos)[:limit]].astype(np.int64)
    return kept


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    *,
    max_keep: int | None = None,
) -> np.ndarray:
    """Class-aware NMS: boxes of different classes never suppress each other.

    Shifts each class into its own coordinate region (offset larger than any coordinate), so
    one NMS pass does the work of one pass per class. Class ids are first replaced by their
    rank so the offsets stay small (float64 keeps sub-pixel precision) whatever the ids are.
    """
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    _, rank = np.unique(class_ids, return_inverse=True)
    span = float(np.abs(boxes).max()) + 1.0
    offsets = rank.reshape(-1) * 2.0 * span
    shifted = boxes.astype(np.float64) + offsets[:, None]  # no-mutate: '-' separates them too
    return nms(shifted, scores, iou_threshold, max_keep=max_keep)


def _usable(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mask of finite, positive-area boxes with finite scores.

    A broken variant (an FP16 overflow, a bad INT8 scale) can emit inf/NaN; one inf coordinate
    would make the class offsets NaN and silently suppress everything.
    """
    usable: np.ndarray = np.isfinite(boxes).all(axis=1) & np.isfinite(scores)
    with np.errstate(invalid="ignore"):
        usable &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return usable


def postprocess(
    candidates: Candidates,
    transform: LetterboxTransform,
    *,
    iou: float,
    max_det: int,
    classes: Collection[int] | None = None,
) -> Detections:
    """Class filter -> NMS (unless the model did it) -> top ``max_det`` -> original pixels.

    Boxes are clipped to the image; those left with zero area (wholly in the padding) are
    dropped, so fewer than ``max_det`` may come back.
    """
    boxes, scores, class_ids = candidates.boxes, candidates.scores, candidates.class_ids
    wanted = _usable(boxes, scores)
    if classes is not None:
        wanted &= np.isin(class_ids, np.fromiter(classes, dtype=np.int64, count=len(classes)))
    boxes, scores, class_ids = boxes[wanted], scores[wanted], class_ids[wanted]
    if scores.shape[0] > MAX_NMS_CANDIDATES:
        top = np.argpartition(-scores, MAX_NMS_CANDIDATES)[:MAX_NMS_CANDIDATES]
        boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
    if candidates.nms_done:
        order = np.argsort(-scores, kind="stable")[:max_det]
    else:
        order = batched_nms(boxes, scores, class_ids, iou, max_keep=max_det)
    mapped = transform.to_original(boxes[order])
    visible = (mapped[:, 2] > mapped[:, 0]) & (mapped[:, 3] > mapped[:, 1])
    return Detections(
        boxes=mapped[visible],
        scores=scores[order][visible].astype(np.float32),
        class_ids=class_ids[order][visible].astype(np.int64),
    )
