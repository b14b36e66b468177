"""NMS against a brute-force reference; box mapping and limits."""

from __future__ import annotations

import numpy as np
import pytest

from engines.model.layouts import Candidates
from engines.model.postprocess import batched_nms, nms, postprocess
from engines.model.preprocess import LetterboxTransform

# Ultralytics' `max_nms` (ops.non_max_suppression): the same candidates go into NMS as there, so
# an adversarially low `conf` gives the same detections as Ultralytics' predictor.
MAX_NMS_CANDIDATES = 30_000


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, threshold: float
) -> list[int]:
    """Textbook greedy NMS, one pair at a time, in plain Python floats."""
    box, score = boxes.astype(np.float64).tolist(), scores.tolist()
    label = [0] * len(score) if classes is None else classes.tolist()
    order = sorted(range(len(score)), key=lambda i: (-score[i], i))
    kept: list[int] = []
    for i in order:
        if all(label[i] != label[k] or iou(box[i], box[k]) <= threshold for k in kept):
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


@pytest.mark.parametrize("count", [0, 1])
def test_an_image_with_no_or_one_candidate(count: int) -> None:
    """No candidate: no detection (and no error); a lone candidate is kept as it is."""
    transform = LetterboxTransform(1.0, 0.0, 0.0, 100, 100)
    candidates = Candidates(
        boxes=np.array([[10, 10, 30, 30]] * count, np.float32).reshape(count, 4),
        scores=np.array([0.9] * count, np.float32),
        class_ids=np.array([3] * count, np.int64),
        nms_done=False,
    )
    result = postprocess(candidates, transform, iou=0.5, max_det=10)
    assert len(result) == count
    if count:
        np.testing.assert_allclose(result.boxes[0], [10, 10, 30, 30])


@pytest.mark.parametrize("seed", range(6))
def test_nms_across_blocks_matches_brute_force(seed: int) -> None:
    """More boxes than one block, so suppression by earlier blocks' boxes is exercised."""
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(300, 700))
    boxes, scores = random_boxes(rng, n), rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, 3, n)
    assert nms(boxes, scores, 0.5).tolist() == reference_nms(boxes, scores, None, 0.5)
    got = batched_nms(boxes, scores, classes, 0.5).tolist()
    assert got == reference_nms(boxes, scores, classes, 0.5)


@pytest.mark.parametrize("max_keep", [0, 1, 7, 300, 10_000])
def test_max_keep_is_a_prefix_of_full_nms(max_keep: int) -> None:
    rng = np.random.default_rng(max_keep)
    boxes, scores = random_boxes(rng, 600), rng.uniform(0, 1, 600).astype(np.float32)
    classes = rng.integers(0, 5, 600)
    full = batched_nms(boxes, scores, classes, 0.45).tolist()
    assert (
        batched_nms(boxes, scores, classes, 0.45, max_keep=max_keep).tolist() == (full[:max_keep])
    )


def test_huge_or_negative_class_ids_stay_apart() -> None:
    boxes = np.array([[0, 0, 10, 10]] * 3, np.float32)
    kept = batched_nms(
        boxes, np.array([0.9, 0.8, 0.7], np.float32), np.array([-5, 10**12, -5]), 0.5
    )
    assert kept.tolist() == [0, 1]


def test_non_finite_and_degenerate_candidates_are_dropped_not_suppressing() -> None:
    boxes = np.array(
        [[np.inf, 0, 5, 5], [0, 0, 10, 10], [np.nan, 0, 10, 10], [5, 5, 5, 9], [20, 20, 30, 30]],
        np.float32,
    )
    candidates = Candidates(
        boxes=boxes,
        scores=np.array([0.99, 0.9, 0.95, 0.97, np.nan], np.float32),
        class_ids=np.zeros(5, np.int64),
        nms_done=False,
    )
    result = postprocess(candidates, LetterboxTransform(1.0, 0, 0, 100, 100), iou=0.5, max_det=10)
    np.testing.assert_array_equal(result.boxes, [[0, 0, 10, 10]])


def test_adversarial_candidate_count_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """conf=0 on a big head: every anchor is a candidate, mostly non-overlapping. The work is
    bounded by counting it (boxes into NMS, IoU entries computed), not by a clock."""
    from engines.model import postprocess as module

    into_nms: list[int] = []
    iou_entries: list[int] = []
    real_batched, real_iou = module.batched_nms, module.pairwise_iou

    def counting_batched(boxes: np.ndarray, *args: object, **kwargs: object) -> np.ndarray:
        into_nms.append(int(boxes.shape[0]))
        return real_batched(boxes, *args, **kwargs)  # type: ignore[arg-type]

    def counting_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        iou_entries.append(int(a.shape[0]) * int(b.shape[0]))
        return real_iou(a, b)

    monkeypatch.setattr(module, "batched_nms", counting_batched)
    monkeypatch.setattr(module, "pairwise_iou", counting_iou)
    rng = np.random.default_rng(7)
    n = MAX_NMS_CANDIDATES + 5000
    xy = rng.uniform(0, 1280, (n, 2)).astype(np.float32)
    candidates = Candidates(
        boxes=np.concatenate([xy, xy + 3], 1),
        scores=rng.uniform(0, 1, n).astype(np.float32),
        class_ids=rng.integers(0, 80, n),
        nms_done=False,
    )
    max_det = 1000
    result = postprocess(
        candidates, LetterboxTransform(1.0, 0, 0, 1283, 1283), iou=0.45, max_det=max_det
    )
    assert into_nms == [MAX_NMS_CANDIDATES]  # only the best candidates go in
    # O(candidates x kept): each block is compared with at most max_det kept boxes and itself.
    assert sum(iou_entries) <= MAX_NMS_CANDIDATES * (max_det + 2 * 256)
    assert len(result) == max_det
    assert np.all(np.diff(result.scores) <= 0)
    # The best-scored candidates are the ones kept (a top-k, not an arbitrary subset).
    assert result.scores.min() >= np.sort(candidates.scores)[-MAX_NMS_CANDIDATES]


def test_model_nms_output_is_sorted_and_capped() -> None:
    candidates = Candidates(
        boxes=np.array([[0, 0, 5, 5], [1, 1, 6, 6], [2, 2, 7, 7]], np.float32),
        scores=np.array([0.3, 0.9, 0.6], np.float32),
        class_ids=np.array([0, 0, 0], np.int64),
        nms_done=True,  # overlapping boxes stay: the model already decided
    )
    result = postprocess(candidates, LetterboxTransform(1.0, 0, 0, 10, 10), iou=0.1, max_det=2)
    assert result.scores.tolist() == pytest.approx([0.9, 0.6])


def test_nothing_to_suppress_is_an_empty_index_array() -> None:
    """No candidates (a blank photo): an empty int64 index array, which callers slice with."""
    none = np.zeros((0, 4), np.float32)
    for kept in (
        nms(none, np.zeros(0, np.float32), 0.5),
        batched_nms(none, np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5),
    ):
        assert isinstance(kept, np.ndarray) and kept.shape == (0,) and kept.dtype == np.int64


def test_classes_stay_apart_in_normalised_coordinates() -> None:
    """Class-aware NMS separates classes by an offset larger than any coordinate: it must hold
    for boxes in 0..1 as well as in pixels (two identical boxes of two classes both stay)."""
    boxes = np.array([[0.5, 0.5, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0], [0.52, 0.5, 1.0, 1.0]])
    kept = batched_nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), np.array([0, 1, 0]), 0.5)
    assert kept.tolist() == [0, 1]


def test_exactly_the_candidate_cap_goes_into_nms_whole() -> None:
    """At the cap itself nothing is cut (the top-k selection starts only above it)."""
    n = MAX_NMS_CANDIDATES
    scores = np.linspace(0.01, 0.99, n).astype(np.float32)
    candidates = Candidates(
        boxes=np.tile(np.array([[10, 10, 50, 50]], np.float32), (n, 1)),
        scores=scores,
        class_ids=np.zeros(n, np.int64),
        nms_done=False,
    )
    result = postprocess(candidates, LetterboxTransform(1.0, 0, 0, 64, 64), iou=0.5, max_det=300)
    assert result.scores.tolist() == [pytest.approx(0.99)]  # one box, the best of all of them


def test_nms_stops_as_soon_as_max_keep_boxes_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """600 disjoint boxes, max_keep 256: the first block of 256 keeps them all and nothing
    more is compared (the later blocks' IoU work is never done)."""
    from engines.model import postprocess as module

    calls: list[tuple[int, int]] = []
    real_iou = module.pairwise_iou

    def counting_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        calls.append((len(a), len(b)))
        return real_iou(a, b)

    monkeypatch.setattr(module, "pairwise_iou", counting_iou)
    i = np.arange(600, dtype=np.float32)
    x, y = (i % 30) * 10, (i // 30) * 10
    boxes = np.stack([x, y, x + 5, y + 5], axis=1)
    scores = np.linspace(1.0, 0.1, 600).astype(np.float32)
    assert nms(boxes, scores, 0.5, max_keep=256).tolist() == list(range(256))
    assert calls == [(0, 256), (256, 256)]  # one block: against no kept box, then itself
