"""Decoders of every layout on generated ONNX models with known boxes, run by ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engines.errors import ModelFormatError
from engines.model.info import read_model_info
from engines.model.layouts import LAYOUTS, detect_layout
from engines.model.postprocess import postprocess
from engines.model.preprocess import LetterboxTransform
from engines.runtime.base import TensorInfo
from tests.engines.layout_models import KNOWN, NUM_CLASSES, layout_outputs, make_layout_model

IDENTITY = LetterboxTransform(1.0, 0.0, 0.0, 64, 64)
ALL = ["yolov8", "yolov5", "end2end", "efficient_nms"]


def run(path: Path, batch: int) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = np.zeros((batch, 3, 64, 64), np.float32)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"images": images}), strict=True))


@pytest.mark.parametrize("layout", ALL)
@pytest.mark.parametrize("batch", [1, 3])
def test_known_boxes_come_back(tmp_path: Path, layout: str, batch: int) -> None:
    path = make_layout_model(layout, tmp_path / f"{layout}.onnx")
    info = read_model_info(path, layout)
    detected = detect_layout(info.outputs, NUM_CLASSES)
    assert detected.name == layout
    outputs = run(path, batch)
    expected = KNOWN[[0, 1]]  # the overlapping 0.6 box is suppressed, the 0.1 box filtered
    for index in range(batch):
        candidates = detected.decode(outputs, index, conf=0.25)
        result = postprocess(candidates, IDENTITY, iou=0.45, max_det=100)
        np.testing.assert_allclose(result.boxes, expected[:, :4], atol=1e-4)
        np.testing.assert_allclose(result.scores, expected[:, 4], atol=1e-6)
        assert result.class_ids.tolist() == expected[:, 5].astype(int).tolist()


@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "end2end"])
def test_low_threshold_keeps_low_scores_and_class_filter_applies(
    tmp_path: Path, layout: str
) -> None:
    path = make_layout_model(layout, tmp_path / f"{layout}.onnx")
    decoded = LAYOUTS[layout].decode(run(path, 1), 0, conf=0.05)
    result = postprocess(decoded, IDENTITY, iou=0.45, max_det=100, classes=[1])
    assert result.class_ids.tolist() == [1]
    assert result.scores[0] == pytest.approx(0.1)


def test_yolov5_objectness_gates_class_scores(tmp_path: Path) -> None:
    path = make_layout_model("yolov5", tmp_path / "v5.onnx")
    decoded = LAYOUTS["yolov5"].decode(run(path, 1), 0, conf=0.25)
    # The decoy row has class scores 0.99 but objectness 0.05: score 0.0495 < 0.25.
    assert len(decoded) == 3


def info(name: str, *shape: int | None) -> TensorInfo:
    return TensorInfo(name, tuple(shape), "float32")


@pytest.mark.parametrize(
    ("outputs", "classes", "expected"),
    [
        ([info("o", 1, 84, 8400)], 80, "yolov8"),
        ([info("o", None, 84, None)], None, "yolov8"),
        ([info("o", 1, 25200, 85)], 80, "yolov5"),
        ([info("o", None, None, 85)], 80, "yolov5"),
        ([info("o", 1, 300, 6)], 80, "end2end"),
        ([info("o", 1, 8400, 6)], 1, "yolov5"),  # one-class yolov5 head, not a top-K
        (
            [
                info("num_dets", None, 1),
                info("det_boxes", None, 100, 4),
                info("det_scores", None, 100),
                info("det_classes", None, 100),
            ],
            80,
            "efficient_nms",
        ),
        (  # the same plugin outputs under another exporter's names
            [
                info("num_detections", 1, 1),
                info("bboxes", 1, 100, 4),
                info("scores", 1, 100),
                info("labels", 1, 100),
            ],
            None,
            "efficient_nms",
        ),
    ],
)
def test_detect_layout_from_shapes(
    outputs: list[TensorInfo], classes: int | None, expected: str
) -> None:
    assert detect_layout(outputs, classes).name == expected


def test_unknown_layout_is_a_clear_error() -> None:
    with pytest.raises(ModelFormatError, match=r"logits \(1, 1000\).*supported: .*yolov8"):
        detect_layout([info("logits", 1, 1000)], 1000)
    with pytest.raises(ModelFormatError, match="match no known detection layout"):
        detect_layout([info(n, 1, 100) for n in ("num", "boxes", "scores", "classes")], None)
    with pytest.raises(ModelFormatError, match="do not fit the declared layout"):
        detect_layout([info("o", 1, 84, 8400)], 80, override="yolov5")
    with pytest.raises(ModelFormatError, match="unknown output layout"):
        detect_layout([info("o", 1, 84, 8400)], 80, override="ssd")


def batched(layout: str, dtype: type = np.float32) -> dict[str, np.ndarray]:
    """``layout_outputs`` with a batch dimension of 1, float outputs cast to ``dtype``."""
    return {
        name: (value.astype(dtype) if value.dtype == np.float32 else value)[None]
        for name, value in layout_outputs(layout).items()
    }


@pytest.mark.parametrize("layout", ["yolov8", "yolov5", "end2end"])
def test_float16_outputs_decode_to_float32(layout: str) -> None:
    decoded = LAYOUTS[layout].decode(batched(layout, np.float16), 0, conf=0.25)
    assert decoded.boxes.dtype == np.float32 and decoded.scores.dtype == np.float32
    assert decoded.class_ids.dtype == np.int64
    np.testing.assert_allclose(decoded.boxes[:2], KNOWN[:2, :4], atol=0.05)


def test_efficient_nms_count_is_clamped_and_names_may_differ() -> None:
    outputs = batched("efficient_nms")
    renamed = dict(
        zip(["num_detections", "bboxes", "scores", "labels"], outputs.values(), strict=True)
    )
    for count, expected in [(99, 2), (-3, 0), (1, 1)]:
        renamed["num_detections"] = np.array([[count]], np.int32)
        assert len(LAYOUTS["efficient_nms"].decode(renamed, 0, conf=0.25)) == expected


def test_end2end_rows_with_nan_class_are_dropped() -> None:
    outputs = batched("end2end")
    outputs["output0"][0, 0, 5] = np.nan
    decoded = LAYOUTS["end2end"].decode(outputs, 0, conf=0.25)
    assert decoded.class_ids.tolist() == [0]
