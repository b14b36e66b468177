"""NMS against a brute-force reference; box mapping and limits."""

from __future__ import annotations

import numpy as np
import pytest

from engines.formats import Candidates
from engines.postprocess import batched_nms, nms, postprocess
from engines.preprocess import LetterboxTransform


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, threshold: float
) -> list[int]:
    """Textbook greedy NMS, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(
            (classes is not None and classes[i] != classes[k])
            or iou(boxes[i], boxes[k]) <= threshold
            for k in kept
        ):
            kept.append(i)
    return kept


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 80, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_matches_brute_force(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 150))
    boxes, scores = random_boxes(rng, n), rng.uniform(0, 1, n).astype(np.float32)
    assert nms(boxes, scores, threshold).tolist() == reference_nms(boxes, scores, None, threshold)


@pytest.mark.parametrize("seed", range(25))
def test_class_aware_nms_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 150))
    boxes, scores = random_boxes(rng, n), rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, 4, n)
    got = batched_nms(boxes, scores, classes, 0.45).tolist()
    assert got == reference_nms(boxes, scores, classes, 0.45)


def test_identical_boxes_of_different_classes_both_survive() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    kept = batched_nms(boxes, np.array([0.9, 0.8], np.float32), np.array([0, 1]), 0.5)
    assert kept.tolist() == [0, 1]


def test_postprocess_maps_to_original_pixels_clips_and_caps() -> None:
    transform = LetterboxTransform(0.5, 0.0, 8.0, 200, 100)  # 200x100 image in 100x66 input
    candidates = Candidates(
        boxes=np.array([[10, 18, 30, 28], [-5, 0, 120, 70], [50, 50, 50, 60]], np.float32),
        scores=np.array([0.9, 0.8, 0.7], np.float32),
        class_ids=np.array([0, 1, 2], np.int64),
        nms_done=False,
    )
    result = postprocess(candidates, transform, iou=0.5, max_det=10)
    np.testing.assert_allclose(result.boxes[0], [20, 20, 60, 40])
    np.testing.assert_allclose(result.boxes[1], [0, 0, 200, 100])  # clipped to the image
    assert len(result) == 2  # the zero-width box is dropped
    capped = postprocess(candidates, transform, iou=0.5, max_det=1)
    assert capped.scores.tolist() == [pytest.approx(0.9)]
