"""Thresholds exactly at their boundary: a score equal to ``conf`` is kept (``>=``), and an IoU
equal to the NMS threshold does not suppress (only ``>`` does), in every layout and NMS path.

Values are chosen to be exact in float32/float64 (0.5 and integer box corners), so each check
sits on the boundary itself and the one representable value below it.
"""

from __future__ import annotations

import numpy as np
import pytest

from engines.model.layouts import LAYOUTS
from engines.model.postprocess import batched_nms, nms

CONF = 0.5
BELOW = float(np.nextafter(np.float32(CONF), np.float32(0)))  # the float32 just under 0.5
BOX = [10.0, 10.0, 20.0, 20.0]  # x1, y1, x2, y2
CXCYWH = [15.0, 15.0, 10.0, 10.0]


def yolov8(scores: list[float]) -> dict[str, np.ndarray]:
    """(1, 4 + 2, N): one candidate per score, class 1 carries it."""
    rows = [[*CXCYWH, 0.0, s] for s in scores]
    return {"output0": np.asarray(rows, np.float32).T[np.newaxis]}


def yolov5(rows: list[tuple[float, float]]) -> dict[str, np.ndarray]:
    """(1, N, 5 + 2): (objectness, class-1 probability) per candidate."""
    return {"output0": np.asarray([[[*CXCYWH, o, 0.0, p] for o, p in rows]], np.float32)}


def end2end(scores: list[float]) -> dict[str, np.ndarray]:
    return {"output0": np.asarray([[[*BOX, s, 1.0] for s in scores]], np.float32)}


def efficient_nms(scores: list[float]) -> dict[str, np.ndarray]:
    n = len(scores)
    return {
        "num_dets": np.asarray([[n]], np.int32),
        "det_boxes": np.asarray([[BOX] * n], np.float32),
        "det_scores": np.asarray([scores], np.float32),
        "det_classes": np.ones((1, n), np.int32),
    }


SCORE_LAYOUTS = {"yolov8": yolov8, "end2end": end2end, "efficient_nms": efficient_nms}


@pytest.mark.parametrize("layout", sorted(SCORE_LAYOUTS))
def test_a_score_equal_to_conf_is_kept_one_below_is_not(layout: str) -> None:
    outputs = SCORE_LAYOUTS[layout]([CONF, BELOW])
    candidates = LAYOUTS[layout].decode(outputs, 0, CONF)
    assert candidates.scores.tolist() == [CONF]
    assert candidates.class_ids.tolist() == [1]


def test_yolov5_boundary_holds_for_objectness_and_for_the_product() -> None:
    rows = [(CONF, 1.0), (1.0, CONF), (BELOW, 1.0), (1.0, BELOW)]
    candidates = LAYOUTS["yolov5"].decode(yolov5(rows), 0, CONF)
    # score = objectness x class probability: exactly 0.5 twice, just under it twice.
    assert candidates.scores.tolist() == [CONF, CONF]


# IoU([0,0,10,10], [0,0,10,5]) = 50 / 100 = 0.5 exactly.
SQUARE, HALF = [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0]
JUST_UNDER = float(np.nextafter(0.5, 0.0))


def test_iou_equal_to_the_threshold_does_not_suppress() -> None:
    boxes = np.asarray([SQUARE, HALF], np.float32)
    scores = np.asarray([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, JUST_UNDER).tolist() == [0]
    classes = np.asarray([3, 3])
    assert batched_nms(boxes, scores, classes, 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, classes, JUST_UNDER).tolist() == [0]


def test_iou_boundary_against_boxes_kept_in_an_earlier_block() -> None:
    """The overlapping box ranks 257th: it meets the square as an already-kept box."""
    spread = [[20.0 * i, 100.0, 20.0 * i + 10, 110.0] for i in range(255)]
    boxes = np.asarray([SQUARE, *spread, HALF], np.float32)
    scores = np.linspace(1.0, 0.5, len(boxes)).astype(np.float32)
    everything = list(range(len(boxes)))
    assert nms(boxes, scores, 0.5).tolist() == everything
    assert nms(boxes, scores, JUST_UNDER).tolist() == everything[:-1]


def test_disjoint_and_touching_boxes_overlap_not_at_all() -> None:
    from engines.model.postprocess import pairwise_iou

    unit = np.asarray([[0.0, 0.0, 1.0, 1.0]])
    others = np.asarray(
        [
            [2.0, 2.0, 3.0, 3.0],  # apart on both axes
            [2.0, 0.0, 3.0, 1.0],  # beside: overlapping rows, apart columns
            [0.0, 2.0, 1.0, 3.0],  # below: overlapping columns, apart rows
            [1.0, 0.0, 2.0, 1.0],  # touching
            [0.0, 0.0, 0.5, 1.0],  # half of it
        ]
    )
    np.testing.assert_array_equal(pairwise_iou(unit, others), [[0.0, 0.0, 0.0, 0.0, 0.5]])
    # Boxes with no area: an empty union is no overlap (0), never 0/0.
    point = np.asarray([[5.0, 5.0, 5.0, 5.0]])
    with np.errstate(all="raise"):
        np.testing.assert_array_equal(pairwise_iou(point, point), [[0.0]])
    # Two 1-pixel boxes a pixel apart never suppress each other, however low the threshold.
    for apart in ([2.0, 0.0, 3.0, 1.0], [0.0, 2.0, 1.0, 3.0]):
        boxes = np.asarray([[0.0, 0.0, 1.0, 1.0], apart], np.float32)
        assert nms(boxes, np.asarray([0.9, 0.8], np.float32), 0.0).tolist() == [0, 1]


@pytest.mark.parametrize("axis", ["x", "y"])
def test_a_box_wholly_in_the_padding_is_dropped_one_pixel_inside_is_kept(axis: str) -> None:
    from engines.model.layouts import Candidates
    from engines.model.postprocess import postprocess
    from engines.model.preprocess import LetterboxTransform

    # A 100x50 image letterboxed into 100x100: 25 rows of padding above and below it.
    transform = LetterboxTransform(1.0, 0.0, 25.0, 100, 50)
    boxes = np.asarray([[10, 0, 30, 20], [10, 0, 30, 26]], np.float32)  # padding; 1 px inside
    expected = [[10, 0, 30, 1]]
    if axis == "x":  # the same, turned: a 50x100 image with padding left and right
        transform = LetterboxTransform(1.0, 25.0, 0.0, 50, 100)
        boxes, expected = boxes[:, [1, 0, 3, 2]], [[0, 10, 1, 30]]
    candidates = Candidates(
        boxes=boxes,
        scores=np.asarray([0.9, 0.8], np.float32),
        class_ids=np.asarray([0, 1]),
        nms_done=False,
    )
    result = postprocess(candidates, transform, iou=0.5, max_det=10)
    assert result.class_ids.tolist() == [1]
    np.testing.assert_allclose(result.boxes, expected)


@pytest.mark.parametrize("nms_done", [False, True], ids=["nms", "nms-in-model"])
@pytest.mark.parametrize("flat", ["width", "height"])
def test_a_box_without_area_never_takes_a_max_det_slot(flat: str, nms_done: bool) -> None:
    """A degenerate prediction (x2 == x1 or y2 == y1) with the best score is dropped before
    NMS and the ``max_det`` cut: the one slot goes to the real box behind it."""
    from engines.model.layouts import Candidates
    from engines.model.postprocess import postprocess
    from engines.model.preprocess import LetterboxTransform

    line = [10.0, 10.0, 10.0, 20.0] if flat == "width" else [10.0, 10.0, 20.0, 10.0]
    candidates = Candidates(
        boxes=np.asarray([line, BOX], np.float32),
        scores=np.asarray([0.9, 0.8], np.float32),
        class_ids=np.asarray([0, 0]),
        nms_done=nms_done,
    )
    result = postprocess(
        candidates, LetterboxTransform(1.0, 0.0, 0.0, 100, 100), iou=0.5, max_det=1
    )
    np.testing.assert_array_equal(result.boxes, [BOX])
    assert result.scores.tolist() == [pytest.approx(0.8)]
