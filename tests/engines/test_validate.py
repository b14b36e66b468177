"""Agreement with FP32 as COCO mAP, and the continuous detection error the probes rank by."""

from __future__ import annotations

import numpy as np

from engines.build.accuracy import agreement, detection_error
from engines.model.postprocess import Detections


def dets(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(classes, np.int64),
    )


REFERENCE = [
    dets([[10, 10, 60, 80], [100, 40, 180, 120]], [0.9, 0.6], [0, 1]),
    dets([[5, 5, 50, 50]], [0.8], [1]),
]


def test_identical_detections_agree_fully() -> None:
    score = agreement(REFERENCE, REFERENCE, num_classes=2)
    assert score.map50_95 == 1.0 and score.map50 == 1.0 and score.reference_boxes == 3
    assert detection_error(REFERENCE, REFERENCE) == 0.0


def test_shifted_boxes_lose_map50_95_before_map50() -> None:
    shifted = [Detections(d.boxes + np.float32(4), d.scores, d.class_ids) for d in REFERENCE]
    score = agreement(REFERENCE, shifted, num_classes=2)
    assert score.map50 == 1.0 and 0.3 < score.map50_95 < 0.95
    assert 0.0 < detection_error(REFERENCE, shifted) < 0.5


def test_lost_or_misclassified_detections_score_zero() -> None:
    empty = [dets([], [], []), dets([], [], [])]
    assert agreement(REFERENCE, empty, num_classes=2).map50_95 == 0.0
    wrong_class = [Detections(d.boxes, d.scores, 1 - d.class_ids) for d in REFERENCE]
    assert agreement(REFERENCE, wrong_class, num_classes=2).map50_95 == 0.0
    assert detection_error(REFERENCE, empty) > 1.0


def test_low_confidence_reference_boxes_are_not_ground_truth() -> None:
    faint = [dets([[10, 10, 60, 80]], [0.1], [0])]
    score = agreement(faint, [dets([], [], [])], num_classes=2)
    assert score.reference_boxes == 0 and score.map50_95 == 1.0
